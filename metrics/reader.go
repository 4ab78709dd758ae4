package metrics

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Point is one minute of pool activity.
type Point struct {
	Time     time.Time `json:"time"`  // start of the minute, UTC
	Nodes    int       `json:"nodes"` // pool size at the end of the minute (last known)
	Gets     uint64    `json:"gets"`
	Hits     uint64    `json:"hits"`
	Misses   uint64    `json:"misses"`
	Requests uint64    `json:"requests"`
	Items    int64     `json:"items"`     // pool total at the end of the minute
	Bytes    int64     `json:"bytes"`     // pool total at the end of the minute
	MissRate *float64  `json:"miss_rate"` // misses/gets from summed counts; nil when gets == 0
	HitRate  *float64  `json:"hit_rate"`  // hits/gets; nil when gets == 0
}

// Reader is what the UI and the auto-scaler read; both backends implement it.
type Reader interface {
	// History returns exactly `minutes` points, oldest first, the last being
	// the (partial) minute containing now; minutes with no data have zero
	// counts and nil rates and carry forward the last known Nodes/Items/Bytes.
	History(ctx context.Context, now time.Time, minutes int) ([]Point, error)
	// Totals sums the pool's counts over (now-window, now] (sample
	// granularity: a sample counts if its End is in the window); Items/Bytes
	// from each node's latest sample.
	Totals(ctx context.Context, now time.Time, window time.Duration) (Totals, error)
}

// MaxMinutes is the longest History a Reader answers (one day).
const MaxMinutes = 24 * 60

// Errors returned by the Readers and the Publisher.
var (
	// ErrBadRange: History was asked for a number of minutes outside
	// 1..MaxMinutes, or Totals for a window that is not positive.
	ErrBadRange = errors.New("metrics: bad range")
	// ErrBackend: the metrics store (CloudWatch) could not be read or
	// written. The error wraps the SDK's as well.
	ErrBackend = errors.New("metrics: backend failed")
)

var (
	_ Reader = (*Embedded)(nil)
	_ Reader = (*CloudWatchReader)(nil)
)

func checkMinutes(minutes int) error {
	if minutes < 1 || minutes > MaxMinutes {
		return fmt.Errorf("%w: %d minutes, want 1..%d", ErrBadRange, minutes, MaxMinutes)
	}
	return nil
}

func checkWindow(window time.Duration) error {
	if window <= 0 {
		return fmt.Errorf("%w: window %s, want > 0", ErrBadRange, window)
	}
	return nil
}

// ratio is num/den, or nil when den is zero (no rate).
func ratio(num, den uint64) *float64 {
	if den == 0 {
		return nil
	}
	r := float64(num) / float64(den)
	return &r
}

// occupancy is one node's Items and Bytes.
type occupancy struct{ items, bytes int64 }

// minutes accumulates History's per-minute figures; both backends fill one
// and turn it into points the same way.
type minutes struct {
	first  time.Time              // start of the oldest minute, UTC
	counts []Totals               // Hits, Misses, Gets, Requests per minute
	occ    []map[string]occupancy // per minute: node id -> its last occupancy in the minute
	nodes  []int                  // pool size per minute, where known[i]
	known  []bool
}

// newMinutes returns n empty minutes, the last containing now.
func newMinutes(now time.Time, n int) *minutes {
	last := now.UTC().Truncate(time.Minute)
	return &minutes{
		first:  last.Add(-time.Duration(n-1) * time.Minute),
		counts: make([]Totals, n),
		occ:    make([]map[string]occupancy, n),
		nodes:  make([]int, n),
		known:  make([]bool, n),
	}
}

// end is the end of the newest minute.
func (m *minutes) end() time.Time { return m.first.Add(time.Duration(len(m.counts)) * time.Minute) }

// index returns the minute containing t.
func (m *minutes) index(t time.Time) (int, bool) {
	if t.Before(m.first) || !t.Before(m.end()) {
		return 0, false
	}
	return int(t.Sub(m.first) / time.Minute), true
}

// setOccupancy records id's occupancy in minute i (a later call wins).
func (m *minutes) setOccupancy(i int, id string, o occupancy) {
	if m.occ[i] == nil {
		m.occ[i] = make(map[string]occupancy)
	}
	m.occ[i][id] = o
}

// nodesFromPresence sets the pool size of each minute whose size is not
// known to the number of nodes that reported in it, if any did.
func (m *minutes) nodesFromPresence() {
	for i, occ := range m.occ {
		if !m.known[i] && len(occ) > 0 {
			m.nodes[i], m.known[i] = len(occ), true
		}
	}
}

// points turns the minutes into History's answer. current is the pool's
// membership now: in the newest minute, a current member without data yet
// keeps its occupancy of the previous minute.
func (m *minutes) points(current map[string]bool) []Point {
	n := len(m.counts)
	if n > 1 {
		for id, o := range m.occ[n-2] {
			if _, ok := m.occ[n-1][id]; !ok && current[id] {
				m.setOccupancy(n-1, id, o)
			}
		}
	}
	pts := make([]Point, n)
	var (
		nodes        int
		items, bytes int64
	)
	for i := range pts {
		if len(m.occ[i]) > 0 {
			items, bytes = 0, 0
			for _, o := range m.occ[i] {
				items += o.items
				bytes += o.bytes
			}
		}
		if m.known[i] {
			nodes = m.nodes[i]
		}
		c := m.counts[i]
		pts[i] = Point{
			Time:     m.first.Add(time.Duration(i) * time.Minute),
			Nodes:    nodes,
			Gets:     c.Gets,
			Hits:     c.Hits,
			Misses:   c.Misses,
			Requests: c.Requests,
			Items:    items,
			Bytes:    bytes,
			MissRate: ratio(c.Misses, c.Gets),
			HitRate:  ratio(c.Hits, c.Gets),
		}
	}
	return pts
}
