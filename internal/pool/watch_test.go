package pool_test

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/memcache/memcache/fsm"
	"github.com/memcache/memcache/internal/pool"
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
