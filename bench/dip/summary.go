package main

import (
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/memcache/memcache/region"
)

// Record is one read of the load.
type Record struct {
	Due    time.Duration // when it was due, from the load's start (open loop: not when it was sent)
	Status int           // the HTTP status; 0 when there was no answer (connection error, timeout)
	Hit    bool          // a 200 with X-Memcache-Source: cache
	Bad    bool          // a 200 whose length, bytes or ETag differ from the upload
	// Response is the time from when the read was due to its answer (a
	// stall counts for every read due during it); 0 when there was none.
	Response time.Duration
}

// Second is one second of a scenario: the reads due in
// [resize request + Offset s, resize request + Offset+1 s).
type Second struct {
	Offset int
	OK     int // 200 answers with the right bytes
	Hits   int // of OK, those answered from the cache
	Errors int // not 200, or no answer
	Bad    int // 200 with wrong bytes (counted in neither OK nor Errors)
}

// HitRate returns Hits/OK, and false when the second has no 200 answer.
func (s Second) HitRate() (float64, bool) {
	if s.OK == 0 {
		return 0, false
	}
	return float64(s.Hits) / float64(s.OK), true
}

// Seconds sorts recs into the seconds from..to-1 around anchor (the resize
// request, as an offset from the load's start): second k holds the reads due
// in [anchor+k s, anchor+(k+1) s); second -1 is the one before the request.
// Reads due outside from..to-1 are left out.
func Seconds(recs []Record, anchor time.Duration, from, to int) []Second {
	if to < from {
		to = from
	}
	out := make([]Second, to-from)
	for i := range out {
		out[i].Offset = from + i
	}
	for _, r := range recs {
		// Floor, not truncation: a read due 0.5 s before the anchor is in
		// second -1, not 0.
		k := int(math.Floor(float64(r.Due-anchor) / float64(time.Second)))
		if k < from || k >= to {
			continue
		}
		s := &out[k-from]
		switch {
		case r.Status != 200:
			s.Errors++
		case r.Bad:
			s.Bad++
		default:
			s.OK++
			if r.Hit {
				s.Hits++
			}
		}
	}
	return out
}

// pooled returns the hit rate of the seconds in secs with Offset in
// [from, to), from their summed counts, and false if they have no 200 answer.
func pooled(secs []Second, from, to int) (float64, bool) {
	var ok, hits int
	for _, s := range secs {
		if s.Offset >= from && s.Offset < to {
			ok += s.OK
			hits += s.Hits
		}
	}
	if ok == 0 {
		return 0, false
	}
	return float64(hits) / float64(ok), true
}

// Window lengths of a Summary, in seconds.
const (
	BeforeWindow = 10 // the hit rate before: the 10 s before the resize request
	ShortAfter   = 5  // the first 5 s after it
	LongAfter    = 10 // the first 10 s after it
	// RecoveredWithin is how close (in points) to the hit rate before a
	// second must come for the pool to count as recovered.
	RecoveredWithin = 2.0
)

// Summary is one scenario's figures, from its seconds.
type Summary struct {
	Before   float64 // hit rate over the BeforeWindow seconds before the resize request
	MinAfter float64 // lowest 1-s hit rate from the request to the end of the window
	MinAt    int     // the second it was seen (0: the first after the request)
	After5   float64 // hit rate over the first ShortAfter seconds after the request
	After10  float64 // and over the first LongAfter
	// Dip is Before - MinAfter, in points (percent of reads).
	Dip float64
	// Recovery is the first second after the request from which every later
	// second of the window (with 200 answers) is within RecoveredWithin points
	// of Before, and every second has 200 answers; 0 if the rate never left
	// that band; -1 if it had not recovered by the end of the window.
	Recovery int
	// After is the length of the window after the request, in seconds.
	After                     int
	ErrorsBefore, ErrorsAfter int // failed reads in the window before and after the request
	// MissesAfter is the number of 200 answers not from the cache in the
	// window after the request: with a steady hit rate of 100 % before, what
	// the resize cost (a moved key misses on its first read after the move).
	MissesAfter int
	Bad         int // 200 answers with wrong bytes, over the whole window
	Reads       int // reads in the whole window
}

// Summarize computes a scenario's figures from its seconds (as Seconds
// returns them: negative offsets before the resize request, 0 and up after).
func Summarize(secs []Second) Summary {
	var sum Summary
	sum.Before, _ = pooled(secs, -BeforeWindow, 0)
	sum.After5, _ = pooled(secs, 0, ShortAfter)
	sum.After10, _ = pooled(secs, 0, LongAfter)
	sum.MinAfter, sum.MinAt = math.Inf(1), -1
	floor := sum.Before - RecoveredWithin/100
	sum.Recovery = 0
	for _, s := range secs {
		sum.Reads += s.OK + s.Errors + s.Bad
		sum.Bad += s.Bad
		if s.Offset < 0 {
			sum.ErrorsBefore += s.Errors
			continue
		}
		sum.After = max(sum.After, s.Offset+1)
		sum.ErrorsAfter += s.Errors
		sum.MissesAfter += s.OK - s.Hits
		rate, ok := s.HitRate()
		if ok && rate < sum.MinAfter {
			sum.MinAfter, sum.MinAt = rate, s.Offset
		}
		if !ok || rate < floor {
			sum.Recovery = s.Offset + 1 // not recovered yet in this second
		}
	}
	if sum.MinAt < 0 {
		sum.MinAfter = 0
	}
	if sum.Recovery >= sum.After && sum.After > 0 {
		sum.Recovery = -1
	}
	sum.Dip = (sum.Before - sum.MinAfter) * 100
	return sum
}

// Steady reports whether a warming load's seconds (oldest first, every one
// complete) show a steady hit rate: at least minSeconds of them, and the
// hit rate of the last 5 within half a point of that of the 5 before.
func Steady(secs []Second, minSeconds int) bool {
	n := len(secs)
	if n < max(minSeconds, 10) {
		return false
	}
	last, ok1 := pooledSlice(secs[n-5:])
	prev, ok2 := pooledSlice(secs[n-10 : n-5])
	return ok1 && ok2 && math.Abs(last-prev) <= 0.005
}

func pooledSlice(secs []Second) (float64, bool) {
	var ok, hits int
	for _, s := range secs {
		ok += s.OK
		hits += s.Hits
	}
	if ok == 0 {
		return 0, false
	}
	return float64(hits) / float64(ok), true
}

// ZipfWeights returns the share of reads each of n keys gets from the
// load's Zipf law: key i (0-based) is read with probability proportional
// to (1+i)^-skew, as math/rand's Zipf with v = 1 draws it.
func ZipfWeights(n int, skew float64) []float64 {
	w := make([]float64, n)
	var total float64
	for i := range w {
		w[i] = math.Pow(float64(1+i), -skew)
		total += w[i]
	}
	for i := range w {
		w[i] /= total
	}
	return w
}

// Moved returns how many regions change owner between two region maps and
// the share of reads (by weights, one per key) that go to those regions.
func Moved(before, after region.Map, keys []string, weights []float64) (regions int, share float64) {
	var moved [region.Count]bool
	for r := range region.Count {
		if before[r] != after[r] {
			moved[r] = true
			regions++
		}
	}
	for i, k := range keys {
		if moved[region.Of(k)] {
			share += weights[i]
		}
	}
	return regions, share
}

// Result is one scenario's outcome, for the report.
type Result struct {
	From, To     int
	Summary      Summary
	Seconds      []Second
	Warm         time.Duration // how long the warm-up took
	ResizeCall   time.Duration // resize request → its answer (the new map committed)
	MovedRegions int           // -1 when unknown (no pool view)
	MovedShare   float64       // share of the reads that go to the moved regions
}

func pct(v float64) string { return fmt.Sprintf("%.1f %%", v*100) }

// Table renders the results as a markdown table.
func Table(rs []Result) string {
	var b strings.Builder
	after := 0
	for _, r := range rs {
		after = max(after, r.Summary.After)
	}
	fmt.Fprintf(&b, "| resize | regions moved (reads) | hit rate, 10 s before | min 1-s after (at s) | mean 0–5 s after | mean 0–10 s after | dip (points) | recovered to within 2 points | misses in the %d s after | errors before / after | resize call |\n", after)
	b.WriteString("|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, r := range rs {
		s := r.Summary
		moved := "?"
		if r.MovedRegions >= 0 {
			moved = fmt.Sprintf("%d of 16 (%s)", r.MovedRegions, pct(r.MovedShare))
		}
		rec := fmt.Sprintf("%d s", s.Recovery)
		if s.Recovery < 0 {
			rec = fmt.Sprintf("not within %d s", s.After)
		}
		fmt.Fprintf(&b, "| %d → %d | %s | %s | %s (%d) | %s | %s | %.1f | %s | %d | %d / %d | %s |\n",
			r.From, r.To, moved, pct(s.Before), pct(s.MinAfter), s.MinAt, pct(s.After5), pct(s.After10),
			s.Dip, rec, s.MissesAfter, s.ErrorsBefore, s.ErrorsAfter, r.ResizeCall.Round(time.Millisecond))
	}
	return b.String()
}

// Series renders each result's 1-s hit rates from second from to to-1 as a
// markdown table, one row per scenario.
func Series(rs []Result, from, to int) string {
	var b strings.Builder
	b.WriteString("| resize |")
	for k := from; k < to; k++ {
		fmt.Fprintf(&b, " %+d |", k)
	}
	b.WriteString("\n|---|")
	for k := from; k < to; k++ {
		b.WriteString("---|")
	}
	for _, r := range rs {
		fmt.Fprintf(&b, "\n| %d → %d |", r.From, r.To)
		for k := from; k < to; k++ {
			cell := " |"
			for _, s := range r.Seconds {
				if s.Offset == k {
					if v, ok := s.HitRate(); ok {
						cell = fmt.Sprintf(" %.0f |", v*100)
					} else {
						cell = " – |"
					}
				}
			}
			b.WriteString(cell)
		}
	}
	b.WriteString("\n")
	return b.String()
}
