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
	// Fill the owned regions, then raise each generation in turn.
	fill := func() int {
		for i := range 50 {
			n.Cache().Put(keysIn(2*(i%8), 1)[0]+string(rune('a'+i%26)), Item{Value: []byte("v")})
		}
		return n.Cache().Len()
	}
	if fill() == 0 {
		t.Fatal("nothing cached")
	}
	st.Index++
	n.ApplyPool(st) // same generations: nothing cleared
	if n.Cache().Len() == 0 {
		t.Fatal("cache cleared without a new generation")
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
