package cluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/hashicorp/raft"

	"github.com/memcache/memcache/auth"
	"github.com/memcache/memcache/fsm"
	"github.com/memcache/memcache/gossip"
	"github.com/memcache/memcache/internal/pool"
	"github.com/memcache/memcache/internal/stall"
	"github.com/memcache/memcache/internal/waitfor"
	"github.com/memcache/memcache/pki"
)

const (
	testSecret = "s3cret"
	testToken  = "admin-t0ken" // the replicas' admin token
)

func testLogger() *slog.Logger {
	if os.Getenv("MEMCACHE_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// proxy forwards TCP connections to target until it is cut.
type proxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex // guards cut and conns
	cut    bool
	conns  map[net.Conn]struct{}
	wg     sync.WaitGroup

	closeOnce sync.Once
}

func newProxy(t testing.TB, target string) *proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{ln: ln, target: target, conns: map[net.Conn]struct{}{}}
	p.wg.Add(1)
	go p.serve()
	t.Cleanup(p.close)
	return p
}

func (p *proxy) serve() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		if p.cut {
			p.mu.Unlock()
			c.Close()
			continue
		}
		p.mu.Unlock()
		up, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		if p.cut { // cut while dialling
			p.mu.Unlock()
			c.Close()
			up.Close()
			continue
		}
		p.conns[c], p.conns[up] = struct{}{}, struct{}{}
		p.mu.Unlock()
		p.wg.Add(2)
		go func() { defer p.wg.Done(); io.Copy(up, c); up.Close(); c.Close() }()
		go func() { defer p.wg.Done(); io.Copy(c, up); c.Close(); up.Close() }()
	}
}

// setCut cuts (or heals) the link: a cut drops every open connection and
// refuses new ones.
func (p *proxy) setCut(cut bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = cut
	if cut {
		for c := range p.conns {
			c.Close()
		}
		clear(p.conns)
	}
}

func (p *proxy) close() {
	p.closeOnce.Do(func() {
		p.ln.Close()
		p.setCut(true)
	})
	p.wg.Wait()
}

// replica is one manager replica of a test cluster, with its HTTP server.
type replica struct {
	name, dataDir, raftAddr string // raftAddr and up are guarded by testCluster.mu
	up                      bool
	c                       *Cluster
	srv                     *http.Server
	url                     string
}

// testCluster is a group of replicas whose Raft traffic between every pair
// runs through a proxy the test can cut.
type testCluster struct {
	t        testing.TB
	timing   Timing
	forward  time.Duration // Config.ForwardTimeout and ProxyTimeout; 0: the defaults
	tls      *pki.TLS      // Config.TLS of every replica; nil: plain
	token    string        // Config.AdminToken
	replicas []*replica
	mu       sync.Mutex
	proxies  map[[2]string]*proxy // [from, to] -> proxy
}

func newTestCluster(t testing.TB, n int) *testCluster {
	return newTestClusterTiming(t, n, FastTiming())
}

func newTestClusterTiming(t testing.TB, n int, timing Timing) *testCluster {
	t.Helper()
	return newTestClusterForward(t, n, timing, 0)
}

// newTestClusterForward is newTestClusterTiming with the replicas' forward
// and proxy timeouts set to forward.
func newTestClusterForward(t testing.TB, n int, timing Timing, forward time.Duration) *testCluster {
	t.Helper()
	return newTestClusterWith(t, n, &testCluster{timing: timing, forward: forward, token: testToken})
}

// newTestClusterToken is newTestClusterForward with the replicas' admin
// token set to token.
func newTestClusterToken(t testing.TB, n int, timing Timing, forward time.Duration, token string) *testCluster {
	t.Helper()
	return newTestClusterWith(t, n, &testCluster{timing: timing, forward: forward, token: token})
}

// newTestClusterWith starts n replicas configured as tc says.
func newTestClusterWith(t testing.TB, n int, tc *testCluster) *testCluster {
	t.Helper()
	tc.t, tc.proxies = t, map[[2]string]*proxy{}
	var seed string
	for i := range n {
		r := &replica{name: string(rune('a' + i)), dataDir: t.TempDir(), raftAddr: "127.0.0.1:0"}
		tc.replicas = append(tc.replicas, r)
		tc.start(r, n, seed)
		if seed == "" {
			seed = r.c.Gossip().Addr()
		}
	}
	t.Cleanup(func() {
		for _, r := range tc.replicas {
			tc.stop(r)
		}
	})
	return tc
}

// addressFor routes from's Raft connections to peer id through a proxy.
func (tc *testCluster) addressFor(from string) raft.ServerAddressProvider {
	return providerFunc(func(id raft.ServerID) (raft.ServerAddress, error) {
		tc.mu.Lock()
		defer tc.mu.Unlock()
		key := [2]string{from, string(id)}
		if p, ok := tc.proxies[key]; ok {
			return raft.ServerAddress(p.ln.Addr().String()), nil
		}
		for _, r := range tc.replicas {
			if r.name == string(id) && r.up {
				p := newProxy(tc.t, r.raftAddr)
				tc.proxies[key] = p
				return raft.ServerAddress(p.ln.Addr().String()), nil
			}
		}
		return "", errors.New("unknown peer " + string(id))
	})
}

type providerFunc func(raft.ServerID) (raft.ServerAddress, error)

func (f providerFunc) ServerAddr(id raft.ServerID) (raft.ServerAddress, error) { return f(id) }

// start (re)starts r from its data dir, on its previous Raft address if it had one.
func (tc *testCluster) start(r *replica, expect int, seed string) {
	tc.t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tc.t.Fatal(err)
	}
	r.url = "http://" + ln.Addr().String()
	var join []string
	if seed != "" {
		join = []string{seed}
	}
	c, err := New(Config{
		Name: r.name, DataDir: r.dataDir, RaftAddr: r.raftAddr, HTTPURL: r.url,
		BootstrapExpect: expect, Secret: testSecret, AdminToken: tc.token, Timing: tc.timing, SnapshotThreshold: 1 << 20,
		Gossip:          gossip.Config{BindAddr: "127.0.0.1:0", Join: join, Fast: true},
		AddressProvider: tc.addressFor(r.name), TLS: tc.tls,
		ForwardTimeout: tc.forward, ProxyTimeout: tc.forward,
	}, fsm.New(), testLogger().With("replica", r.name))
	if err != nil {
		ln.Close()
		tc.t.Fatal(err)
	}
	tc.mu.Lock()
	r.c, r.raftAddr, r.up = c, c.RaftAddr(), true
	tc.mu.Unlock()
	router := chi.NewRouter()
	c.Routes(router)
	c.InternalRoutes(router)
	c.OperatorRoutes(router)
	r.srv = &http.Server{Handler: router}
	go r.srv.Serve(ln)
}

func (tc *testCluster) stop(r *replica) {
	if r.c == nil {
		return
	}
	r.srv.Close()
	r.c.Close()
	// Its proxies point at a listener that is gone; drop them so a restart
	// gets fresh ones.
	tc.mu.Lock()
	r.c, r.up = nil, false
	for k, p := range tc.proxies {
		if k[0] == r.name || k[1] == r.name {
			go p.close()
			delete(tc.proxies, k)
		}
	}
	tc.mu.Unlock()
}

// isolate cuts (or heals) every Raft link to and from r.
func (tc *testCluster) isolate(r *replica, cut bool) {
	tc.mu.Lock()
	defer tc.mu.Unlock()
	for k, p := range tc.proxies {
		if k[0] == r.name || k[1] == r.name {
			p.setCut(cut)
		}
	}
}

func (tc *testCluster) running() []*replica {
	var out []*replica
	for _, r := range tc.replicas {
		if r.c != nil {
			out = append(out, r)
		}
	}
	return out
}

// leader waits until exactly one running replica leads and every running
// replica agrees, and returns it.
func (tc *testCluster) leader() *replica {
	tc.t.Helper()
	var l *replica
	waitfor.True(tc.t, 10*time.Second, "a leader all replicas agree on", func() bool {
		l = nil
		for _, r := range tc.running() {
			if r.c.IsLeader() {
				if l != nil {
					return false
				}
				l = r
			}
		}
		if l == nil {
			return false
		}
		for _, r := range tc.running() {
			if name, _, ok := r.c.Leader(); !ok || name != l.name {
				return false
			}
		}
		return true
	})
	return l
}

func (tc *testCluster) follower() *replica {
	l := tc.leader()
	for _, r := range tc.running() {
		if r != l {
			return r
		}
	}
	tc.t.Fatal("no follower")
	return nil
}

func mustApply(t testing.TB, r *replica, cmd fsm.Command) fsm.Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := r.c.Apply(ctx, cmd)
	if err != nil {
		t.Fatalf("Apply(%T) on %s: %v", cmd, r.name, err)
	}
	return res
}

// converged waits until every running replica holds the same state as want.
func (tc *testCluster) converged(what string, want func(fsm.State) bool) {
	tc.t.Helper()
	waitfor.True(tc.t, 10*time.Second, what+" on every replica", func() bool {
		for _, r := range tc.running() {
			if !want(r.c.State()) {
				return false
			}
		}
		return true
	})
}

func cacheIs(capacity int, policy fsm.Policy) func(fsm.State) bool {
	return func(s fsm.State) bool { return s.Cache.CapacityMB == capacity && s.Cache.Policy == policy }
}

func TestWriteOnFollowerIsAppliedEverywhere(t *testing.T) {
	tc := newTestCluster(t, 3)
	f := tc.follower()
	res := mustApply(t, f, fsm.SetCache{Config: fsm.CacheConfig{CapacityMB: 128, Policy: "RR"}})
	if res.Index == 0 {
		t.Errorf("result index 0, want the entry's Raft index")
	}
	tc.converged("capacity 128 RR", cacheIs(128, "RR"))
	// Every replica reports the same leader and three voters.
	for _, r := range tc.running() {
		st := r.c.Status()
		if len(st.Peers) != 3 || st.PoolIndex != res.Index {
			t.Errorf("%s status: %d peers, pool index %d; want 3, %d", r.name, len(st.Peers), st.PoolIndex, res.Index)
		}
	}
}

func TestLeaderFailoverKeepsCommittedStateAndOldLeaderCatchesUp(t *testing.T) {
	tc := newTestCluster(t, 3)
	old := tc.leader()
	mustApply(t, old, fsm.SetCache{Config: fsm.CacheConfig{CapacityMB: 100, Policy: "LRU"}})
	tc.converged("capacity 100", cacheIs(100, "LRU"))

	tc.stop(old)
	nl := tc.leader()
	if nl == old {
		t.Fatal("stopped replica still leader")
	}
	if st := nl.c.State(); st.Cache.CapacityMB != 100 {
		t.Fatalf("new leader lost committed state: capacity %d, want 100", st.Cache.CapacityMB)
	}
	mustApply(t, tc.follower(), fsm.SetCache{Config: fsm.CacheConfig{CapacityMB: 200, Policy: "RR"}})
	mustApply(t, nl, fsm.ClearCaches{})

	tc.start(old, 3, nl.c.Gossip().Addr())
	tc.converged("the restarted replica to catch up", func(s fsm.State) bool {
		return s.Cache.CapacityMB == 200 && s.Cache.Policy == "RR" && s.ClearGen == 1
	})
	tc.leader()
}

func TestMinorityCannotWriteMajorityCan(t *testing.T) {
	tc := newTestCluster(t, 3)
	mustApply(t, tc.leader(), fsm.SetCache{Config: fsm.CacheConfig{CapacityMB: 10, Policy: "LRU"}})
	tc.converged("capacity 10", cacheIs(10, "LRU"))
	cut := tc.follower()
	tc.isolate(cut, true)
	waitfor.True(t, 10*time.Second, "the cut replica to lose its leader", func() bool {
		_, _, ok := cut.c.Leader()
		return !ok
	})
	// Its watch sends watchers elsewhere rather than serving a stale state.
	req := must(http.NewRequest("GET", cut.url+"/v1/pool?index=0", nil))
	req.Header.Set(auth.Header, testSecret)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("watch on the cut-off replica: %d, want 503", resp.StatusCode)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	_, err = cut.c.Apply(ctx, fsm.SetCache{Config: fsm.CacheConfig{CapacityMB: 11, Policy: "LRU"}})
	cancel()
	if !errors.Is(err, ErrNoLeader) {
		t.Fatalf("write on the minority: got %v, want ErrNoLeader", err)
	}
	// The majority elects (or keeps) a leader among itself and accepts writes.
	var majority []*replica
	for _, r := range tc.running() {
		if r != cut {
			majority = append(majority, r)
		}
	}
	waitfor.True(t, 10*time.Second, "a leader in the majority", func() bool { return majority[0].c.IsLeader() || majority[1].c.IsLeader() })
	mustApply(t, majority[1], fsm.SetCache{Config: fsm.CacheConfig{CapacityMB: 12, Policy: "LRU"}})
	for _, r := range majority {
		waitfor.True(t, 5*time.Second, "the majority to apply", func() bool { return r.c.State().Cache.CapacityMB == 12 })
	}
	if got := cut.c.State().Cache.CapacityMB; got != 10 {
		t.Fatalf("cut replica's capacity = %d, want 10 (unchanged)", got)
	}
	tc.isolate(cut, false)
	tc.converged("the healed replica to catch up", cacheIs(12, "LRU"))
}

func TestSnapshotRestartRestoresIdenticalState(t *testing.T) {
	tc := newTestCluster(t, 3)
	l := tc.leader()
	mustApply(t, l, fsm.SetCache{Config: fsm.CacheConfig{CapacityMB: 300, Policy: "RR"}})
	mustApply(t, l, fsm.Resize{Members: []fsm.Member{{ID: "n1", HTTP: "http://127.0.0.1:1"}, {ID: "n2", HTTP: "http://127.0.0.1:2"}}})
	for _, r := range tc.running() {
		waitfor.True(t, 5*time.Second, "the resize on "+r.name, func() bool { return len(r.c.State().Members) == 2 })
		if err := r.c.Raft().Snapshot().Error(); err != nil {
			t.Fatalf("snapshot on %s: %v", r.name, err)
		}
	}
	// More entries after the snapshot: restart must replay them from the log.
	mustApply(t, l, fsm.Resize{Members: []fsm.Member{{ID: "n1", HTTP: "http://127.0.0.1:1"}, {ID: "n2", HTTP: "http://127.0.0.1:2"}, {ID: "n3", HTTP: "http://127.0.0.1:3"}}})
	mustApply(t, l, fsm.DeleteAll{})
	tc.converged("the last write", func(s fsm.State) bool { return s.DeleteGen == 1 })
	want := l.c.State()
	for _, r := range tc.replicas {
		tc.stop(r)
	}
	for i, r := range tc.replicas {
		seed := ""
		if i > 0 {
			seed = tc.replicas[0].c.Gossip().Addr()
		}
		tc.start(r, 3, seed)
	}
	tc.leader()
	tc.converged("the state from before the restart", func(s fsm.State) bool { return reflect.DeepEqual(s, want) })
	for _, r := range tc.running() {
		if st := r.c.Status(); st.LastSnapIndex == 0 {
			t.Errorf("%s restarted without a snapshot", r.name)
		}
	}
}

func TestInvalidCommandsAreRefusedAndChangeNothing(t *testing.T) {
	tc := newTestCluster(t, 3)
	l, f := tc.leader(), tc.follower()
	before := l.c.State()
	members := func(n int) []fsm.Member {
		var ms []fsm.Member
		for i := range n {
			ms = append(ms, fsm.Member{ID: string(rune('a' + i)), HTTP: "http://127.0.0.1:1"})
		}
		return ms
	}
	def := fsm.DefaultState().Scaling
	scaling := func(mod func(*fsm.ScalingPolicy)) fsm.Command {
		p := def
		mod(&p)
		return fsm.SetScaling{Policy: p}
	}
	cases := []struct {
		name string
		cmd  fsm.Command
		msg  string
	}{
		{"capacity 0", fsm.SetCache{Config: fsm.CacheConfig{CapacityMB: 0, Policy: "LRU"}}, "capacity"},
		{"capacity 2000", fsm.SetCache{Config: fsm.CacheConfig{CapacityMB: 2000, Policy: "LRU"}}, "capacity"},
		{"policy FIFO", fsm.SetCache{Config: fsm.CacheConfig{CapacityMB: 10, Policy: "FIFO"}}, "FIFO"},
		{"9 nodes", fsm.Resize{Members: members(9)}, "9"},
		{"expand ratio 1", scaling(func(p *fsm.ScalingPolicy) { p.ExpandRatio = 1 }), "expand"},
		{"expand ratio 0.5", scaling(func(p *fsm.ScalingPolicy) { p.ExpandRatio = 0.5 }), "expand"},
		{"shrink ratio 1", scaling(func(p *fsm.ScalingPolicy) { p.ShrinkRatio = 1 }), "shrink"},
		{"min above max", scaling(func(p *fsm.ScalingPolicy) { p.MinMissRate, p.MaxMissRate = 0.9, 0.5 }), "min"},
	}
	for _, tc := range cases {
		for _, r := range []*replica{l, f} {
			t.Run(tc.name+" on "+r.name, func(t *testing.T) {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				_, err := r.c.Apply(ctx, tc.cmd)
				if !errors.Is(err, fsm.ErrInvalidCommand) || !strings.Contains(err.Error(), tc.msg) {
					t.Fatalf("got %v, want ErrInvalidCommand mentioning %q", err, tc.msg)
				}
			})
		}
	}
	for _, r := range tc.running() {
		if got := r.c.State(); !reflect.DeepEqual(got, before) {
			t.Errorf("%s state changed by refused commands: got %+v, want %+v", r.name, got, before)
		}
	}
}

func TestInternalCallsRequireTheSecret(t *testing.T) {
	tc := newTestCluster(t, 1)
	r := tc.leader()
	data, _ := fsm.Encode(fsm.ClearCaches{})
	for _, secret := range []string{"", "wrong"} {
		for _, req := range []*http.Request{
			must(http.NewRequest("POST", r.url+"/internal/v1/apply", strings.NewReader(string(data)))),
			must(http.NewRequest("GET", r.url+"/v1/pool", nil)),
		} {
			if secret != "" {
				req.Header.Set(auth.Header, secret)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusUnauthorized {
				t.Errorf("%s %s with secret %q: got %d, want 401", req.Method, req.URL.Path, secret, resp.StatusCode)
			}
		}
	}
	if got := r.c.State().ClearGen; got != 0 {
		t.Errorf("clear generation %d after refused calls, want 0", got)
	}
	// With the secret the same call is applied.
	req := must(http.NewRequest("POST", r.url+"/internal/v1/apply", strings.NewReader(string(data))))
	req.Header.Set(auth.Header, testSecret)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || r.c.State().ClearGen != 1 {
		t.Errorf("apply with the secret: %d, clear gen %d; want 200, 1", resp.StatusCode, r.c.State().ClearGen)
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// watcher follows the pool state through the watch package and records
// what it saw.
type watcher struct {
	mu   sync.Mutex
	seen []pool.View
	at   map[uint64]time.Time // index -> when it arrived
}

func (w *watcher) got(st pool.View) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.seen = append(w.seen, st)
	w.at[st.Index] = time.Now()
}

func (w *watcher) has(pred func(pool.View) bool) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, st := range w.seen {
		if pred(st) {
			return true
		}
	}
	return false
}

// startWatcher runs a watcher that asks the replicas in order, starting
// with first, until the test ends.
func startWatcher(t testing.TB, tc *testCluster, first *replica) *watcher {
	w := &watcher{at: map[uint64]time.Time{}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	managers := func() []string {
		tc.mu.Lock()
		defer tc.mu.Unlock()
		urls := []string{first.url}
		for _, r := range tc.replicas {
			if r != first {
				urls = append(urls, r.url)
			}
		}
		return urls
	}
	go func() {
		defer close(done)
		pool.Watch(ctx, pool.WatchConfig{Managers: managers, Client: secretClient(), Wait: 2 * time.Second, Backoff: 20 * time.Millisecond}, testLogger(), w.got)
	}()
	t.Cleanup(func() { cancel(); <-done })
	return w
}

func TestWatchersReceiveCommittedChangesAndFailOver(t *testing.T) {
	tc := newTestCluster(t, 3)
	l := tc.leader()
	var ws []*watcher
	for _, r := range tc.replicas {
		ws = append(ws, startWatcher(t, tc, r))
	}
	res := mustApply(t, l, fsm.SetCache{Config: fsm.CacheConfig{CapacityMB: 77, Policy: "RR"}})
	for i, w := range ws {
		waitfor.True(t, 5*time.Second, "watcher to see capacity 77", func() bool {
			return w.has(func(s pool.View) bool { return s.Index >= res.Index && s.Cache.CapacityMB == 77 })
		})
		// A watcher never sees a state older than one it already had.
		w.mu.Lock()
		for j := 1; j < len(w.seen); j++ {
			if w.seen[j].Index <= w.seen[j-1].Index {
				t.Errorf("watcher %d: index went from %d to %d", i, w.seen[j-1].Index, w.seen[j].Index)
			}
		}
		w.mu.Unlock()
	}
	// Stop the replica the first watcher uses; the next change still reaches it.
	stopped := tc.replicas[0]
	tc.stop(stopped)
	l = tc.leader()
	res = mustApply(t, l, fsm.Resize{Members: []fsm.Member{{ID: "n1", HTTP: "http://127.0.0.1:1"}}})
	for _, w := range ws {
		waitfor.True(t, 10*time.Second, "every watcher, including the one whose replica stopped, to see the resize", func() bool {
			return w.has(func(s pool.View) bool { return s.Index == res.Index && len(s.Members) == 1 && s.Epoch == res.Epoch })
		})
	}
}

// secretClient is an HTTP client that carries the cluster secret.
func secretClient() *http.Client {
	return &http.Client{Transport: &auth.Transport{Secret: testSecret}}
}

// A scaler decision changes the replicated state but not the data plane's
// view: no node or frontend is woken by it.
func TestDecisionsDoNotWakeTheDataPlane(t *testing.T) {
	tc := newTestCluster(t, 3)
	l := tc.leader()
	w := startWatcher(t, tc, l)
	first := mustApply(t, l, fsm.SetCache{Config: fsm.CacheConfig{CapacityMB: 11, Policy: fsm.PolicyLRU}})
	waitfor.True(t, 10*time.Second, "the watcher to see capacity 11", func() bool {
		return w.has(func(v pool.View) bool { return v.Index == first.Index })
	})
	var decisions []uint64
	for i := range 5 {
		res := mustApply(t, l, fsm.RecordDecision{Decision: fsm.Decision{Time: time.Now().UTC(), Mode: fsm.ModeManual,
			Action: fsm.ActionNone, Reason: fmt.Sprintf("manual mode, round %d", i)}})
		decisions = append(decisions, res.Index)
	}
	last := mustApply(t, l, fsm.SetCache{Config: fsm.CacheConfig{CapacityMB: 12, Policy: fsm.PolicyLRU}})
	waitfor.True(t, 10*time.Second, "the watcher to see capacity 12", func() bool {
		return w.has(func(v pool.View) bool { return v.Index == last.Index })
	})
	w.mu.Lock()
	defer w.mu.Unlock()
	var after []uint64
	for _, v := range w.seen {
		if v.Index > first.Index {
			after = append(after, v.Index)
		}
	}
	if len(after) != 1 || after[0] != last.Index {
		t.Errorf("views delivered after index %d: %v, want only %d (decisions at %v must not wake watchers)", first.Index, after, last.Index, decisions)
	}
	if st := l.c.State(); st.ViewIndex != last.Index || len(st.Decisions) != 5 {
		t.Errorf("leader state: view index %d, %d decisions; want %d and 5", st.ViewIndex, len(st.Decisions), last.Index)
	}
}

// A replica that accepts connections but never answers (a paused process)
// is left within seconds: the watcher gives each blocking request its wait
// plus a little, then asks the next replica.
func TestWatchLeavesAReplicaThatStopsAnswering(t *testing.T) {
	tc := newTestCluster(t, 3)
	l := tc.leader()
	paused := stall.Listen(t, "127.0.0.1:0")
	w := &watcher{at: map[uint64]time.Time{}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	managers := func() []string {
		urls := []string{"http://" + paused}
		for _, r := range tc.running() {
			urls = append(urls, r.url)
		}
		return urls
	}
	go func() {
		defer close(done)
		// The default wait: what nodes and frontends use.
		pool.Watch(ctx, pool.WatchConfig{Managers: managers, Client: secretClient()}, testLogger(), w.got)
	}()
	t.Cleanup(func() { cancel(); <-done })
	start := time.Now()
	res := mustApply(t, l, fsm.SetCache{Config: fsm.CacheConfig{CapacityMB: 21, Policy: fsm.PolicyRR}})
	// Generous for a busy machine, yet well under the 30 s + 10 s that a
	// watcher used to give a silent replica.
	waitfor.True(t, 20*time.Second, "the watcher to leave the silent replica and see the change", func() bool {
		return w.has(func(v pool.View) bool { return v.Index >= res.Index })
	})
	t.Logf("left the silent replica and got the change after %v", time.Since(start).Round(time.Millisecond))
}
