package web_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/memcache/memcache/cluster"
	"github.com/memcache/memcache/fsm"
	"github.com/memcache/memcache/internal/role"
	"github.com/memcache/memcache/internal/testcluster"
	"github.com/memcache/memcache/metrics"
	"github.com/memcache/memcache/node"
	"github.com/memcache/memcache/region"
	"github.com/memcache/memcache/scaler"
)

// The UI and browser tests run on a test cluster (internal/testcluster):
// manager replicas started as `memcache manager` starts them, with the
// static provisioner, and in-process cache nodes that join their gossip.

const (
	testSecret = testcluster.Secret
	testToken  = testcluster.Token
)

func testLogger() *slog.Logger { return testcluster.Logger() }

// replica is one running manager replica, as the UI tests look at it.
type replica struct {
	name    string
	cluster *cluster.Cluster
	pool    *scaler.Pool
	metrics metrics.Reader
	url     string
}

func replicaOf(m *role.Manager) *replica {
	return &replica{name: m.Name(), cluster: m.Cluster(), pool: m.Pool(), metrics: m.Metrics(), url: m.URL()}
}

// system is a manager cluster and its cache nodes.
type system struct {
	*testcluster.Cluster
	t        *testing.T
	replicas []*replica
}

type systemConfig struct {
	replicas int    // manager replicas; they bootstrap the Raft group
	nodes    int    // cache nodes; the pool starts with one of them
	token    string // admin token; blank leaves the admin API open
}

// startSystem starts the replicas and nodes and waits for a leader, a pool
// of one node, and every node following the pool state.
func startSystem(t *testing.T, cfg systemConfig) *system {
	t.Helper()
	tc := testcluster.Start(t, testcluster.Options{
		Managers: cfg.replicas, Nodes: cfg.nodes, AdminToken: cfg.token,
		ScrapeInterval: 100 * time.Millisecond, SampleInterval: 100 * time.Millisecond,
	})
	s := &system{Cluster: tc, t: t}
	for _, m := range tc.Managers {
		s.replicas = append(s.replicas, replicaOf(m))
	}
	return s
}

// leader waits for a replica that leads and returns it.
func (s *system) leader() *replica {
	s.t.Helper()
	return s.replicaNamed(s.WaitLeader().Name())
}

// follower returns a replica that does not lead.
func (s *system) follower() *replica {
	s.t.Helper()
	return s.replicaNamed(s.Follower().Name())
}

func (s *system) replicaNamed(name string) *replica {
	for _, r := range s.replicas {
		if r.name == name {
			return r
		}
	}
	s.t.Fatalf("no replica %s", name)
	return nil
}

// state returns the leader's state.
func (s *system) state() fsm.State {
	s.t.Helper()
	return s.State()
}

// waitConverged waits until every replica has applied the leader's state.
func (s *system) waitConverged() fsm.State {
	s.t.Helper()
	return s.WaitConverged()
}

// node returns the running node with id.
func (s *system) node(id string) *role.Node {
	s.t.Helper()
	return s.Node(id)
}

// waitNodesFollow waits until every pool member holds the pool's region map.
func (s *system) waitNodesFollow() {
	s.t.Helper()
	s.WaitNodesFollow()
}

// traffic sends PUTs and GETs straight to the nodes' cache API, each key to
// the member that owns its region: puts keys k0..k(puts-1) of size bytes,
// then GETs keys k0..k(gets-1) (those beyond puts miss). It returns how many
// requests the nodes answered as expected. A request refused because the
// pool changed meanwhile (on a busy machine gossip may take a node for
// failed and back) is sent once more with the new view; each refusal is
// logged, so that a shortfall says what the nodes answered.
func (s *system) traffic(prefix string, puts, gets, size int) int {
	s.t.Helper()
	nodes := s.NodeClient()
	body := []byte(strings.Repeat("x", size))
	var (
		mu sync.Mutex
		ok int
		wg sync.WaitGroup
	)
	first := s.state()
	send := func(st fsm.State, method, key string) error {
		v := st.View()
		ctx, base := context.Background(), ""
		for _, m := range st.Members {
			if m.ID == st.Regions[region.Of(key)] {
				base = m.HTTP
			}
		}
		if method == http.MethodPut {
			return nodes.Put(ctx, base, key, body, node.PutOptions{Epoch: v.Epoch, Generation: v.Generation(), ContentType: "image/png"})
		}
		e, err := nodes.Get(ctx, base, key, v.Epoch, node.GetOptions{})
		if err == nil {
			io.Copy(io.Discard, e.Body)
			e.Body.Close()
		} else if errors.Is(err, node.ErrMiss) {
			err = nil
		}
		return err
	}
	do := func(method, key string) {
		err := send(first, method, key)
		if err != nil {
			s.t.Logf("traffic: %s %s: %v; sending it again with the pool's view now", method, key, err)
			if l := s.Leader(); l != nil { // not WaitLeader: this is not the test's goroutine
				err = send(l.Cluster().State(), method, key)
			}
		}
		if err != nil {
			s.t.Logf("traffic: %s %s again: %v", method, key, err)
			return
		}
		mu.Lock()
		ok++
		mu.Unlock()
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
