package node

import (
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/memcache/memcache/internal/pool"
	"github.com/memcache/memcache/region"
)

// checkInvariants walks every shard and fails the test unless the structures
// agree with each other and with the byte and item totals.
func checkInvariants(t *testing.T, c *Cache) {
	t.Helper()
	c.writeMu.Lock()
	defer c.writeMu.Unlock()
	var bytes int64
	items := 0
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.Lock()
		n := 0
		var last uint64 = ^uint64(0)
		for e := s.head.next; e != &s.head; e = e.next {
			if e.stamp >= last {
				t.Errorf("shard %d: LRU list not ordered by stamp", i)
			}
			last = e.stamp
			if s.items[e.key] != e {
				t.Errorf("shard %d: list entry %q not in map", i, e.key)
			}
			n++
		}
		if n != len(s.items) || n != len(s.all) {
			t.Errorf("shard %d: list %d, map %d, slice %d entries", i, n, len(s.items), len(s.all))
		}
		for j, e := range s.all {
			if e.idx != j {
				t.Errorf("shard %d: entry %q idx %d at %d", i, e.key, e.idx, j)
			}
			bytes += int64(len(e.item.Value))
			if !c.Owns(int(e.region)) {
				t.Errorf("entry %q of unowned region %d", e.key, e.region)
			}
		}
		items += n
		s.mu.Unlock()
	}
	if bytes != c.Bytes() {
		t.Errorf("Bytes() = %d, entries hold %d", c.Bytes(), bytes)
	}
	if items != c.Len() {
		t.Errorf("Len() = %d, entries %d", c.Len(), items)
	}
	if bytes > c.Capacity() {
		t.Errorf("bytes %d > capacity %d", bytes, c.Capacity())
	}
}

func mustCache(t *testing.T, mb int, p pool.Policy) *Cache {
	t.Helper()
	c, err := NewCache(pool.CacheConfig{CapacityMB: mb, Policy: p})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func val(n int, b byte) Item {
	v := make([]byte, n)
	v[0], v[n-1] = b, b
	return Item{Value: v}
}

func present(c *Cache, keys ...string) map[string]bool {
	out := map[string]bool{}
	for _, k := range keys {
		s := c.shardOf(k)
		s.mu.Lock()
		_, ok := s.items[k]
		s.mu.Unlock()
		out[k] = ok
	}
	return out
}

// 1 MB holds ten 100 KiB values (10 × 102400 = 1,024,000 ≤ 1,048,576) but not eleven.
const tenth = 100 << 10

func TestLRUEvictsExactlyLeastRecentlyUsed(t *testing.T) {
	c := mustCache(t, 1, pool.LRU)
	keys := make([]string, 0, 16)
	for i := range 10 {
		k := fmt.Sprintf("k%d", i)
		keys = append(keys, k)
		if err := c.Put(k, val(tenth, byte(i))); err != nil {
			t.Fatal(err)
		}
	}
	// Touch k0, k3, k5 (in that order) and rewrite k7: recency order, oldest first,
	// is now k1 k2 k4 k6 k8 k9 k0 k3 k5 k7.
	for _, k := range []string{"k0", "k3", "k5"} {
		if _, ok, _ := c.Get(k); !ok {
			t.Fatalf("Get(%s) missed", k)
		}
	}
	if err := c.Put("k7", val(tenth, 77)); err != nil {
		t.Fatal(err)
	}
	// A miss does not change recency.
	if _, ok, _ := c.Get("absent"); ok {
		t.Fatal("Get(absent) hit")
	}
	wantEvicted := []string{"k1", "k2", "k4", "k6", "k8", "k9", "k0", "k3", "k5", "k7"}
	for i, want := range wantEvicted {
		k := fmt.Sprintf("n%d", i)
		keys = append(keys, k)
		if err := c.Put(k, val(tenth, 0xEE)); err != nil {
			t.Fatal(err)
		}
		if present(c, want)[want] {
			t.Fatalf("after Put(%s): %s still cached, want it evicted", k, want)
		}
		if got := c.Len(); got != 10 {
			t.Fatalf("after Put(%s): Len() = %d, want 10", k, got)
		}
		checkInvariants(t, c)
	}
	if got := c.evictions.Load(); got != 10 {
		t.Errorf("evictions = %d, want 10", got)
	}
}

func TestLRUOneLargeValueEvictsSeveral(t *testing.T) {
	c := mustCache(t, 1, pool.LRU)
	for i := range 10 {
		c.Put(fmt.Sprintf("k%d", i), val(tenth, 1))
	}
	c.Get("k0")
	// 350 KiB needs four 100 KiB slots freed beyond the 48 KiB spare: k1..k3 free
	// 300 KiB + 48 KiB spare = 348 KiB < 350 KiB, so k4 goes too.
	if err := c.Put("big", val(350<<10, 2)); err != nil {
		t.Fatal(err)
	}
	p := present(c, "k0", "k1", "k2", "k3", "k4", "k5", "big")
	for k, want := range map[string]bool{"k0": true, "k1": false, "k2": false, "k3": false, "k4": false, "k5": true, "big": true} {
		if p[k] != want {
			t.Errorf("%s cached = %v, want %v", k, p[k], want)
		}
	}
	checkInvariants(t, c)
}

func TestRREvictsUniformly(t *testing.T) {
	c := mustCache(t, 1, pool.RR)
	const n, trials = 10, 10000
	for i := range n {
		c.Put(fmt.Sprintf("k%d", i), val(tenth, byte(i)))
	}
	counts := make([]int, n)
	for range trials {
		if err := c.Put("x", val(tenth, 0xFF)); err != nil {
			t.Fatal(err)
		}
		evicted := -1
		for i := range n {
			k := fmt.Sprintf("k%d", i)
			if !present(c, k)[k] {
				if evicted >= 0 {
					t.Fatalf("two entries evicted for one put")
				}
				evicted = i
			}
		}
		if evicted < 0 {
			t.Fatal("no entry evicted")
		}
		counts[evicted]++
		c.Delete("x")
		c.Put(fmt.Sprintf("k%d", evicted), val(tenth, byte(evicted)))
		// Recency must not matter to RR: keep touching k0.
		c.Get("k0")
	}
	// Pearson chi-square with n-1 = 9 degrees of freedom. The critical value for
	// p = 0.001 is 27.88: a uniform choice fails this test once in a thousand runs.
	expected := float64(trials) / n
	chi2 := 0.0
	for _, got := range counts {
		d := float64(got) - expected
		chi2 += d * d / expected
	}
	t.Logf("eviction counts %v, chi2 = %.2f", counts, chi2)
	if chi2 > 27.88 {
		t.Errorf("chi2 = %.2f > 27.88 (p=0.001, 9 df): evictions %v are not uniform", chi2, counts)
	}
	checkInvariants(t, c)
}

func TestBytesNeverExceedCapacityUnderConcurrentPuts(t *testing.T) {
	for _, p := range []pool.Policy{pool.LRU, pool.RR} {
		t.Run(string(p), func(t *testing.T) {
			c := mustCache(t, 2, p)
			var stop atomic.Bool
			var maxSeen atomic.Int64
			var monitor sync.WaitGroup
			monitor.Add(1)
			go func() {
				defer monitor.Done()
				for !stop.Load() {
					if b := c.Bytes(); b > maxSeen.Load() {
						maxSeen.Store(b)
					}
				}
			}()
			var wg sync.WaitGroup
			for g := range 16 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					r := rand.New(rand.NewPCG(uint64(g), 1))
					for range 1500 {
						k := fmt.Sprintf("key-%d", r.IntN(300))
						switch op := r.IntN(10); {
						case op < 5:
							if err := c.Put(k, val(1+r.IntN(200<<10), byte(g))); err != nil {
								t.Error(err)
								return
							}
						case op < 9:
							c.Get(k)
						default:
							c.Delete(k)
						}
					}
				}()
			}
			wg.Wait()
			stop.Store(true)
			monitor.Wait()
			if m := maxSeen.Load(); m > c.Capacity() {
				t.Errorf("byte total reached %d > capacity %d", m, c.Capacity())
			}
			checkInvariants(t, c)
		})
	}
}

func TestLiveConfigChangesKeepInvariants(t *testing.T) {
	c := mustCache(t, 4, pool.LRU)
	for i := range 40 {
		c.Put(fmt.Sprintf("k%d", i), val(tenth, byte(i)))
	}
	before := c.Len()
	// Switching the policy keeps every entry.
	if err := c.SetConfig(pool.CacheConfig{CapacityMB: 4, Policy: pool.RR}); err != nil {
		t.Fatal(err)
	}
	if c.Len() != before {
		t.Fatalf("policy switch: Len() = %d, want %d", c.Len(), before)
	}
	checkInvariants(t, c)

	var wg sync.WaitGroup
	var stop atomic.Bool
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; !stop.Load(); i++ {
				k := fmt.Sprintf("g%d-%d", g, i%50)
				c.Put(k, val(1+(i*7919)%(150<<10), 1))
				c.Get(fmt.Sprintf("k%d", i%40))
			}
		}()
	}
	for i := range 20 {
		cfg := pool.CacheConfig{CapacityMB: 4 - i%4, Policy: []pool.Policy{pool.LRU, pool.RR}[i%2]}
		if err := c.SetConfig(cfg); err != nil {
			t.Fatal(err)
		}
		if c.Bytes() > c.Capacity() {
			t.Fatalf("after SetConfig(%+v): bytes %d > capacity %d", cfg, c.Bytes(), c.Capacity())
		}
	}
	// Shrinking LRU keeps the most recent entries.
	stop.Store(true)
	wg.Wait()
	c.Clear()
	c.SetConfig(pool.CacheConfig{CapacityMB: 2, Policy: pool.LRU})
	for i := range 20 {
		c.Put(fmt.Sprintf("k%d", i), val(tenth, byte(i)))
	}
	if err := c.SetConfig(pool.CacheConfig{CapacityMB: 1, Policy: pool.LRU}); err != nil {
		t.Fatal(err)
	}
	for i := range 20 {
		k := fmt.Sprintf("k%d", i)
		if got, want := present(c, k)[k], i >= 10; got != want {
			t.Errorf("after shrink to 1 MB: %s cached = %v, want %v", k, got, want)
		}
	}
	checkInvariants(t, c)
}

func TestCacheRejectsBadInput(t *testing.T) {
	c := mustCache(t, 1, pool.LRU)
	c.Put("keep", val(10, 1))
	if err := c.Put("", val(1, 1)); err != ErrEmptyKey {
		t.Errorf("Put empty key: got %v, want ErrEmptyKey", err)
	}
	if err := c.Put("huge", val(1<<20+1, 1)); err == nil {
		t.Error("Put of capacity+1 bytes: got nil error, want ErrTooLarge")
	}
	if _, ok, _ := c.Get("huge"); ok {
		t.Error("oversize value was cached")
	}
	for _, cfg := range []pool.CacheConfig{{CapacityMB: 0, Policy: pool.LRU}, {CapacityMB: 1025, Policy: pool.LRU}, {CapacityMB: -1, Policy: pool.RR}, {CapacityMB: 8, Policy: "FIFO"}, {CapacityMB: 8, Policy: ""}} {
		if err := c.SetConfig(cfg); err == nil {
			t.Errorf("SetConfig(%+v): got nil, want error", cfg)
		}
	}
	if got := c.Config(); got != (pool.CacheConfig{CapacityMB: 1, Policy: pool.LRU}) {
		t.Errorf("config after bad input = %+v, want {1 LRU}", got)
	}
	if c.Len() != 1 || c.Bytes() != 10 {
		t.Errorf("after bad input: Len %d Bytes %d, want 1 and 10", c.Len(), c.Bytes())
	}
	if _, err := NewCache(pool.CacheConfig{CapacityMB: 2000, Policy: pool.LRU}); err == nil {
		t.Error("NewCache with 2000 MB: got nil error")
	}
}

func TestSetOwnedDropsLostRegions(t *testing.T) {
	c := mustCache(t, 8, pool.LRU)
	keysByRegion := map[int][]string{}
	for i := 0; i < 400; i++ {
		k := fmt.Sprintf("img-%d", i)
		keysByRegion[region.Of(k)] = append(keysByRegion[region.Of(k)], k)
		c.Put(k, val(100, 1))
	}
	// Keep even regions; reset region 2 (lost and regained meanwhile).
	var mask uint16
	for r := 0; r < region.Count; r += 2 {
		mask |= 1 << r
	}
	dropped := c.SetOwned(mask, 1<<2)
	want := 0
	for r, ks := range keysByRegion {
		if r%2 == 1 || r == 2 {
			want += len(ks)
		}
	}
	if dropped != want {
		t.Errorf("dropped %d, want %d", dropped, want)
	}
	for r, ks := range keysByRegion {
		for _, k := range ks {
			_, ok, err := c.Get(k)
			switch {
			case r%2 == 1 && err != ErrNotOwner:
				t.Fatalf("Get(%s) in lost region %d: err %v, want ErrNotOwner", k, r, err)
			case r == 2 && ok:
				t.Fatalf("Get(%s) in reset region 2 hit", k)
			case r%2 == 0 && r != 2 && !ok:
				t.Fatalf("Get(%s) in kept region %d missed", k, r)
			}
			if r%2 == 1 {
				if err := c.Put(k, val(1, 1)); err != ErrNotOwner {
					t.Fatalf("Put(%s) in lost region: got %v, want ErrNotOwner", k, err)
				}
			}
		}
	}
	checkInvariants(t, c)
}
