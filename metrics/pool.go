package metrics

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/memcache/memcache/fsm"
	"github.com/memcache/memcache/node"
)

// Totals are summed counts over a window.
type Totals struct {
	Hits     uint64 `json:"hits"`
	Misses   uint64 `json:"misses"`
	Gets     uint64 `json:"gets"`
	Requests uint64 `json:"requests"`
	Items    int64  `json:"items"` // at the end of the window
	Bytes    int64  `json:"bytes"` // at the end of the window
	Nodes    int    `json:"nodes"` // nodes that answered
}

// MissRate is misses/GETs; ok is false when there were no GETs (no rate).
func (t Totals) MissRate() (rate float64, ok bool) {
	if t.Gets == 0 {
		return 0, false
	}
	return float64(t.Misses) / float64(t.Gets), true
}

// HitRate is hits/GETs; ok is false when there were no GETs.
func (t Totals) HitRate() (rate float64, ok bool) {
	if t.Gets == 0 {
		return 0, false
	}
	return float64(t.Hits) / float64(t.Gets), true
}

// Add sums the samples of one node into t: counts over the window, and
// occupancy from the latest sample.
func (t *Totals) Add(samples []node.Sample) {
	var last *node.Sample
	for i := range samples {
		s := &samples[i]
		t.Hits += s.Hits
		t.Misses += s.Misses
		t.Gets += s.Gets
		t.Requests += s.Requests
		last = s
	}
	if last != nil {
		t.Items += last.Items
		t.Bytes += last.Bytes
	}
	t.Nodes++
}

// Window asks every member's /stats, through nodes, for the samples that
// ended after since and sums them; each node has windowTimeout to answer.
// Members that do not answer are left out (and reported in err, which is
// informational: the totals of the others are still valid).
func Window(ctx context.Context, nodes *node.Client, members []fsm.Member, since time.Time) (Totals, error) {
	ctx, cancel := context.WithTimeout(ctx, windowTimeout)
	defer cancel()
	var (
		mu   sync.Mutex
		t    Totals
		errs []error
		wg   sync.WaitGroup
	)
	for _, m := range members {
		wg.Add(1)
		go func() {
			defer wg.Done()
			st, err := nodes.Stats(ctx, m.HTTP, since)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", m.ID, err))
				return
			}
			t.Add(st.Samples)
		}()
	}
	wg.Wait()
	if len(errs) > 0 {
		return t, fmt.Errorf("metrics: %d of %d nodes did not answer: %v", len(errs), len(members), errs)
	}
	return t, nil
}

// windowTimeout bounds each node's answer to Window.
const windowTimeout = 3 * time.Second
