package scaler_test

// Tests of the scaler's guards against flapping: the warm-up discount and
// the shrink guard (issue 13). The fixture's clock moves one minute a round:
// the first round is at 12:01.

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/memcache/memcache/fsm"
	"github.com/memcache/memcache/metrics"
	"github.com/memcache/memcache/scaler"
)

// at returns 12:MM on the fixture's day, in UTC.
func at(minute int) time.Time {
	return time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC).Add(time.Duration(minute) * time.Minute)
}

// checkDiscounted fails the test unless d is a discounted round of kind
// with no action, its miss rate recorded, and its reason containing why.
func checkDiscounted(t *testing.T, d fsm.Decision, kind, why string) {
	t.Helper()
	if d.Discounted != kind || d.Action != fsm.ActionNone || d.Applied || d.Target != d.Nodes || d.MissRate == nil {
		t.Errorf("got discounted %q action %q applied %v nodes %d target %d miss rate %v (%s), want a %s discount, no action, the miss rate kept",
			d.Discounted, d.Action, d.Applied, d.Nodes, d.Target, d.MissRate, d.Reason, kind)
	}
	if !strings.Contains(d.Reason, why) {
		t.Errorf("reason: got %q, want it to contain %q", d.Reason, why)
	}
	if err := d.Validate(); err != nil {
		t.Errorf("decision %+v: got %v, want valid", d, err)
	}
}

// TestTickDiscountsTheResize: the rounds whose window overlaps the resize
// or the warm-up after it take no action and say so; the first round after
// them acts on its window.
func TestTickDiscountsTheResize(t *testing.T) {
	high := missTotals(100, 80)
	tests := []struct {
		name       string
		lag        time.Duration
		warmup     time.Duration
		discounted int // rounds after the grow
	}{
		{"warm-up one interval", 0, 0, 1},
		{"lag 15s", 15 * time.Second, 0, 2},
		{"warm-up 3m", 0, 3 * time.Minute, 3},
		{"warm-up 90s, lag 30s", 30 * time.Second, 90 * time.Second, 2},
		{"lag one interval", time.Minute, 0, 2}, // the first window ends at the resize
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newAutoFixture(t, 2, autoPolicy, time.Minute, high).configure(func(c *scaler.AutoScalerConfig) {
				c.Lag, c.Warmup = tt.lag, tt.warmup
			})
			ctx := t.Context()
			checkDecision(t, f.scaler.Tick(ctx), 2, 4, fsm.ActionGrow, true)
			for i := range tt.discounted {
				d := f.scaler.Tick(ctx)
				why := "miss rate 0.80 discounted: window includes the resize 2 -> 4 at 12:01:00 UTC or its warm-up: no action"
				if i == 0 && tt.lag == time.Minute {
					why = "miss rate 0.80 discounted: window ends before the resize 2 -> 4 at 12:01:00 UTC: it measured the old size: no action"
				}
				checkDiscounted(t, d, fsm.DiscountResize, why)
				if d.Nodes != 4 || *d.MissRate != 0.8 || d.Gets != 100 {
					t.Errorf("discounted round %d: got nodes %d miss rate %v GETs %d, want 4, 0.8, 100", i+1, d.Nodes, *d.MissRate, d.Gets)
				}
			}
			d := f.scaler.Tick(ctx)
			checkDecision(t, d, 4, 8, fsm.ActionGrow, true)
			if d.Discounted != "" {
				t.Errorf("round after the warm-up: got discounted %q, want a steady window", d.Discounted)
			}
			if got := f.pool.called(); len(got) != 2 || got[0] != 4 || got[1] != 8 {
				t.Errorf("Resize calls: got %v, want 4 then 8 (none while warming)", got)
			}
		})
	}

	t.Run("seed rule alone", func(t *testing.T) {
		f := newAutoFixture(t, 2, autoPolicy, time.Minute, high).configure(seedRuleOnly)
		checkDecision(t, f.scaler.Tick(t.Context()), 2, 4, fsm.ActionGrow, true)
		if d := f.scaler.Tick(t.Context()); d.Action != fsm.ActionGrow || d.Discounted != "" {
			t.Errorf("seed rule alone: got %q discounted %q (%s), want the grow the seed's rule makes", d.Action, d.Discounted, d.Reason)
		}
	})

	t.Run("failed resize", func(t *testing.T) {
		// A grow that was not applied changed nothing: the next window
		// is steady.
		f := newAutoFixture(t, 2, autoPolicy, time.Minute, high)
		f.pool.err = context.DeadlineExceeded
		checkDecision(t, f.scaler.Tick(t.Context()), 2, 4, fsm.ActionGrow, false)
		d := f.scaler.Tick(t.Context())
		checkDecision(t, d, 2, 4, fsm.ActionGrow, false)
		if d.Discounted != "" {
			t.Errorf("got discounted %q, want a steady window after a resize that failed", d.Discounted)
		}
	})
}

// TestTickDiscountsAResizeNotByTheScaler: a change of the pool size between
// two rounds that no decision records (a manual resize, a failed member)
// is found from the history: it happened after the last round, so that
// window and the next one, which overlaps the warm-up after the latest
// time it could have happened, are discounted.
func TestTickDiscountsAResizeNotByTheScaler(t *testing.T) {
	for _, mode := range []string{fsm.ModeAuto, fsm.ModeManual} {
		t.Run(mode, func(t *testing.T) {
			p := policyWith(func(p *fsm.ScalingPolicy) { p.Mode = mode })
			f := newAutoFixture(t, 2, p, time.Minute, missTotals(100, 30), missTotals(100, 80))
			ctx := t.Context()
			checkDecision(t, f.scaler.Tick(ctx), 2, 2, fsm.ActionNone, false)
			f.raft.setSize(3)
			why := "window includes the resize 2 -> 3 (not the scaler's) between 12:01:00 UTC and 12:02:00 UTC or its warm-up"
			for range 2 {
				d := f.scaler.Tick(ctx)
				checkDiscounted(t, d, fsm.DiscountResize, why)
				if mode == fsm.ModeManual && !strings.HasPrefix(d.Reason, "manual mode: the scaler is idle; ") {
					t.Errorf("manual mode: got reason %q, want the idle reason first", d.Reason)
				}
			}
			d := f.scaler.Tick(ctx)
			if d.Discounted != "" {
				t.Errorf("third round: got discounted %q (%s), want a steady window", d.Discounted, d.Reason)
			}
			if mode == fsm.ModeAuto {
				checkDecision(t, d, 3, 6, fsm.ActionGrow, true)
			}
		})
	}
}

// TestTickDiscountsAHandoff: while the Warming hook reports a handoff
// running, rounds take no action; so does the round whose window includes
// the last time it was seen running.
func TestTickDiscountsAHandoff(t *testing.T) {
	var mu sync.Mutex
	warming, calls := false, 0
	hook := func(ctx context.Context) (string, bool) {
		mu.Lock()
		defer mu.Unlock()
		calls++
		if ctx == nil {
			t.Error("Warming got a nil context")
		}
		return "handoff of 4 regions to n3: 60% done", warming
	}
	setWarming := func(w bool) {
		mu.Lock()
		defer mu.Unlock()
		warming = w
	}
	f := newAutoFixture(t, 2, autoPolicy, time.Minute, missTotals(100, 30), missTotals(100, 80)).
		configure(func(c *scaler.AutoScalerConfig) { c.Warming = hook })
	ctx := t.Context()
	checkDecision(t, f.scaler.Tick(ctx), 2, 2, fsm.ActionNone, false)

	setWarming(true)
	for range 2 {
		checkDiscounted(t, f.scaler.Tick(ctx), fsm.DiscountHandoff,
			"miss rate 0.80 discounted: handoff still running (handoff of 4 regions to n3: 60% done): warm-up: no action")
	}
	setWarming(false)
	checkDiscounted(t, f.scaler.Tick(ctx), fsm.DiscountAfterHandoff,
		"window includes the handoff seen running at 12:03:00 UTC or its warm-up: no action")
	d := f.scaler.Tick(ctx)
	checkDecision(t, d, 2, 4, fsm.ActionGrow, true)
	if len(f.pool.called()) != 1 {
		t.Errorf("Resize calls: got %v, want one, after the handoff", f.pool.called())
	}
	mu.Lock()
	if calls != 5 {
		t.Errorf("Warming calls: got %d, want one a round, 5", calls)
	}
	mu.Unlock()

	t.Run("seed rule alone does not ask", func(t *testing.T) {
		f.configure(seedRuleOnly)
		mu.Lock()
		calls = 0
		mu.Unlock()
		setWarming(true)
		f.scaler.Tick(ctx)
		mu.Lock()
		defer mu.Unlock()
		if calls != 0 {
			t.Errorf("Warming calls: got %d, want none with SeedRuleOnly", calls)
		}
	})
}

// TestTickShrinkGuard: a shrink is checked against the miss rate the pool
// measured the last time it was the target size in a steady window.
func TestTickShrinkGuard(t *testing.T) {
	low := missTotals(100, 1)
	t.Run("not taken", func(t *testing.T) {
		// 2 nodes measured 0.60 (and grew), then 4 nodes measure 0.01:
		// the shrink back to 2 would bring 0.60 back.
		f := newAutoFixture(t, 2, autoPolicy, time.Minute, missTotals(100, 60), missTotals(100, 1))
		ctx := t.Context()
		checkDecision(t, f.scaler.Tick(ctx), 2, 4, fsm.ActionGrow, true)
		checkDiscounted(t, f.scaler.Tick(ctx), fsm.DiscountResize, "the resize 2 -> 4 at 12:01:00 UTC")
		for range 3 {
			d := f.scaler.Tick(ctx)
			checkDecision(t, d, 4, 4, fsm.ActionNone, false)
			if want := "miss rate 0.01 < min 0.10: shrink 4 -> 2 (x0.5) not taken: at 2 nodes the pool measured miss rate 0.60 > max 0.50 at 12:01:00 UTC (estimate)"; d.Reason != want {
				t.Errorf("reason: got %q, want %q", d.Reason, want)
			}
			if d.EstimateNodes != 2 || d.Estimate == nil || *d.Estimate != 0.6 || !d.EstimateAt.Equal(at(1)) ||
				d.EstimateFrom != "measured at 2 nodes at 12:01:00 UTC" || d.Discounted != "" {
				t.Errorf("estimate: got %d nodes, %v, at %v from %q (discounted %q), want 2 nodes, 0.6 measured at 12:01",
					d.EstimateNodes, d.Estimate, d.EstimateAt, d.EstimateFrom, d.Discounted)
			}
		}
		if got := f.pool.called(); len(got) != 1 {
			t.Errorf("Resize calls: got %v, want only the grow", got)
		}
	})

	t.Run("taken with an estimate", func(t *testing.T) {
		f := newAutoFixture(t, 2, autoPolicy, time.Minute, missTotals(100, 30), low)
		ctx := t.Context()
		checkDecision(t, f.scaler.Tick(ctx), 2, 2, fsm.ActionNone, false) // 2 nodes: 0.30
		f.raft.setSize(4)
		f.scaler.Tick(ctx)
		f.scaler.Tick(ctx) // both discounted
		d := f.scaler.Tick(ctx)
		checkDecision(t, d, 4, 2, fsm.ActionShrink, true)
		if want := "miss rate 0.01 < min 0.10: shrink 4 -> 2 (x0.5); at 2 nodes the pool measured miss rate 0.30 <= max 0.50 at 12:01:00 UTC (estimate)"; d.Reason != want {
			t.Errorf("reason: got %q, want %q", d.Reason, want)
		}
		if d.Estimate == nil || *d.Estimate != 0.3 || d.EstimateNodes != 2 {
			t.Errorf("estimate: got %v at %d nodes, want 0.3 at 2", d.Estimate, d.EstimateNodes)
		}
	})

	t.Run("no estimate", func(t *testing.T) {
		f := newAutoFixture(t, 4, autoPolicy, time.Minute, low)
		d := f.scaler.Tick(t.Context())
		checkDecision(t, d, 4, 2, fsm.ActionShrink, true)
		if want := "miss rate 0.01 < min 0.10: shrink 4 -> 2 (x0.5); no estimate at 2 nodes (no steady window at that size in the last 1h0m0s)"; d.Reason != want {
			t.Errorf("reason: got %q, want %q", d.Reason, want)
		}
		if d.EstimateNodes != 2 || d.Estimate != nil || d.EstimateFrom != "" {
			t.Errorf("estimate: got %d nodes, %v, %q, want 2 nodes and no estimate", d.EstimateNodes, d.Estimate, d.EstimateFrom)
		}
	})

	t.Run("a discounted window is no estimate", func(t *testing.T) {
		// The only window at 2 nodes was discounted (0.90, right after a
		// resize): it does not stop the shrink.
		f := newAutoFixture(t, 4, autoPolicy, time.Minute, low)
		f.raft.state.Decisions = []fsm.Decision{
			{Time: at(-10), Mode: fsm.ModeAuto, Nodes: 2, Target: 2, Gets: 100, MissRate: rate(0.9), Action: fsm.ActionNone,
				Reason: "discounted", Discounted: fsm.DiscountResize},
			{Time: at(-5), Mode: fsm.ModeAuto, Nodes: 4, Target: 4, Gets: 100, MissRate: rate(0.2), Action: fsm.ActionNone, Reason: "within"},
		}
		d := f.scaler.Tick(t.Context())
		checkDecision(t, d, 4, 2, fsm.ActionShrink, true)
		if !strings.Contains(d.Reason, "no estimate at 2 nodes") {
			t.Errorf("reason: got %q, want no estimate at 2 nodes", d.Reason)
		}
	})

	t.Run("a measurement past the horizon", func(t *testing.T) {
		f := newAutoFixture(t, 4, autoPolicy, time.Minute, low)
		f.raft.state.Decisions = []fsm.Decision{
			{Time: at(-62), Mode: fsm.ModeAuto, Nodes: 2, Target: 4, Gets: 100, MissRate: rate(0.9), Action: fsm.ActionGrow, Applied: true, Reason: "grow"},
			{Time: at(-10), Mode: fsm.ModeAuto, Nodes: 4, Target: 4, Gets: 100, MissRate: rate(0.2), Action: fsm.ActionNone, Reason: "within"},
		}
		d := f.scaler.Tick(t.Context()) // 12:01, the measurement is 63 minutes old
		checkDecision(t, d, 4, 2, fsm.ActionShrink, true)
		if !strings.Contains(d.Reason, "no estimate at 2 nodes (no steady window at that size in the last 1h0m0s)") {
			t.Errorf("reason: got %q, want no estimate past the horizon", d.Reason)
		}
	})

	t.Run("the newest measurement", func(t *testing.T) {
		f := newAutoFixture(t, 4, autoPolicy, time.Minute, low)
		f.raft.state.Decisions = []fsm.Decision{
			{Time: at(-30), Mode: fsm.ModeAuto, Nodes: 2, Target: 2, Gets: 100, MissRate: rate(0.2), Action: fsm.ActionNone, Reason: "within"},
			{Time: at(-20), Mode: fsm.ModeAuto, Nodes: 2, Target: 4, Gets: 100, MissRate: rate(0.7), Action: fsm.ActionGrow, Applied: true, Reason: "grow"},
			{Time: at(-10), Mode: fsm.ModeAuto, Nodes: 4, Target: 4, Gets: 100, MissRate: rate(0.2), Action: fsm.ActionNone, Reason: "within"},
		}
		d := f.scaler.Tick(t.Context())
		checkDecision(t, d, 4, 4, fsm.ActionNone, false)
		if d.Estimate == nil || *d.Estimate != 0.7 || !d.EstimateAt.Equal(at(-20)) {
			t.Errorf("estimate: got %v at %v, want the newest measurement at 2 nodes, 0.7 at 11:40", d.Estimate, d.EstimateAt)
		}
	})
}

// sizeResizer resizes an fsmApplier's pool to n members (autoMembers).
type sizeResizer struct{ raft *fsmApplier }

func (r sizeResizer) Resize(ctx context.Context, n int) (fsm.Result, error) {
	return r.raft.Apply(ctx, fsm.Resize{Members: autoMembers(n)})
}

// TestTickShrinkGuardHorizon: over a real FSM, whose history keeps only
// fsm.MaxDecisions: the estimate is carried forward by the rounds that use
// it, so it outlives the measurement's own decision, and it is used for
// EstimateHorizon; after that the shrink is taken.
func TestTickShrinkGuardHorizon(t *testing.T) {
	const horizon = 90 * time.Minute
	raft := &fsmApplier{f: fsm.New()}
	if _, err := raft.Apply(t.Context(), fsm.SetScaling{Policy: autoPolicy}); err != nil {
		t.Fatal(err)
	}
	if _, err := raft.Apply(t.Context(), fsm.Resize{Members: autoMembers(2)}); err != nil {
		t.Fatal(err)
	}
	minute := 0
	rates := &fakeRates{script: []metrics.Totals{missTotals(100, 60), missTotals(100, 1)}}
	as := scaler.NewAutoScaler(scaler.AutoScalerConfig{Interval: time.Minute, EstimateHorizon: horizon,
		Now: func() time.Time { minute++; return at(minute) }}, raft, sizeResizer{raft}, rates, autoLogger(t))
	ctx := t.Context()

	checkDecision(t, as.Tick(ctx), 2, 4, fsm.ActionGrow, true)                     // 12:01, 2 nodes measure 0.60
	checkDiscounted(t, as.Tick(ctx), fsm.DiscountResize, "2 -> 4 at 12:01:00 UTC") // 12:02
	for m := 3; m <= 91; m++ {                                                     // 12:03 .. 13:31, 90 minutes after the measurement
		d := as.Tick(ctx)
		if d.Action != fsm.ActionNone || d.Estimate == nil || *d.Estimate != 0.6 || !d.EstimateAt.Equal(at(1)) ||
			d.EstimateFrom != "measured at 2 nodes at 12:01:00 UTC" {
			t.Fatalf("round at %s: got %q with estimate %v at %v from %q (%s), want the shrink not taken on the 12:01 measurement",
				d.Time.Format("15:04"), d.Action, d.Estimate, d.EstimateAt, d.EstimateFrom, d.Reason)
		}
		if m == 62 {
			// The measurement's own decision has left the history.
			for _, old := range raft.State().Decisions {
				if old.Time.Equal(at(1)) {
					t.Fatalf("at 13:02 the history still holds the 12:01 decision; want it dropped (MaxDecisions %d)", fsm.MaxDecisions)
				}
			}
		}
	}
	d := as.Tick(ctx) // 13:32: the measurement is 91 minutes old
	checkDecision(t, d, 4, 2, fsm.ActionShrink, true)
	if !strings.Contains(d.Reason, "no estimate at 2 nodes (no steady window at that size in the last 1h30m0s)") {
		t.Errorf("reason: got %q, want no estimate past the horizon", d.Reason)
	}
	if got := len(raft.State().Members); got != 2 {
		t.Errorf("pool: got %d members, want 2", got)
	}
}

// rate returns a pointer to a miss rate.
func rate(r float64) *float64 { return &r }
