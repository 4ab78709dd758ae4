package pool_test

import (
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/memcache/memcache/fsm"
	"github.com/memcache/memcache/internal/pool"
	"github.com/memcache/memcache/internal/waitfor"
)

// TestLeasedWatchRenewsWithEveryConsistentAnswer: a leased replica grants
// its lease only on consistent answers, caps the wait at a quarter of the
// lease, and a watcher with OnLease makes every request a consistent one
// and is renewed after it holds the answer's view, counted from before it
// sent the request; each renewal arrives while the one before still holds.
func TestLeasedWatchRenewsWithEveryConsistentAnswer(t *testing.T) {
	src := &source{f: fsm.New()}
	src.apply(t, fsm.SetCache{Config: pool.CacheConfig{CapacityMB: 10, Policy: pool.LRU}})
	const lease = 2 * time.Second
	srv := httptest.NewServer(pool.LeasedHandler(src, lease))
	defer srv.Close()

	// The header: on consistent answers only; the wait capped at lease/4.
	for _, c := range []struct {
		query string
		lease string
	}{{"?index=1&wait=1m&consistent=1", lease.String()}, {"?index=1&wait=1m", ""}} {
		start := time.Now()
		resp, err := http.Get(srv.URL + c.query)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if got := resp.Header.Get(pool.HeaderLease); got != c.lease {
			t.Errorf("%s: lease header %q, want %q", c.query, got, c.lease)
		}
		if d := time.Since(start); d > 30*time.Second {
			t.Errorf("%s: the 1-minute wait was not capped at lease/4 (took %v)", c.query, d)
		}
	}

	type renewal struct {
		sent, at time.Time // request sent; renewal received
		lease    time.Duration
		viewSeen int
	}
	var (
		mu       sync.Mutex
		views    int
		renewals []renewal
	)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	before := time.Now()
	go func() {
		defer close(done)
		pool.Watch(ctx, pool.WatchConfig{Managers: func() []string { return []string{srv.URL} }, Wait: time.Minute,
			OnLease: func(sent time.Time, l time.Duration) {
				mu.Lock()
				renewals = append(renewals, renewal{sent, time.Now(), l, views})
				mu.Unlock()
			}}, slog.New(slog.DiscardHandler), func(pool.View) {
			mu.Lock()
			views++
			mu.Unlock()
		})
	}()
	defer func() { cancel(); <-done }()
	// With no change, the watch still renews about every lease/4.
	waitfor.True(t, 30*time.Second, "four renewals", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(renewals) >= 4
	})
	mu.Lock()
	first := renewals[0]
	// No gap: each renewal arrives before the lease it renews ends (with a
	// wait of lease/2, every renewal came a barrier and two round trips
	// late). The margin is half the lease, 1 s.
	for i := 1; i < len(renewals); i++ {
		prev, cur := renewals[i-1], renewals[i]
		if end := prev.sent.Add(prev.lease); !cur.at.Before(end) {
			t.Errorf("renewal %d arrived %v after renewal %d's lease ended: the watcher was unleased", i, cur.at.Sub(end), i-1)
		}
	}
	mu.Unlock()
	if first.lease != lease || first.sent.Before(before) || first.viewSeen != 1 {
		t.Errorf("first renewal %+v: want lease %v, sent after the watch began, after the first view", first, lease)
	}
	src.mu.Lock()
	consistent := src.consistent
	src.mu.Unlock()
	if consistent < 4 { // the header checks' one, and one per renewal
		t.Errorf("consistent reads: %d, want every leased request to be one", consistent)
	}
}
