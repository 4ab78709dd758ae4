package node

import (
	"log/slog"
	"testing"

	"github.com/memcache/memcache/internal/pool"
)

func TestApplyPoolFollowsRegionsConfigAndGenerations(t *testing.T) {
	n, err := New(Config{ID: "a"}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	st := pool.View{Cache: pool.CacheConfig{CapacityMB: 64, Policy: pool.LRU}}
	st.Index, st.Epoch = 3, 1
	st.Members = []pool.Member{{ID: "a", HTTP: "http://a"}, {ID: "b", HTTP: "http://b"}}
	for r := range st.Regions {
		st.Regions[r], st.Since[r] = []string{"a", "b"}[r%2], 1
	}
	st.Cache = pool.CacheConfig{CapacityMB: 32, Policy: "RR"}
	n.ApplyPool(st)
	if got := n.Cache().Config(); got != (pool.CacheConfig{CapacityMB: 32, Policy: pool.RR}) {
		t.Errorf("cache config %+v, want {32 RR}", got)
	}
	if got := n.Regions(); got.Epoch != 1 || got.Owners != st.Regions {
		t.Errorf("regions %+v, want epoch 1 and the pool's owners", got)
	}
	for r := 0; r < 16; r++ {
		if n.Cache().Owns(r) != (r%2 == 0) {
			t.Errorf("owns region %d = %v, want %v", r, n.Cache().Owns(r), r%2 == 0)
		}
	}
	// Fill the owned regions (every Put must succeed, so each count below
	// is exact), then raise each generation in turn.
	const perRegion = 3
	fill := func() {
		t.Helper()
		for r := 0; r < 16; r += 2 {
			for _, k := range keysIn(r, perRegion) {
				if err := n.Cache().Put(k, Item{Value: []byte("v")}); err != nil {
					t.Fatalf("put %q (region %d, owned): %v", k, r, err)
				}
			}
		}
		if got := n.Cache().Len(); got != 8*perRegion {
			t.Fatalf("%d items cached after the fill, want %d", got, 8*perRegion)
		}
	}
	if err := n.Cache().Put(keysIn(1, 1)[0], Item{Value: []byte("v")}); err == nil {
		t.Error("put into region 1, owned by b: accepted, want refused")
	}
	fill()
	st.Index++
	n.ApplyPool(st) // same generations: nothing cleared
	if got := n.Cache().Len(); got != 8*perRegion {
		t.Fatalf("same generations: %d items left, want %d (nothing cleared)", got, 8*perRegion)
	}
	st.Index, st.ClearGen = st.Index+1, 1
	n.ApplyPool(st)
	if n.Cache().Len() != 0 {
		t.Fatalf("clear generation 1: %d items left, want 0", n.Cache().Len())
	}
	fill()
	st.Index, st.DeleteGen = st.Index+1, 4 // a node that was away sees a jump
	n.ApplyPool(st)
	if n.Cache().Len() != 0 {
		t.Fatalf("delete generation 4: %d items left, want 0", n.Cache().Len())
	}
	fill()
	// A view with older generations (from a lagging replica) clears nothing.
	old := st
	old.ClearGen, old.DeleteGen = 0, 3
	n.ApplyPool(old)
	if got := n.Cache().Len(); got != 8*perRegion {
		t.Fatalf("older generations: %d items left, want %d (nothing cleared)", got, 8*perRegion)
	}
	// Nor does the current view again after it: the node remembers the
	// newest generations it acted on, not the last it saw.
	st.Index++
	n.ApplyPool(st)
	if got := n.Cache().Len(); got != 8*perRegion {
		t.Fatalf("the current view after an older one: %d items left, want %d (nothing cleared)", got, 8*perRegion)
	}
	st.Index, st.ClearGen = st.Index+1, 2 // only the clear generation moves
	n.ApplyPool(st)
	if n.Cache().Len() != 0 {
		t.Fatalf("clear generation 2 after delete generation 4: %d items left, want 0", n.Cache().Len())
	}
	// A view with no pool yet (epoch 0) leaves the region map alone.
	older := st
	older.Epoch = 0
	for r := range older.Regions {
		older.Regions[r] = "b"
	}
	n.ApplyPool(older)
	if got := n.Regions(); got.Epoch != 1 || !n.Cache().Owns(0) {
		t.Fatalf("after an older region map: epoch %d, owns region 0 %v; want epoch 1, owned", got.Epoch, n.Cache().Owns(0))
	}
	// A node that is not a pool member owns nothing.
	st.Index, st.Epoch = st.Index+1, 2
	for r := range st.Regions {
		st.Regions[r], st.Since[r] = "b", 2
	}
	st.Members = st.Members[1:]
	n.ApplyPool(st)
	for r := 0; r < 16; r++ {
		if n.Cache().Owns(r) {
			t.Fatalf("owns region %d after leaving the pool", r)
		}
	}
}
