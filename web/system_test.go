package web_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/memcache/memcache/auth"
	"github.com/memcache/memcache/cluster"
	"github.com/memcache/memcache/fsm"
	"github.com/memcache/memcache/gossip"
	"github.com/memcache/memcache/internal/waitfor"
	"github.com/memcache/memcache/metrics"
	"github.com/memcache/memcache/node"
	"github.com/memcache/memcache/region"
	"github.com/memcache/memcache/scaler"
	"github.com/memcache/memcache/web"
)

// In-process manager replicas wired as cmd_manager.go wires them (cluster,
// scaler.Pool over a static provisioner, the embedded metrics, the web API
// and UI), with real cache nodes that join the replicas' gossip.

const (
	testSecret = "web-test-secret"
	testToken  = "web-test-admin-token"
)

func testLogger() *slog.Logger {
	if os.Getenv("MEMCACHE_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// replica is one running manager replica.
type replica struct {
	name    string
	cluster *cluster.Cluster
	pool    *scaler.Pool
	metrics *metrics.Embedded
	srv     *httptest.Server
	url     string
}

// system is a manager cluster and its cache nodes.
type system struct {
	t        *testing.T
	replicas []*replica
	nodes    []*node.Service
}

type systemConfig struct {
	replicas int // manager replicas; the first n bootstrap the Raft group
	nodes    int // cache nodes; the pool starts with one of them
	token    string
}

// startSystem starts the replicas and nodes and waits for a leader, a pool
// of one node, and every node following the pool state.
func startSystem(t *testing.T, cfg systemConfig) *system {
	t.Helper()
	s := &system{t: t}
	log := testLogger()
	client := &http.Client{Transport: &auth.Transport{Secret: testSecret}}
	for i := range cfg.replicas {
		name := fmt.Sprintf("m%d", i+1)
		srv := httptest.NewUnstartedServer(nil)
		u := "http://" + srv.Listener.Addr().String()
		var join []string
		if i > 0 {
			join = []string{s.replicas[0].cluster.Gossip().Addr()}
		}
		rlog := log.With("replica", name)
		c, err := cluster.New(cluster.Config{
			Name: name, DataDir: t.TempDir(), RaftAddr: "127.0.0.1:0", HTTPURL: u,
			BootstrapExpect: cfg.replicas, Secret: testSecret, Timing: cluster.FastTiming(),
			Gossip: gossip.Config{BindAddr: "127.0.0.1:0", Join: join, Fast: true},
		}, fsm.New(), rlog)
		if err != nil {
			srv.Close()
			t.Fatal(err)
		}
		pool := scaler.NewPool(scaler.PoolConfig{InitialNodes: 1}, c, c.Gossip(), scaler.NewStatic(c.Gossip()), rlog)
		c.RunWhileLeader(pool.Run)
		emb := metrics.NewEmbedded(metrics.EmbeddedConfig{Interval: 100 * time.Millisecond}, c.State, client, rlog)
		ctx, cancel := context.WithCancel(context.Background())
		scraping := make(chan struct{})
		go func() {
			defer close(scraping)
			emb.Run(ctx)
		}()
		api := web.New(web.Config{Secret: testSecret, AdminToken: cfg.token}, c, pool, emb, rlog)
		r := chi.NewRouter()
		c.Routes(r)
		api.Routes(r)
		srv.Config.Handler = r
		srv.Start()
		s.replicas = append(s.replicas, &replica{name: name, cluster: c, pool: pool, metrics: emb, srv: srv, url: u})
		t.Cleanup(func() {
			cancel()
			<-scraping
			srv.CloseClientConnections()
			srv.Close()
			c.Close()
		})
	}
	for i := range cfg.nodes {
		svc, err := node.Start(node.ServiceConfig{
			Node:      node.Config{ID: fmt.Sprintf("n%d", i+1), Secret: testSecret, SampleInterval: 100 * time.Millisecond},
			HTTPAddr:  "127.0.0.1:0",
			Gossip:    gossip.Config{BindAddr: "127.0.0.1:0", Join: []string{s.replicas[0].cluster.Gossip().Addr()}, Fast: true},
			WatchWait: time.Second,
		}, log)
		if err != nil {
			t.Fatal(err)
		}
		s.nodes = append(s.nodes, svc)
		// Registered after the replicas' cleanups, so it runs before them:
		// nodes leave first and end their watches.
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			svc.Close(ctx)
		})
	}
	waitfor.True(t, 30*time.Second, "a leader and a pool of one node on every replica", func() bool {
		if s.leaderNow() == nil {
			return false
		}
		for _, r := range s.replicas {
			if len(r.cluster.State().Members) != 1 {
				return false
			}
		}
		return true
	})
	s.waitNodesFollow()
	return s
}

// leaderNow returns the replica that leads at this instant, or nil.
func (s *system) leaderNow() *replica {
	for _, r := range s.replicas {
		if r.cluster.IsLeader() {
			return r
		}
	}
	return nil
}

// leader waits for a replica that leads and returns it.
func (s *system) leader() *replica {
	s.t.Helper()
	var l *replica
	waitfor.True(s.t, 10*time.Second, "a leader", func() bool {
		l = s.leaderNow()
		return l != nil
	})
	return l
}

// follower returns a replica that does not lead.
func (s *system) follower() *replica {
	for _, r := range s.replicas {
		if !r.cluster.IsLeader() {
			return r
		}
	}
	s.t.Fatal("no follower")
	return nil
}

// state returns the leader's state.
func (s *system) state() fsm.State {
	s.t.Helper()
	l := s.leader()
	if l == nil {
		s.t.Fatal("no leader")
	}
	return l.cluster.State()
}

// waitConverged waits until every replica has applied the leader's state.
func (s *system) waitConverged() fsm.State {
	s.t.Helper()
	var st fsm.State
	waitfor.True(s.t, 10*time.Second, "every replica to apply the leader's state", func() bool {
		l := s.leaderNow()
		if l == nil {
			return false
		}
		st = l.cluster.State()
		for _, r := range s.replicas {
			if r.cluster.State().Index != st.Index {
				return false
			}
		}
		return true
	})
	return st
}

// node returns the running node with id.
func (s *system) node(id string) *node.Service {
	for _, n := range s.nodes {
		if n.Node().ID() == id {
			return n
		}
	}
	s.t.Fatalf("no node %s", id)
	return nil
}

// waitNodesFollow waits until every pool member holds the pool's region map.
func (s *system) waitNodesFollow() {
	s.t.Helper()
	waitfor.True(s.t, 10*time.Second, "the pool's nodes to hold its region map", func() bool {
		st := s.state()
		for _, m := range st.Members {
			if s.node(m.ID).Node().Epoch() != st.Epoch {
				return false
			}
		}
		return true
	})
}

// traffic sends PUTs and GETs straight to the nodes' cache API, each key to
// the member that owns its region: puts keys k0..k(puts-1) of size bytes,
// then GETs keys k0..k(gets-1) (those beyond puts miss). It returns how many
// requests the nodes answered as expected.
func (s *system) traffic(prefix string, puts, gets, size int) int {
	s.t.Helper()
	st := s.state()
	urls := map[string]string{}
	for _, m := range st.Members {
		urls[m.ID] = m.HTTP
	}
	nodes := node.NewClient(node.ClientConfig{Secret: testSecret, Timeout: 5 * time.Second})
	v := st.View()
	body := []byte(strings.Repeat("x", size))
	var (
		mu sync.Mutex
		ok int
		wg sync.WaitGroup
	)
	do := func(method, key string) {
		ctx, base := context.Background(), urls[st.Regions[region.Of(key)]]
		var err error
		if method == http.MethodPut {
			err = nodes.Put(ctx, base, key, body, node.PutOptions{Epoch: v.Epoch, Generation: v.Generation(), ContentType: "image/png"})
		} else {
			var e *node.Entry
			if e, err = nodes.Get(ctx, base, key, v.Epoch, node.GetOptions{}); err == nil {
				io.Copy(io.Discard, e.Body)
				e.Body.Close()
			} else if errors.Is(err, node.ErrMiss) {
				err = nil
			}
		}
		if err == nil {
			mu.Lock()
			ok++
			mu.Unlock()
		}
	}
	for i := range puts {
		wg.Go(func() { do(http.MethodPut, fmt.Sprintf("%s-%d", prefix, i)) })
	}
	wg.Wait()
	for i := range gets {
		wg.Go(func() { do(http.MethodGet, fmt.Sprintf("%s-%d", prefix, i)) })
	}
	wg.Wait()
	return ok
}
