package main

import (
	"math"
	"strings"
	"testing"
	"time"

	"github.com/memcache/memcache/region"
)

func TestSecondsBucketsReadsByDueTimeAroundTheRequest(t *testing.T) {
	anchor := 100 * time.Second
	at := func(d time.Duration) time.Duration { return anchor + d }
	recs := []Record{
		{Due: at(-3 * time.Second), Status: 200, Hit: true},        // before the window
		{Due: at(-1500 * time.Millisecond), Status: 200},           // second -2, a miss
		{Due: at(-500 * time.Millisecond), Status: 200, Hit: true}, // second -1, not 0
		{Due: at(-time.Nanosecond), Status: 503},                   // second -1, an error
		{Due: at(0), Status: 200, Hit: true},                       // second 0
		{Due: at(999 * time.Millisecond), Status: 0},               // second 0, no answer
		{Due: at(time.Second), Status: 200, Hit: true, Bad: true},  // second 1, wrong bytes
		{Due: at(1500 * time.Millisecond), Status: 200},            // second 1
		{Due: at(2 * time.Second), Status: 200, Hit: true},         // after the window
	}
	got := Seconds(recs, anchor, -2, 2)
	want := []Second{
		{Offset: -2, OK: 1},
		{Offset: -1, OK: 1, Hits: 1, Errors: 1},
		{Offset: 0, OK: 1, Hits: 1, Errors: 1},
		{Offset: 1, OK: 1, Bad: 1},
	}
	if len(got) != len(want) {
		t.Fatalf("got %d seconds, want %d", len(got), len(want))
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("second %d: got %+v, want %+v", want[i].Offset, got[i], want[i])
		}
	}
}

// second returns a second with ok 200 answers of which hits from the cache.
func second(offset, ok, hits, errs int) Second {
	return Second{Offset: offset, OK: ok, Hits: hits, Errors: errs}
}

func near(a, b float64) bool { return math.Abs(a-b) < 1e-9 }

func TestSummarizeAKnownDip(t *testing.T) {
	var secs []Second
	// Two seconds before the 10-s window at 0 %: they must not count.
	secs = append(secs, second(-12, 300, 0, 0), second(-11, 300, 0, 0))
	for k := -10; k < 0; k++ {
		secs = append(secs, second(k, 300, 297, 0)) // 99 %
	}
	secs = append(secs,
		second(0, 300, 150, 4), // 50 %: the lowest
		second(1, 300, 240, 0), // 80 %
		second(2, 300, 270, 0), // 90 %
		second(3, 300, 294, 0), // 98 %: within 2 points of 99 ...
		second(4, 300, 285, 1), // 95 %: ... but not yet for good
	)
	for k := 5; k < 10; k++ {
		secs = append(secs, second(k, 300, 297, 0))
	}
	// Past the first 10 s: a second with no 200 answer is no lower minimum.
	secs = append(secs, second(10, 0, 0, 300), second(11, 300, 300, 0))
	secs[0].Errors = 7 // before the 10-s window, but in the window before

	s := Summarize(secs)
	checks := []struct {
		name      string
		got, want float64
	}{
		{"Before", s.Before, 0.99},
		{"MinAfter", s.MinAfter, 0.5},
		{"MinAt", float64(s.MinAt), 0},
		{"After5", s.After5, 1239.0 / 1500},
		{"After10", s.After10, 2724.0 / 3000},
		{"Dip", s.Dip, 49},
		// Second 10 has no 200 answer: the pool recovered from second 11 on.
		{"Recovery", float64(s.Recovery), 11},
		{"After", float64(s.After), 12},
		{"ErrorsBefore", float64(s.ErrorsBefore), 7},
		{"ErrorsAfter", float64(s.ErrorsAfter), 305},
		{"MissesAfter", float64(s.MissesAfter), 150 + 60 + 30 + 6 + 15 + 5*3},
		{"Reads", float64(s.Reads), 12*300 + 300*12 + 4 + 1 + 7},
	}
	for _, c := range checks {
		if !near(c.got, c.want) {
			t.Errorf("%s: got %v, want %v", c.name, c.got, c.want)
		}
	}
}

func TestSummarizeRecovery(t *testing.T) {
	before := func() []Second {
		var secs []Second
		for k := -10; k < 0; k++ {
			secs = append(secs, second(k, 100, 100, 0))
		}
		return secs
	}
	for _, tc := range []struct {
		name  string
		after []int // hits of 100 in the seconds after
		want  int
	}{
		{"never left the band", []int{99, 99, 100}, 0},
		{"back at second 2", []int{50, 97, 99, 100}, 2},
		{"low again later", []int{50, 99, 90, 99}, 3},
		{"not recovered by the end", []int{50, 99, 90}, -1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			secs := before()
			for k, h := range tc.after {
				secs = append(secs, second(k, 100, h, 0))
			}
			if got := Summarize(secs).Recovery; got != tc.want {
				t.Errorf("Recovery: got %d, want %d", got, tc.want)
			}
		})
	}
}

func TestSteady(t *testing.T) {
	flat := func(rates ...int) []Second {
		var secs []Second
		for k, r := range rates {
			secs = append(secs, second(k, 1000, r*10, 0))
		}
		return secs
	}
	ten := []int{80, 80, 80, 80, 80, 80, 80, 80, 80, 80}
	for _, tc := range []struct {
		name string
		secs []Second
		min  int
		want bool
	}{
		{"flat for 10 s", flat(ten...), 10, true},
		{"flat but shorter than the minimum", flat(ten...), 11, false},
		{"fewer than 10 s", flat(80, 80, 80, 80, 80), 1, false},
		{"a point higher than 5 s before", flat(94, 94, 94, 94, 94, 95, 95, 95, 95, 95), 1, false},
		{"still rising", flat(50, 60, 70, 75, 80, 82, 84, 86, 88, 90), 1, false},
		// 5-s means 95.0 and 95.4: within half a point.
		{"settled", flat(50, 94, 96, 95, 95, 95, 95, 96, 95, 96, 95), 1, true},
		{"no 200 answers", []Second{second(0, 0, 0, 5), second(1, 0, 0, 5), second(2, 0, 0, 5), second(3, 0, 0, 5), second(4, 0, 0, 5), second(5, 0, 0, 5), second(6, 0, 0, 5), second(7, 0, 0, 5), second(8, 0, 0, 5), second(9, 0, 0, 5)}, 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Steady(tc.secs, tc.min); got != tc.want {
				t.Errorf("got %v, want %v", got, tc.want)
			}
		})
	}
}

func TestMovedWeighsKeysByTheirZipfShare(t *testing.T) {
	w := ZipfWeights(3, 2)
	// 1, 1/4, 1/9 over their sum 49/36.
	for i, want := range []float64{36.0 / 49, 9.0 / 49, 4.0 / 49} {
		if !near(w[i], want) {
			t.Errorf("weight %d: got %v, want %v", i, w[i], want)
		}
	}
	keys := []string{"a", "b", "c"}
	var before, after region.Map
	for r := range region.Count {
		before[r], after[r] = "n1", "n1"
	}
	after[region.Of("b")] = "n2"
	regions, share := Moved(before, after, keys, w)
	want := w[1]
	if region.Of("a") == region.Of("b") {
		want += w[0]
	}
	if region.Of("c") == region.Of("b") {
		want += w[2]
	}
	if regions != 1 || !near(share, want) {
		t.Errorf("got %d regions, share %v; want 1, %v", regions, share, want)
	}
}

func TestTableMarksAPoolThatDidNotRecover(t *testing.T) {
	out := Table([]Result{{From: 2, To: 4, MovedRegions: -1, Summary: Summary{Recovery: -1, After: 30}}})
	if !strings.Contains(out, "not within 30 s") || !strings.Contains(out, "| 2 → 4 | ? |") {
		t.Errorf("table:\n%s", out)
	}
}
