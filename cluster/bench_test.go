package cluster

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/memcache/memcache/fsm"
	"github.com/memcache/memcache/internal/waitfor"
)

// BenchmarkWatchLatency measures the time from a committed pool change (the
// leader's Apply returning) to every one of 10 watchers, spread over the 3
// replicas, having received it, with the Raft timings managers ship with.
func BenchmarkWatchLatency(b *testing.B) {
	tc := newTestClusterTiming(b, 3, DefaultTiming())
	l := tc.leader()
	var ws []*watcher
	for i := range 10 {
		ws = append(ws, startWatcher(b, tc, tc.replicas[i%3]))
	}
	const changes = 200
	var lat []time.Duration
	b.ResetTimer()
	for range b.N {
		for i := range changes {
			res := mustApply(b, l, fsm.SetCache{Config: fsm.CacheConfig{CapacityMB: 1 + i%1000, Policy: "LRU"}})
			committed := time.Now()
			var last time.Time
			for _, w := range ws {
				waitfor.True(b, 5*time.Second, "a watcher to get the change", func() bool {
					w.mu.Lock()
					defer w.mu.Unlock()
					at, ok := w.at[res.Index]
					if ok && at.After(last) {
						last = at
					}
					return ok
				})
			}
			lat = append(lat, max(last.Sub(committed), 0))
		}
	}
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
	b.ReportMetric(float64(lat[len(lat)-1].Microseconds())/1000, "max-ms")
}

// BenchmarkLeaderFailover cuts the leader off from the others (as a crash
// would look to them) and measures the time until a write sent to a
// surviving replica is accepted, with the Raft timings managers ship with.
func BenchmarkLeaderFailover(b *testing.B) {
	tc := newTestClusterTiming(b, 3, DefaultTiming())
	var times []time.Duration
	for i := range b.N {
		_ = i
		for round := range 10 {
			l := tc.leader()
			var other *replica
			for _, r := range tc.running() {
				if r != l {
					other = r
				}
			}
			cut := time.Now()
			tc.isolate(l, true)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			_, err := other.c.Apply(ctx, fsm.SetCache{Config: fsm.CacheConfig{CapacityMB: 100 + round, Policy: "LRU"}})
			cancel()
			if err != nil {
				b.Fatal(err)
			}
			times = append(times, time.Since(cut))
			tc.isolate(l, false)
			tc.converged(fmt.Sprint("capacity ", 100+round), cacheIs(100+round, "LRU"))
		}
	}
	slices.Sort(times)
	b.ReportMetric(float64(times[len(times)/2].Milliseconds()), "p50-ms")
	b.ReportMetric(float64(times[len(times)-1].Milliseconds()), "max-ms")
}
