package metrics

import (
	"testing"
	"time"

	"github.com/memcache/memcache/node"
)

// TestTotalsRatesAreFromSummedCounts: two nodes' samples are summed into
// one set of counts, and the rates are ratios of the sums (not averages of
// each node's rate); with no GETs there is no rate.
func TestTotalsRatesAreFromSummedCounts(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	var tot Totals
	// Node a: 1 miss in 4 GETs over two samples; node b: 3 misses in 4.
	tot.Add([]node.Sample{
		{Start: t0, End: t0.Add(5 * time.Second), Hits: 2, Misses: 1, Gets: 3, Requests: 5, Items: 7, Bytes: 700},
		{Start: t0.Add(5 * time.Second), End: t0.Add(10 * time.Second), Hits: 1, Misses: 0, Gets: 1, Requests: 2, Items: 9, Bytes: 900},
	})
	tot.Add([]node.Sample{{Start: t0, End: t0.Add(5 * time.Second), Hits: 1, Misses: 3, Gets: 4, Requests: 4, Items: 1, Bytes: 100}})
	tot.Add(nil) // a node with no sample in the window
	want := Totals{Hits: 4, Misses: 4, Gets: 8, Requests: 11, Items: 10, Bytes: 1000, Nodes: 3}
	if tot != want {
		t.Fatalf("totals %+v, want %+v", tot, want)
	}
	if r, ok := tot.MissRate(); !ok || r != 0.5 {
		t.Errorf("MissRate() = %v, %v; want 0.5, true", r, ok)
	}
	if r, ok := tot.HitRate(); !ok || r != 0.5 {
		t.Errorf("HitRate() = %v, %v; want 0.5, true", r, ok)
	}
	skew := Totals{Hits: 3, Misses: 1, Gets: 4}
	if r, _ := skew.MissRate(); r != 0.25 {
		t.Errorf("MissRate of 1 in 4 = %v, want 0.25", r)
	}
	if r, _ := skew.HitRate(); r != 0.75 {
		t.Errorf("HitRate of 3 in 4 = %v, want 0.75", r)
	}
	var none Totals
	if r, ok := none.MissRate(); ok || r != 0 {
		t.Errorf("MissRate with no GETs = %v, %v; want 0, false", r, ok)
	}
	if r, ok := none.HitRate(); ok || r != 0 {
		t.Errorf("HitRate with no GETs = %v, %v; want 0, false", r, ok)
	}
}
