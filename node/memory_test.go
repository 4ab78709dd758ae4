package node

import (
	"context"
	"log/slog"
	"math"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/memcache/memcache/internal/pool"
	"github.com/memcache/memcache/internal/waitfor"
)

const mib = 1 << 20

func TestMemoryLimit(t *testing.T) {
	for _, tc := range []struct {
		name           string
		capacity, live int64
		want           int64
	}{
		{"empty cache", 128 * mib, 0, 152 * mib},
		{"cache of 100 KB values filling", 128 * mib, 130 * mib, 152 * mib},
		{"full cache of 100 KB values", 128 * mib, 137 * mib, 137*mib + 137*mib/24 + 12*mib},
		{"largest capacity", 1024 * mib, 0, 1104 * mib},
		{"live heap above the allowance", 64 * mib, 200 * mib, 200*mib + 200*mib/24 + 12*mib},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := MemoryLimit(tc.capacity, tc.live); got != tc.want {
				t.Errorf("MemoryLimit(%d MiB, %d MiB) = %.2f MiB, want %.2f MiB", tc.capacity/mib, tc.live/mib,
					float64(got)/mib, float64(tc.want)/mib)
			}
		})
	}
}

// fakeLimit stands for the process's memory limit.
type fakeLimit struct {
	mu    sync.Mutex
	limit int64
	calls int
	onSet func(int64) // called with each new limit, under mu
}

func (f *fakeLimit) set(l int64) int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	prev := f.limit
	f.limit = l
	f.calls++
	if f.onSet != nil {
		f.onSet(l)
	}
	return prev
}

func (f *fakeLimit) get() (int64, int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.limit, f.calls
}

// TestMemoryGovernorFollowsCapacity: the limit is set as soon as the
// governor governs a cache, moves with every capacity change in the order
// that keeps the cache inside it (raised before the cache may grow,
// lowered after it has evicted), follows the live heap, and is restored
// when Run ends, after which capacity changes no longer move it.
func TestMemoryGovernorFollowsCapacity(t *testing.T) {
	c, err := NewCache(pool.CacheConfig{CapacityMB: 128, Policy: pool.LRU})
	if err != nil {
		t.Fatal(err)
	}
	var live atomic.Int64
	live.Store(10 * mib)
	fake := &fakeLimit{limit: math.MaxInt64}
	g := NewMemoryGovernor(MemoryGovernorConfig{Interval: 10 * time.Millisecond, SetLimit: fake.set, LiveHeap: live.Load},
		slog.New(slog.DiscardHandler))
	g.Govern(c)
	if l, _ := fake.get(); l != 152*mib {
		t.Fatalf("limit after Govern: got %d MiB, want 152 MiB", l/mib)
	}

	// Fill the cache, then grow it: the limit must be raised while the
	// cache still has its old capacity.
	value := []byte(strings.Repeat("x", 100<<10))
	for i := 0; c.Bytes()+int64(len(value)) <= c.Capacity(); i++ {
		if err := c.Put("k"+strconv.Itoa(i), Item{Value: value}); err != nil {
			t.Fatal(err)
		}
	}
	var capAtSet, bytesAtSet atomic.Int64
	fake.mu.Lock()
	fake.onSet = func(int64) { capAtSet.Store(c.Capacity()); bytesAtSet.Store(c.Bytes()) }
	fake.mu.Unlock()
	if err := c.SetConfig(pool.CacheConfig{CapacityMB: 256, Policy: pool.LRU}); err != nil {
		t.Fatal(err)
	}
	if l, _ := fake.get(); l != 288*mib {
		t.Fatalf("limit after growing to 256 MB: got %d MiB, want 288 MiB", l/mib)
	}
	if got := capAtSet.Load(); got != 128*mib {
		t.Errorf("growing: the limit was raised when the capacity was already %d MiB, want while it was still 128 MiB", got/mib)
	}

	// Shrink it: the limit must be lowered only once the cache fits.
	if err := c.SetConfig(pool.CacheConfig{CapacityMB: 16, Policy: pool.LRU}); err != nil {
		t.Fatal(err)
	}
	if l, _ := fake.get(); l != 16*mib+mib+16*mib {
		t.Fatalf("limit after shrinking to 16 MB: got %d MiB, want 33 MiB", l/mib)
	}
	if got := bytesAtSet.Load(); got > 16*mib {
		t.Errorf("shrinking: the limit was lowered while the cache still held %d bytes, want at most 16 MiB", got)
	}

	// A policy change alone leaves the limit alone.
	_, calls := fake.get()
	if err := c.SetConfig(pool.CacheConfig{CapacityMB: 16, Policy: pool.RR}); err != nil {
		t.Fatal(err)
	}
	if _, after := fake.get(); after != calls {
		t.Errorf("a policy change set the limit %d more times, want none", after-calls)
	}

	// The live heap moves the limit once Run reads it.
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() {
		defer close(done)
		g.Run(ctx, c)
	}()
	live.Store(400 * mib)
	want := int64(400*mib + 400*mib/24 + 12*mib)
	waitfor.True(t, 10*time.Second, "the limit to follow a live heap of 400 MiB", func() bool { l, _ := fake.get(); return l == want })

	// Run ends: the process's limit is restored and the cache no longer
	// moves it.
	cancel()
	<-done
	if l, _ := fake.get(); l != math.MaxInt64 {
		t.Errorf("limit after Run: got %d, want the previous one (%d)", l, int64(math.MaxInt64))
	}
	_, calls = fake.get()
	if err := c.SetConfig(pool.CacheConfig{CapacityMB: 64, Policy: pool.LRU}); err != nil {
		t.Fatal(err)
	}
	if _, after := fake.get(); after != calls {
		t.Errorf("after Run a capacity change set the limit %d times, want none", after-calls)
	}
}
