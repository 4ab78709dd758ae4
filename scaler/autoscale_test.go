package scaler_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/memcache/memcache/fsm"
	"github.com/memcache/memcache/metrics"
	"github.com/memcache/memcache/scaler"
)

// autoPolicy is an auto policy: grow above 0.5, shrink below 0.1, x2 / x0.5.
var autoPolicy = fsm.ScalingPolicy{Mode: fsm.ModeAuto, MaxMissRate: 0.5, MinMissRate: 0.1, ExpandRatio: 2, ShrinkRatio: 0.5}

// policyWith returns autoPolicy edited.
func policyWith(edit func(*fsm.ScalingPolicy)) fsm.ScalingPolicy {
	p := autoPolicy
	edit(&p)
	return p
}

// missTotals returns totals of gets GETs of which misses missed.
func missTotals(gets, misses uint64) metrics.Totals {
	return metrics.Totals{Gets: gets, Misses: misses, Hits: gets - misses, Requests: gets}
}

func TestDecide(t *testing.T) {
	ratios := func(expand, shrink float64) fsm.ScalingPolicy {
		return policyWith(func(p *fsm.ScalingPolicy) { p.ExpandRatio, p.ShrinkRatio = expand, shrink })
	}
	manual := policyWith(func(p *fsm.ScalingPolicy) { p.Mode = fsm.ModeManual })
	high, low, mid := missTotals(100, 90), missTotals(100, 2), missTotals(100, 30)
	tests := []struct {
		name       string
		n          int
		policy     fsm.ScalingPolicy
		totals     metrics.Totals
		wantTarget int
		wantAction string
		wantReason string // the reason must contain it
	}{
		{"grow x2", 2, autoPolicy, missTotals(100, 62), 4, fsm.ActionGrow, "miss rate 0.62 > max 0.50: grow 2 -> 4 (x2.0)"},
		{"grow capped at 8", 5, autoPolicy, high, 8, fsm.ActionGrow, "grow 5 -> 8 (x2.0)"},
		{"grow at 8", 8, autoPolicy, high, 8, fsm.ActionNone, "miss rate 0.90 > max 0.50, but at the maximum of 8 nodes"},
		{"grow n=3 x1.5: ceil 4.5", 3, ratios(1.5, 0.5), high, 5, fsm.ActionGrow, "grow 3 -> 5 (x1.5)"},
		{"grow n=2 x1.2: at least n+1", 2, ratios(1.2, 0.5), high, 3, fsm.ActionGrow, "grow 2 -> 3 (x1.2)"},
		{"grow n=5 x1.4: exactly 7", 5, ratios(1.4, 0.5), high, 7, fsm.ActionGrow, "grow 5 -> 7"},
		{"grow n=4 x1.25: exactly 5", 4, ratios(1.25, 0.5), high, 5, fsm.ActionGrow, "grow 4 -> 5 (x1.25)"},
		{"grow n=1 x8", 1, ratios(8, 0.5), high, 8, fsm.ActionGrow, "grow 1 -> 8"},
		{"shrink x0.5", 4, autoPolicy, low, 2, fsm.ActionShrink, "miss rate 0.02 < min 0.10: shrink 4 -> 2 (x0.5)"},
		{"shrink at 1", 1, autoPolicy, low, 1, fsm.ActionNone, "miss rate 0.02 < min 0.10, but at the minimum of 1 node"},
		{"shrink n=5 x0.5: floor 2.5", 5, autoPolicy, low, 2, fsm.ActionShrink, "shrink 5 -> 2"},
		{"shrink n=3 x0.9: at least one fewer", 3, ratios(2, 0.9), low, 2, fsm.ActionShrink, "shrink 3 -> 2 (x0.9)"},
		{"shrink n=2 x0.5: exactly 1", 2, autoPolicy, low, 1, fsm.ActionShrink, "shrink 2 -> 1"},
		{"shrink n=5 x0.6: exactly 3", 5, ratios(2, 0.6), low, 3, fsm.ActionShrink, "shrink 5 -> 3 (x0.6)"},
		{"shrink n=8 x0.01: floored at 1", 8, ratios(2, 0.01), low, 1, fsm.ActionShrink, "shrink 8 -> 1"},
		{"shrink with no misses", 3, autoPolicy, missTotals(50, 0), 1, fsm.ActionShrink, "miss rate 0.00 < min 0.10"},
		{"no GETs, no misses", 4, autoPolicy, metrics.Totals{}, 4, fsm.ActionNone, "no GETs in the window: no miss rate, no action"},
		{"no GETs, misses counted", 4, autoPolicy, metrics.Totals{Misses: 7, Requests: 30}, 4, fsm.ActionNone, "no GETs in the window"},
		{"no GETs at 1 node", 1, autoPolicy, metrics.Totals{}, 1, fsm.ActionNone, "no GETs in the window"},
		{"no GETs at 8 nodes", 8, autoPolicy, metrics.Totals{Misses: 3}, 8, fsm.ActionNone, "no GETs in the window"},
		{"rate equals max", 3, autoPolicy, missTotals(100, 50), 3, fsm.ActionNone, "miss rate 0.50 within min 0.10 and max 0.50: no action"},
		{"rate equals min", 3, autoPolicy, missTotals(100, 10), 3, fsm.ActionNone, "miss rate 0.10 within min 0.10 and max 0.50: no action"},
		{"rate just above max", 3, autoPolicy, missTotals(10000, 5001), 6, fsm.ActionGrow, "miss rate 0.5001 > max 0.5000"},
		{"rate between", 3, autoPolicy, mid, 3, fsm.ActionNone, "miss rate 0.30 within min 0.10 and max 0.50: no action"},
		{"rate just under max", 3, autoPolicy, missTotals(10000, 4996), 3, fsm.ActionNone, "miss rate 0.4996 within min 0.10 and max 0.5000: no action"},
		{"rate just over min", 3, autoPolicy, missTotals(10000, 1004), 3, fsm.ActionNone, "miss rate 0.1004 within min 0.1000 and max 0.50: no action"},
		{"rate 1 at max 1", 3, policyWith(func(p *fsm.ScalingPolicy) { p.MaxMissRate = 1 }), missTotals(10, 10), 3, fsm.ActionNone, "no action"},
		{"rate 0 at min 0", 3, policyWith(func(p *fsm.ScalingPolicy) { p.MinMissRate = 0 }), missTotals(10, 0), 3, fsm.ActionNone, "no action"},
		{"manual, high", 2, manual, high, 2, fsm.ActionNone, "manual mode: the scaler is idle"},
		{"manual, low", 4, manual, low, 4, fsm.ActionNone, "manual mode: the scaler is idle"},
		{"manual, no GETs", 4, manual, metrics.Totals{}, 4, fsm.ActionNone, "manual mode: the scaler is idle"},
		{"empty pool", 0, autoPolicy, high, 0, fsm.ActionNone, "the pool is empty"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.policy.Validate(); err != nil {
				t.Fatalf("test policy: %v", err)
			}
			target, action, reason := scaler.Decide(tt.n, tt.policy, tt.totals)
			if target != tt.wantTarget || action != tt.wantAction {
				t.Errorf("Decide(%d): got %d %q, want %d %q (reason %q)", tt.n, target, action, tt.wantTarget, tt.wantAction, reason)
			}
			if !strings.Contains(reason, tt.wantReason) {
				t.Errorf("reason: got %q, want it to contain %q", reason, tt.wantReason)
			}
			// Whatever Decide says can be recorded.
			d := fsm.Decision{Mode: tt.policy.Mode, Nodes: tt.n, Target: target, Action: action, Reason: reason}
			if err := d.Validate(); err != nil {
				t.Errorf("the decision is not recordable: %v", err)
			}
		})
	}
}

// TestDecideEveryRatio checks the size rule over every pool size and every
// ratio with two decimals: the exact decimal product, clamped.
func TestDecideEveryRatio(t *testing.T) {
	for n := fsm.MinNodes; n <= fsm.MaxNodes; n++ {
		for hundredths := 1; hundredths <= 800; hundredths++ {
			ratio := float64(hundredths) / 100
			// ceil and floor of n*hundredths/100 in integers.
			ceil := (n*hundredths + 99) / 100
			floor := n * hundredths / 100
			if ratio > 1 {
				p := policyWith(func(p *fsm.ScalingPolicy) { p.ExpandRatio = ratio })
				want := min(max(ceil, n+1), fsm.MaxNodes)
				if n == fsm.MaxNodes {
					want = n
				}
				if got, _, reason := scaler.Decide(n, p, missTotals(10, 9)); got != want {
					t.Fatalf("grow %d x%v: got %d, want %d (%s)", n, ratio, got, want, reason)
				}
			}
			if ratio < 1 {
				p := policyWith(func(p *fsm.ScalingPolicy) { p.ShrinkRatio = ratio })
				want := max(min(floor, n-1), fsm.MinNodes)
				if got, _, reason := scaler.Decide(n, p, missTotals(10, 0)); got != want {
					t.Fatalf("shrink %d x%v: got %d, want %d (%s)", n, ratio, got, want, reason)
				}
			}
		}
	}
}

// fakeRaft is a scaler.Applier over a state the test sets. It records every
// command applied; RecordDecision also lands in the state, as in the FSM.
type fakeRaft struct {
	mu       sync.Mutex
	state    fsm.State     // guarded by mu
	commands []fsm.Command // guarded by mu
	applyErr error         // guarded by mu; returned by Apply
}

func newFakeRaft(n int, p fsm.ScalingPolicy) *fakeRaft {
	st := fsm.DefaultState()
	st.Scaling = p
	st.Members = autoMembers(n)
	return &fakeRaft{state: st}
}

func autoMembers(n int) []fsm.Member {
	ms := make([]fsm.Member, n)
	for i := range ms {
		ms[i] = fsm.Member{ID: fmt.Sprintf("n%d", i+1), HTTP: fmt.Sprintf("http://n%d.test:7000", i+1)}
	}
	return ms
}

func (f *fakeRaft) Apply(_ context.Context, cmd fsm.Command) (fsm.Result, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.commands = append(f.commands, cmd)
	if f.applyErr != nil {
		return fsm.Result{}, f.applyErr
	}
	if err := cmd.Validate(f.state); err != nil {
		return fsm.Result{Err: err}, err
	}
	f.state.Index++
	if rd, ok := cmd.(fsm.RecordDecision); ok {
		f.state.Decisions = append(f.state.Decisions, rd.Decision)
	}
	return fsm.Result{Index: f.state.Index, Epoch: f.state.Epoch}, nil
}

func (f *fakeRaft) State() fsm.State {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.state.Clone()
}

func (f *fakeRaft) setPolicy(p fsm.ScalingPolicy) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.state.Scaling = p
}

func (f *fakeRaft) setSize(n int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.state.Members = autoMembers(n)
}

// recorded returns the decisions applied so far, failing the test if any
// other command was applied.
func (f *fakeRaft) recorded(t *testing.T) []fsm.Decision {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	var ds []fsm.Decision
	for _, c := range f.commands {
		rd, ok := c.(fsm.RecordDecision)
		if !ok {
			t.Fatalf("applied %#v, want only RecordDecision", c)
		}
		ds = append(ds, rd.Decision)
	}
	return ds
}

// fakeResizer is a scaler.Resizer that records its calls and, unless err
// is set, resizes the fakeRaft's pool.
type fakeResizer struct {
	raft  *fakeRaft
	mu    sync.Mutex
	calls []int // guarded by mu
	err   error // guarded by mu
}

func (r *fakeResizer) Resize(_ context.Context, n int) (fsm.Result, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, n)
	if r.err != nil {
		return fsm.Result{}, r.err
	}
	r.raft.setSize(n)
	return fsm.Result{}, nil
}

func (r *fakeResizer) called() []int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]int(nil), r.calls...)
}

// fakeRates is a scaler.RateReader returning scripted totals, one per call
// (the last one again when the script runs out), and recording its windows.
type fakeRates struct {
	mu      sync.Mutex
	script  []metrics.Totals // guarded by mu
	err     error            // guarded by mu; returned with empty totals
	calls   int              // guarded by mu
	windows []time.Duration  // guarded by mu
	nows    []time.Time      // guarded by mu
}

func (r *fakeRates) Totals(_ context.Context, now time.Time, window time.Duration) (metrics.Totals, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.windows = append(r.windows, window)
	r.nows = append(r.nows, now)
	i := min(r.calls, len(r.script)-1)
	r.calls++
	if r.err != nil {
		return metrics.Totals{}, r.err
	}
	return r.script[i], nil
}

func (r *fakeRates) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.calls
}

func autoLogger(t *testing.T) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// autoFixture wires an AutoScaler to fakes. Its clock moves one minute
// at every reading: a round at 12:01, the next at 12:02, and so on.
type autoFixture struct {
	t      *testing.T
	raft   *fakeRaft
	pool   *fakeResizer
	rates  *fakeRates
	scaler *scaler.AutoScaler
	now    time.Time
	cfg    scaler.AutoScalerConfig
}

func newAutoFixture(t *testing.T, n int, p fsm.ScalingPolicy, interval time.Duration, script ...metrics.Totals) *autoFixture {
	f := &autoFixture{raft: newFakeRaft(n, p), rates: &fakeRates{script: script}, now: time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)}
	f.pool = &fakeResizer{raft: f.raft}
	clock := f.now
	var mu sync.Mutex
	f.t = t
	f.cfg = scaler.AutoScalerConfig{Interval: interval, Now: func() time.Time {
		mu.Lock()
		defer mu.Unlock()
		clock = clock.Add(time.Minute)
		return clock
	}}
	f.scaler = scaler.NewAutoScaler(f.cfg, f.raft, f.pool, f.rates, autoLogger(t))
	return f
}

// configure rebuilds the fixture's scaler with its config edited (same
// clock, same fakes).
func (f *autoFixture) configure(edit func(*scaler.AutoScalerConfig)) *autoFixture {
	edit(&f.cfg)
	f.scaler = scaler.NewAutoScaler(f.cfg, f.raft, f.pool, f.rates, autoLogger(f.t))
	return f
}

// seedRuleOnly is a configure edit: the seed's rule alone, no guards.
func seedRuleOnly(c *scaler.AutoScalerConfig) { c.SeedRuleOnly = true }

// checkDecision fails the test unless d is what the round should have recorded.
func checkDecision(t *testing.T, d fsm.Decision, nodes, target int, action string, applied bool) {
	t.Helper()
	if d.Nodes != nodes || d.Target != target || d.Action != action || d.Applied != applied {
		t.Errorf("got nodes %d target %d action %q applied %v, want %d %d %q %v (reason %q, error %q)",
			d.Nodes, d.Target, d.Action, d.Applied, nodes, target, action, applied, d.Reason, d.Error)
	}
	if err := d.Validate(); err != nil {
		t.Errorf("decision %+v: got %v, want valid", d, err)
	}
}

// TestTickGrowThenShrink: the seed's rule, alone (the guards have their
// own tests), acted upon at every round.
func TestTickGrowThenShrink(t *testing.T) {
	f := newAutoFixture(t, 2, autoPolicy, time.Minute,
		missTotals(100, 80), // grow 2 -> 4
		missTotals(100, 70), // grow 4 -> 8
		missTotals(100, 90), // at the maximum
		missTotals(100, 30), // between
		missTotals(100, 1),  // shrink 8 -> 4
		missTotals(0, 0),    // no GETs
		missTotals(100, 0),  // shrink 4 -> 2
	).configure(seedRuleOnly)
	ctx := t.Context()
	steps := []struct {
		nodes, target int
		action        string
		applied       bool
	}{
		{2, 4, fsm.ActionGrow, true},
		{4, 8, fsm.ActionGrow, true},
		{8, 8, fsm.ActionNone, false},
		{8, 8, fsm.ActionNone, false},
		{8, 4, fsm.ActionShrink, true},
		{4, 4, fsm.ActionNone, false},
		{4, 2, fsm.ActionShrink, true},
	}
	for i, s := range steps {
		d := f.scaler.Tick(ctx)
		checkDecision(t, d, s.nodes, s.target, s.action, s.applied)
		if got := len(f.raft.recorded(t)); got != i+1 {
			t.Fatalf("tick %d: got %d recorded decisions, want %d", i+1, got, i+1)
		}
		if got := f.raft.recorded(t)[i]; got.Reason != d.Reason || got.Time != d.Time {
			t.Errorf("tick %d: recorded %+v, want the returned %+v", i+1, got, d)
		}
	}
	if got, want := f.pool.called(), []int{4, 8, 4, 2}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("Resize calls: got %v, want %v", got, want)
	}
	ds := f.raft.recorded(t)
	if ds[5].MissRate != nil || ds[5].Gets != 0 {
		t.Errorf("no-GET round: got miss rate %v gets %d, want nil, 0", ds[5].MissRate, ds[5].Gets)
	}
	if ds[0].MissRate == nil || *ds[0].MissRate != 0.8 || ds[0].Gets != 100 {
		t.Errorf("first round: got miss rate %v gets %d, want 0.8, 100", ds[0].MissRate, ds[0].Gets)
	}
	if want := f.now.Add(time.Minute); !ds[0].Time.Equal(want) || ds[0].Mode != fsm.ModeAuto {
		t.Errorf("first round: got time %v mode %q, want %v auto", ds[0].Time, ds[0].Mode, want)
	}
	for i, w := range f.rates.windows {
		if w != time.Minute {
			t.Errorf("Totals call %d: got window %v, want the interval 1m", i, w)
		}
	}
}

func TestTickPolicyChange(t *testing.T) {
	manual := policyWith(func(p *fsm.ScalingPolicy) { p.Mode = fsm.ModeManual })
	f := newAutoFixture(t, 2, manual, time.Minute, missTotals(100, 60)).configure(seedRuleOnly)
	ctx := t.Context()

	d := f.scaler.Tick(ctx)
	checkDecision(t, d, 2, 2, fsm.ActionNone, false)
	if d.Mode != fsm.ModeManual || d.Reason != "manual mode: the scaler is idle" {
		t.Errorf("manual: got mode %q reason %q, want manual and the idle reason", d.Mode, d.Reason)
	}

	f.raft.setPolicy(policyWith(func(p *fsm.ScalingPolicy) { p.MaxMissRate = 0.7 }))
	d = f.scaler.Tick(ctx)
	checkDecision(t, d, 2, 2, fsm.ActionNone, false) // 0.6 is below the max 0.7

	f.raft.setPolicy(autoPolicy) // max 0.5
	d = f.scaler.Tick(ctx)
	checkDecision(t, d, 2, 4, fsm.ActionGrow, true)

	f.raft.setPolicy(policyWith(func(p *fsm.ScalingPolicy) { p.MaxMissRate, p.MinMissRate, p.ShrinkRatio = 0.9, 0.8, 0.25 }))
	d = f.scaler.Tick(ctx)
	checkDecision(t, d, 4, 1, fsm.ActionShrink, true)

	if got := len(f.raft.recorded(t)); got != 4 {
		t.Errorf("got %d recorded decisions, want one per tick, 4", got)
	}
}

func TestTickErrors(t *testing.T) {
	t.Run("resize fails", func(t *testing.T) {
		f := newAutoFixture(t, 3, autoPolicy, time.Minute, missTotals(10, 9))
		f.pool.err = errors.New("provisioner: no idle nodes")
		d := f.scaler.Tick(t.Context())
		checkDecision(t, d, 3, 6, fsm.ActionGrow, false)
		ds := f.raft.recorded(t)
		if len(ds) != 1 || ds[0].Applied || ds[0].Error != "provisioner: no idle nodes" {
			t.Errorf("got recorded %+v, want one grow decision, not applied, with the resize error", ds)
		}
		if got := len(f.raft.State().Members); got != 3 {
			t.Errorf("got %d members, want 3", got)
		}
	})

	t.Run("rates fail", func(t *testing.T) {
		f := newAutoFixture(t, 3, autoPolicy, time.Minute, missTotals(10, 9))
		f.rates.err = errors.New("metrics: no history yet")
		d := f.scaler.Tick(t.Context())
		checkDecision(t, d, 3, 3, fsm.ActionNone, false)
		if d.Error != "metrics: no history yet" || d.Gets != 0 || d.MissRate != nil {
			t.Errorf("got %+v, want no figures and the metrics error", d)
		}
		if got := f.pool.called(); len(got) != 0 {
			t.Errorf("Resize calls: got %v, want none", got)
		}
		if got := len(f.raft.recorded(t)); got != 1 {
			t.Errorf("got %d recorded decisions, want 1", got)
		}
	})

	t.Run("recording fails", func(t *testing.T) {
		f := newAutoFixture(t, 3, autoPolicy, time.Minute, missTotals(10, 9))
		f.raft.applyErr = errors.New("not the leader")
		d := f.scaler.Tick(t.Context())
		checkDecision(t, d, 3, 6, fsm.ActionGrow, true)
	})
}

// autoWait fails the test unless cond becomes true within a generous
// deadline, polling; it does not sleep.
func autoWait(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.NewTimer(20 * time.Second)
	defer deadline.Stop()
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-tick.C:
		case <-deadline.C:
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// runAutoScaler starts Run and returns its cancel and done channel.
func runAutoScaler(t *testing.T, a *scaler.AutoScaler) (context.CancelFunc, <-chan struct{}) {
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() {
		defer close(done)
		a.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return cancel, done
}

// awaitDone fails the test unless done closes within a generous deadline.
func awaitDone(t *testing.T, done <-chan struct{}) {
	t.Helper()
	deadline := time.NewTimer(20 * time.Second)
	defer deadline.Stop()
	select {
	case <-done:
	case <-deadline.C:
		t.Fatal("Run did not return after cancel")
	}
}

func TestAutoScalerRun(t *testing.T) {
	f := newAutoFixture(t, 2, autoPolicy, 10*time.Millisecond,
		missTotals(100, 80), // grow 2 -> 4
		missTotals(100, 1),  // shrink 4 -> 2
		missTotals(100, 30), // nothing, from then on
	).configure(seedRuleOnly)
	cancel, done := runAutoScaler(t, f.scaler)
	autoWait(t, "five rounds", func() bool { return f.rates.count() >= 5 })
	f.raft.setPolicy(policyWith(func(p *fsm.ScalingPolicy) { p.MaxMissRate, p.MinMissRate = 0.2, 0.1 }))
	autoWait(t, "a grow under the new policy", func() bool { return len(f.pool.called()) >= 3 })
	cancel()
	awaitDone(t, done)

	ds := f.raft.recorded(t)
	if got := f.rates.count(); len(ds) != got {
		t.Errorf("got %d recorded decisions for %d rounds, want one per round", len(ds), got)
	}
	if got := f.pool.called(); len(got) < 3 || got[0] != 4 || got[1] != 2 || got[2] != 4 {
		t.Errorf("Resize calls: got %v, want 4, 2, then 4 under the new policy", got)
	}
	for i, d := range ds {
		if err := d.Validate(); err != nil {
			t.Errorf("decision %d: %v", i, err)
		}
	}
	for i, w := range f.rates.windows {
		if w != 10*time.Millisecond {
			t.Errorf("Totals call %d: got window %v, want the interval 10ms", i, w)
		}
	}

	// Nothing happens after Run returned.
	n := f.rates.count()
	if got := len(f.raft.recorded(t)); got != n {
		t.Errorf("after Run returned: got %d recorded decisions, want %d", got, n)
	}
}

func TestAutoScalerRunStops(t *testing.T) {
	t.Run("cancelled before the first tick", func(t *testing.T) {
		f := newAutoFixture(t, 2, autoPolicy, time.Hour, missTotals(100, 80))
		cancel, done := runAutoScaler(t, f.scaler)
		cancel()
		awaitDone(t, done)
		if got := f.rates.count(); got != 0 {
			t.Errorf("got %d rounds, want none before the first interval", got)
		}
	})

	t.Run("ready tick after cancel is not acted upon", func(t *testing.T) {
		// With a 1 ns interval the ticker is ready as soon as ctx is; Run
		// must still not start a round with ctx done.
		f := newAutoFixture(t, 2, autoPolicy, time.Nanosecond, missTotals(100, 80))
		for range 200 {
			ctx, cancel := context.WithCancel(t.Context())
			cancel()
			f.scaler.Run(ctx)
		}
		if got := f.rates.count(); got != 0 {
			t.Errorf("got %d rounds with a cancelled context, want none", got)
		}
		if got := len(f.raft.recorded(t)); got != 0 {
			t.Errorf("got %d recorded decisions with a cancelled context, want none", got)
		}
	})
}

func TestNewAutoScalerDefaults(t *testing.T) {
	f := newFakeRaft(2, autoPolicy)
	rates := &fakeRates{script: []metrics.Totals{missTotals(10, 5)}}
	a := scaler.NewAutoScaler(scaler.AutoScalerConfig{}, f, &fakeResizer{raft: f}, rates, autoLogger(t))
	before := time.Now()
	d := a.Tick(t.Context())
	if len(rates.windows) != 1 || rates.windows[0] != time.Minute {
		t.Errorf("window: got %v, want the default 1m", rates.windows)
	}
	if d.Time.Before(before.Add(-time.Second)) || d.Time.After(time.Now().Add(time.Second)) || d.Time.Location() != time.UTC {
		t.Errorf("time: got %v, want about now, in UTC (the default clock)", d.Time)
	}
}

// lateRates is a scaler.RateReader over a stream of 5-second samples that
// reach it lag after they end, as the embedded metrics' scrapes do: Totals
// sums the samples that end in the window and that have arrived by the
// clock's time.
type lateRates struct {
	clock   func() time.Time
	lag     time.Duration
	samples []metrics.Totals // samples[k] ends at start + 5s × (k+1)
	start   time.Time

	mu   sync.Mutex
	nows []time.Time // guarded by mu; the window ends asked for
}

func (r *lateRates) Totals(_ context.Context, now time.Time, window time.Duration) (metrics.Totals, error) {
	r.mu.Lock()
	r.nows = append(r.nows, now)
	r.mu.Unlock()
	arrived := r.clock().Add(-r.lag)
	var t metrics.Totals
	for k, s := range r.samples {
		end := r.start.Add(time.Duration(k+1) * 5 * time.Second)
		if end.After(now.Add(-window)) && !end.After(now) && !end.After(arrived) {
			t.Gets += s.Gets
			t.Misses += s.Misses
			t.Hits += s.Hits
			t.Requests += s.Requests
		}
	}
	return t, nil
}

// TestTickReadsTheWindowLagAgo: with Lag set, each round reads the window
// of one Interval that ended Lag before the round, so the samples still on
// their way are not missing from it, consecutive rounds' windows meet, and
// every sample is counted once. The traffic misses only in the first 15 s
// of each minute (3 of 12 samples, a miss rate of 0.25, above the 0.2
// maximum): a scaler that read up to now would see the minute's hits but
// not its misses and shrink the pool instead of growing it.
func TestTickReadsTheWindowLagAgo(t *testing.T) {
	const (
		interval = time.Minute
		lag      = 15 * time.Second
		rounds   = 5
	)
	start := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	var samples []metrics.Totals
	for k := range rounds * 12 {
		if k%12 < 3 {
			samples = append(samples, missTotals(10, 10))
		} else {
			samples = append(samples, missTotals(10, 0))
		}
	}
	var mu sync.Mutex
	clock := start.Add(interval + lag) // the first minute has just reached the reader
	now := func() time.Time {
		mu.Lock()
		defer mu.Unlock()
		return clock
	}
	rates := &lateRates{clock: now, lag: lag, samples: samples, start: start}
	policy := policyWith(func(p *fsm.ScalingPolicy) { p.MaxMissRate, p.MinMissRate = 0.2, 0.1 })
	raft := newFakeRaft(2, policy)
	resizer := &fakeResizer{raft: raft}
	as := scaler.NewAutoScaler(scaler.AutoScalerConfig{Interval: interval, Lag: lag, Now: now, Name: "m1"},
		raft, resizer, rates, autoLogger(t))

	var gets uint64
	for i := range rounds {
		at := now()
		d := as.Tick(t.Context())
		if !d.Time.Equal(at) || d.By != "m1" {
			t.Errorf("round %d: got time %v by %q, want the round's time %v by m1", i+1, d.Time, d.By, at)
		}
		if d.Gets != 120 || d.MissRate == nil || *d.MissRate != 0.25 {
			t.Errorf("round %d: got %d GETs, %s, want the whole minute: 120 GETs, miss rate 0.25",
				i+1, d.Gets, d.Reason)
		}
		if d.Action == fsm.ActionShrink || (i == 0 && d.Action != fsm.ActionGrow) {
			t.Errorf("round %d: got action %q, want grow (or none at the maximum)", i+1, d.Action)
		}
		gets += d.Gets
		mu.Lock()
		clock = clock.Add(interval)
		mu.Unlock()
	}
	if want := uint64(len(samples) * 10); gets != want {
		t.Errorf("GETs over %d rounds: got %d, want every sample's once, %d", rounds, gets, want)
	}
	rates.mu.Lock()
	defer rates.mu.Unlock()
	for i, end := range rates.nows {
		if want := start.Add(time.Duration(i+1) * interval); !end.Equal(want) {
			t.Errorf("round %d: read the window ending %v, want %v (Lag %v before the round)", i+1, end, want, lag)
		}
	}
}
