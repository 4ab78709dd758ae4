package node

import (
	"context"
	"sync"
	"time"
)

// Counters are a node's cumulative statistics since it started, with the
// cache's current occupancy. Definitions follow DESIGN §5: Gets = Hits +
// Misses; Requests counts every cache request served (get, put, invalidate,
// clear).
type Counters struct {
	Hits     uint64 `json:"hits"`
	Misses   uint64 `json:"misses"`
	Gets     uint64 `json:"gets"`
	Requests uint64 `json:"requests"`
	Items    int64  `json:"items"`
	Bytes    int64  `json:"bytes"`
}

// Sample is the activity of one sampling interval: counts are deltas over
// [Start, End), Items and Bytes are the occupancy at End.
type Sample struct {
	Start    time.Time `json:"start"`
	End      time.Time `json:"end"`
	Hits     uint64    `json:"hits"`
	Misses   uint64    `json:"misses"`
	Gets     uint64    `json:"gets"`
	Requests uint64    `json:"requests"`
	Items    int64     `json:"items"`
	Bytes    int64     `json:"bytes"`
}

// sampler turns cumulative counters into a bounded history of samples.
type sampler struct {
	read     func() Counters
	interval time.Duration
	now      func() time.Time

	mu      sync.Mutex // guards the fields below
	last    Counters
	lastAt  time.Time
	samples []Sample // oldest first, at most keep
	keep    int
}

func newSampler(read func() Counters, interval time.Duration, keep int, now func() time.Time) *sampler {
	return &sampler{read: read, interval: interval, keep: keep, now: now, last: read(), lastAt: now()}
}

// sample records the activity since the previous sample and returns it.
func (s *sampler) sample() Sample {
	c := s.read()
	at := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	smp := Sample{
		Start:    s.lastAt,
		End:      at,
		Hits:     c.Hits - s.last.Hits,
		Misses:   c.Misses - s.last.Misses,
		Gets:     c.Gets - s.last.Gets,
		Requests: c.Requests - s.last.Requests,
		Items:    c.Items,
		Bytes:    c.Bytes,
	}
	s.last, s.lastAt = c, at
	if len(s.samples) == s.keep {
		copy(s.samples, s.samples[1:])
		s.samples = s.samples[:len(s.samples)-1]
	}
	s.samples = append(s.samples, smp)
	return smp
}

// history returns the recorded samples taken after since, oldest first.
func (s *sampler) history(since time.Time) []Sample {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Sample, 0, len(s.samples))
	for _, smp := range s.samples {
		if smp.End.After(since) {
			out = append(out, smp)
		}
	}
	return out
}

// run samples every interval until ctx is done.
func (s *sampler) run(ctx context.Context) {
	t := time.NewTicker(s.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.sample()
		}
	}
}
