package pool_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/memcache/memcache/fsm"
	"github.com/memcache/memcache/internal/pool"
	"github.com/memcache/memcache/internal/stall"
	"github.com/memcache/memcache/internal/waitfor"
)

// source serves the watch from a real FSM, as a replica does, with a
// leader flag the test turns off and a count of consistent reads.
type source struct {
	f          *fsm.FSM
	mu         sync.Mutex
	noLeader   bool
	consistent int
	index      uint64
}

func (s *source) View() (pool.View, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.noLeader {
		return pool.View{}, pool.ErrNoLeader
	}
	return s.f.View(), nil
}

func (s *source) WaitView(ctx context.Context, after uint64) (pool.View, error) {
	return s.f.WaitView(ctx, after)
}

func (s *source) ConsistentView(context.Context) (pool.View, error) {
	s.mu.Lock()
	s.consistent++
	s.mu.Unlock()
	return s.f.View(), nil
}

// apply commits cmd to the FSM at the next index.
func (s *source) apply(t *testing.T, cmd fsm.Command) {
	t.Helper()
	data, err := fsm.Encode(cmd)
	if err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	s.index++
	l := &raft.Log{Index: s.index, Type: raft.LogCommand, Data: data}
	s.mu.Unlock()
	if res := s.f.Apply(l).(fsm.Result); res.Err != nil {
		t.Fatal(res.Err)
	}
}

func TestHandlerRefusesBadQueriesAndAnswersWithoutALeader503(t *testing.T) {
	src := &source{f: fsm.New()}
	srv := httptest.NewServer(pool.Handler(src))
	defer srv.Close()
	for _, tt := range []struct {
		name, query string
		want        int
	}{
		{"index not a number", "?index=x", http.StatusBadRequest},
		{"negative index", "?index=-1", http.StatusBadRequest},
		{"wait not a duration", "?wait=soon", http.StatusBadRequest},
		{"negative wait", "?wait=-1s", http.StatusBadRequest},
		{"no wait", "?index=5&wait=0s", http.StatusOK},
	} {
		resp, err := http.Get(srv.URL + tt.query)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tt.want {
			t.Errorf("%s: got %d, want %d", tt.name, resp.StatusCode, tt.want)
		}
	}
	src.mu.Lock()
	src.noLeader = true
	src.mu.Unlock()
	resp, err := http.Get(srv.URL + "?index=0")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Errorf("replica with no leader: got %d, Retry-After %q; want 503 with Retry-After", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
}

// TestWatchStartsWithAConsistentReadAndDeliversEveryChangeInOrder: the
// first request a watcher makes is consistent; then it long-polls and hands
// fn each newer view once, in order.
func TestWatchStartsWithAConsistentReadAndDeliversEveryChangeInOrder(t *testing.T) {
	src := &source{f: fsm.New()}
	src.apply(t, fsm.SetCache{Config: pool.CacheConfig{CapacityMB: 10, Policy: pool.LRU}})
	srv := httptest.NewServer(pool.Handler(src))
	defer srv.Close()

	var (
		mu   sync.Mutex
		seen []pool.View
	)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		pool.Watch(ctx, pool.WatchConfig{Managers: func() []string { return []string{srv.URL} }, Wait: time.Second},
			slog.New(slog.DiscardHandler), func(v pool.View) {
				mu.Lock()
				seen = append(seen, v)
				mu.Unlock()
			})
	}()
	defer func() { cancel(); <-done }()
	got := func() []pool.View {
		mu.Lock()
		defer mu.Unlock()
		return append([]pool.View(nil), seen...)
	}
	waitfor.True(t, 10*time.Second, "the first view", func() bool { return len(got()) == 1 })
	if v := got()[0]; v.Index != 1 || v.Cache.CapacityMB != 10 {
		t.Fatalf("first view: index %d, capacity %d; want 1, 10", v.Index, v.Cache.CapacityMB)
	}
	src.mu.Lock()
	consistent := src.consistent
	src.mu.Unlock()
	if consistent != 1 {
		t.Errorf("consistent reads: %d, want 1 (the first request only)", consistent)
	}
	for c := 11; c <= 13; c++ {
		src.apply(t, fsm.SetCache{Config: pool.CacheConfig{CapacityMB: c, Policy: pool.LRU}})
	}
	waitfor.True(t, 10*time.Second, "the view at index 4", func() bool {
		vs := got()
		return vs[len(vs)-1].Index == 4
	})
	vs := got()
	for i := 1; i < len(vs); i++ {
		if vs[i].Index <= vs[i-1].Index {
			t.Errorf("view %d: index %d after %d, want increasing", i, vs[i].Index, vs[i-1].Index)
		}
	}
	if c := vs[len(vs)-1].Cache.CapacityMB; c != 13 {
		t.Errorf("last view: capacity %d, want 13", c)
	}
}

func TestCurrentIsAConsistentRead(t *testing.T) {
	src := &source{f: fsm.New()}
	src.apply(t, fsm.ClearCaches{})
	srv := httptest.NewServer(pool.Handler(src))
	defer srv.Close()
	v, err := pool.Current(context.Background(), http.DefaultClient, srv.URL)
	if err != nil || v.ClearGen != 1 || v.Members == nil {
		t.Fatalf("Current: %+v, %v; want clear generation 1 and a non-nil member list", v, err)
	}
	if src.consistent != 1 {
		t.Errorf("consistent reads: %d, want 1", src.consistent)
	}
	if _, err := pool.Current(context.Background(), http.DefaultClient, "http://127.0.0.1:1"); err == nil || errors.Is(err, context.Canceled) {
		t.Errorf("Current from nowhere: got %v, want a connection error", err)
	}
}

func TestEqualIgnoresIndexAndCloneSharesNothing(t *testing.T) {
	a := pool.View{Index: 1, Epoch: 2, Members: []pool.Member{{ID: "n1", HTTP: "http://a"}}}
	b := a.Clone()
	b.Index = 9
	if !pool.Equal(a, b) {
		t.Error("views differing only in Index are not Equal")
	}
	b.Members[0].HTTP = "http://b"
	if a.Members[0].HTTP != "http://a" {
		t.Error("Clone shares its member list")
	}
	if pool.Equal(a, b) {
		t.Error("views with different members are Equal")
	}
	b = a.Clone()
	b.ClearGen++
	if pool.Equal(a, b) || a.Generation() == b.Generation() {
		t.Error("a clear generation does not count in Equal or Generation")
	}
}

// scripted is a manager replica that answers watch requests from a script:
// the i-th request gets the i-th answer (a view's index, or a status for a
// failure); past the script, requests hang until the watcher gives up.
// It records the query of every request.
type scripted struct {
	mu      sync.Mutex
	answers []answer
	queries []url.Values
}

type answer struct {
	index  uint64 // the view's index
	status int    // if not 0, fail with this status instead
}

func (s *scripted) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	i := len(s.queries)
	s.queries = append(s.queries, r.URL.Query())
	var a *answer
	if i < len(s.answers) {
		a = &s.answers[i]
	}
	s.mu.Unlock()
	if a == nil {
		<-r.Context().Done()
		return
	}
	if a.status != 0 {
		http.Error(w, "scripted failure", a.status)
		return
	}
	v := pool.View{Index: a.index, Members: []pool.Member{}}
	w.Header().Set(pool.HeaderIndex, fmt.Sprint(a.index))
	json.NewEncoder(w).Encode(v)
}

func (s *scripted) requests() []url.Values {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]url.Values(nil), s.queries...)
}

// watcher runs Watch over managers until the test ends and returns the
// indexes of the views it passed to fn so far.
func watcher(t *testing.T, cfg pool.WatchConfig) func() []uint64 {
	t.Helper()
	var (
		mu   sync.Mutex
		seen []uint64
	)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		pool.Watch(ctx, cfg, slog.New(slog.DiscardHandler), func(v pool.View) {
			mu.Lock()
			seen = append(seen, v.Index)
			mu.Unlock()
		})
	}()
	t.Cleanup(func() { cancel(); <-done })
	return func() []uint64 {
		mu.Lock()
		defer mu.Unlock()
		return append([]uint64(nil), seen...)
	}
}

func urls(us ...string) func() []string { return func() []string { return us } }

// TestWatchNeverPassesAnOlderView: a replica that answers an index older
// than (or equal to) the one the watcher holds — a lagging replica after a
// failover, or a reordered answer — is not passed on, and the watcher keeps
// asking for changes after the index it holds.
func TestWatchNeverPassesAnOlderView(t *testing.T) {
	s := &scripted{answers: []answer{{index: 5}, {index: 3}, {index: 5}, {index: 4}, {index: 7}, {index: 6}, {index: 9}}}
	srv := httptest.NewServer(s)
	t.Cleanup(srv.Close) // after the watcher stops
	seen := watcher(t, pool.WatchConfig{Managers: urls(srv.URL), Wait: 200 * time.Millisecond})
	waitfor.True(t, 10*time.Second, "every scripted answer to be asked for", func() bool { return len(s.requests()) > len(s.answers) })
	if got, want := seen(), []uint64{5, 7, 9}; !slices.Equal(got, want) {
		t.Errorf("views passed: %v, want %v (never an older or equal index)", got, want)
	}
	want := []string{"0", "5", "5", "5", "5", "7", "7", "9"}
	for i, q := range s.requests() {
		if q.Get("index") != want[i] {
			t.Errorf("request %d asked for changes after %s, want %s", i, q.Get("index"), want[i])
		}
		if c := q.Get("consistent"); (c != "") != (i == 0) {
			t.Errorf("request %d: consistent=%q; want a consistent read first only", i, c)
		}
	}
}

// TestWatchFailsOverToTheNextReplica: a replica that refuses connections,
// one that knows no leader (503) and one that stops answering after a
// view are each left for the next; the next is asked for changes after
// the index the watcher holds, so it passes no view twice.
func TestWatchFailsOverToTheNextReplica(t *testing.T) {
	closed := httptest.NewServer(http.NotFoundHandler())
	closed.Close() // refuses connections
	noLeader := &scripted{answers: []answer{{status: 503}, {status: 503}, {status: 503}, {status: 503}, {status: 503}, {status: 503}}}
	first := &scripted{answers: []answer{{index: 4}, {status: 502}}}
	second := &scripted{answers: []answer{{index: 4}, {index: 6}}}
	srvs := make([]*httptest.Server, 0, 3)
	for _, h := range []http.Handler{noLeader, first, second} {
		srv := httptest.NewServer(h)
		t.Cleanup(srv.Close) // after the watcher stops
		srvs = append(srvs, srv)
	}
	seen := watcher(t, pool.WatchConfig{Managers: urls(closed.URL, srvs[0].URL, srvs[1].URL, srvs[2].URL),
		Wait: 200 * time.Millisecond, Backoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond})
	waitfor.True(t, 20*time.Second, "the view at index 6 from the second good replica", func() bool {
		got := seen()
		return len(got) > 0 && got[len(got)-1] == 6
	})
	if got, want := seen(), []uint64{4, 6}; !slices.Equal(got, want) {
		t.Errorf("views passed: %v, want %v", got, want)
	}
	if len(noLeader.requests()) == 0 {
		t.Error("the replica without a leader was never asked")
	}
	q := second.requests()
	if len(q) < 2 || q[0].Get("index") != "4" || q[0].Get("consistent") != "" {
		t.Errorf("the second good replica's first request: %v, want changes after index 4, not a consistent read", q)
	}
}

// TestWatchLeavesAReplicaThatDoesNotAnswer: a replica that accepts the
// connection and never answers (a paused process) is left for the next one
// once Wait plus the slack has passed.
func TestWatchLeavesAReplicaThatDoesNotAnswer(t *testing.T) {
	good := &scripted{answers: []answer{{index: 2}}}
	srv := httptest.NewServer(good)
	t.Cleanup(srv.Close) // after the watcher stops
	start := time.Now()
	seen := watcher(t, pool.WatchConfig{Managers: urls("http://"+stall.Listen(t, "127.0.0.1:0"), srv.URL), Wait: 200 * time.Millisecond})
	waitfor.True(t, 30*time.Second, "the view from the replica that answers", func() bool { return len(seen()) == 1 })
	if d := time.Since(start); d < 2*time.Second {
		t.Errorf("moved on after %v: want it to give the paused replica Wait plus 2 s slack first", d)
	}
	if got := seen(); got[0] != 2 {
		t.Errorf("view %v, want index 2", got)
	}
}

// TestWatchWaitsForManagersToBeKnown: with no replica known yet the
// watcher waits, then follows the first one that appears.
func TestWatchWaitsForManagersToBeKnown(t *testing.T) {
	s := &scripted{answers: []answer{{index: 3}}}
	srv := httptest.NewServer(s)
	t.Cleanup(srv.Close) // after the watcher stops
	var (
		known atomic.Bool
		asked atomic.Int32
	)
	seen := watcher(t, pool.WatchConfig{Managers: func() []string {
		asked.Add(1)
		if known.Load() {
			return []string{srv.URL}
		}
		return nil
	}, Wait: 200 * time.Millisecond, Backoff: 10 * time.Millisecond, MaxBackoff: 20 * time.Millisecond})
	waitfor.True(t, 10*time.Second, "the watcher to look for replicas again", func() bool { return asked.Load() >= 3 })
	if len(seen()) != 0 {
		t.Fatal("a view passed with no replica known")
	}
	known.Store(true)
	waitfor.True(t, 10*time.Second, "the first view once a replica is known", func() bool { return len(seen()) == 1 })
}
