package scaler

// Design note: the auto-scaler (DESIGN.md §7).
//
// Decide is the whole rule, a pure function of the pool size, the policy and
// the window's summed counts; AutoScaler only gathers its inputs, resizes
// the pool through the Resizer and records the outcome with
// fsm.RecordDecision, so every replica (and the UI on any of them) sees the
// same history, non-decisions included.
//
// Guards against flapping (issue 13). Decide is the policy the user sets,
// the seed's rule; Tick puts two guards around it, each written into the
// decision log with its reason, unless AutoScalerConfig.SeedRuleOnly:
//
//   - Warm-up discount. A window that does not start after the last change
//     of the pool size and the warm-up after it (Warmup, one Interval by
//     default) measures caches that new owners are still filling, or (read
//     Lag late) the old size: not the steady miss rate of the new size (AWS
//     discounts an instance's warm-up the same way). Nor does a window read
//     while a warm handoff is running (the Warming hook), or the next one.
//     Such a window is recorded Discounted, and the round takes no action.
//     When the size last changed is read from the decision history in the
//     FSM, so a new leader knows it too: an applied resize decision, at its
//     Time; or, for a change the scaler did not make (a manual resize, a
//     failed member), the interval between the last round that saw the old
//     size and the first that saw the new one (taken at its latest).
//   - Shrink guard. A shrink to k nodes is not taken if the pool, the last
//     time it was k nodes in a steady (not discounted) window, measured a
//     miss rate above MaxMissRate: that is where the shrink would bring it
//     back. The estimate is that measurement, from the decision history,
//     if it is at most EstimateHorizon (1 hour) old. The history keeps
//     fsm.MaxDecisions (60) rounds, an hour at the default interval but
//     5 minutes at `up --scaler-interval 5s`; so a round that uses an
//     estimate records it again (EstimateAt keeps its time), and it lasts
//     the horizon whatever the interval. With no such measurement the
//     shrink is taken and the reason says "no estimate". Grows are not
//     guarded: the overshoot of the seed's rule came from cold windows,
//     which the discount skips. Why an hour: a steady load's miss rate at a
//     size does not change within it, and an hour bounds the cost of the
//     guard: when the load falls, the pool stays at the larger size until
//     the measurement is an hour old, then tries the shrink again (at most
//     two resizes an hour if the smaller size is still too small).
//
// Arithmetic. The miss rate is compared with the thresholds directly, with
// no epsilon: a rate equal to a threshold is "not above" and "not below" it,
// so it takes no action. The new size n × ratio is computed exactly, not in
// float64: the ratio is taken as its shortest decimal form (what the user
// typed and what the policy's JSON shows, e.g. 1.5 or 0.6) and multiplied as
// a rational, so 3 × 1.5 is exactly 4.5 (ceil 5) and 5 × 0.6 exactly 3
// (floor 3), never 2.9999999999999996.

import (
	"context"
	"fmt"
	"log/slog"
	"math/big"
	"strconv"
	"strings"
	"time"

	"github.com/memcache/memcache/fsm"
	"github.com/memcache/memcache/metrics"
)

// RateReader reads the pool's summed counts over the window that ends at now
// (implemented by the metrics backends).
type RateReader interface {
	Totals(ctx context.Context, now time.Time, window time.Duration) (metrics.Totals, error)
}

// Resizer resizes the pool to n nodes (implemented by *Pool).
type Resizer interface {
	Resize(ctx context.Context, n int) (fsm.Result, error)
}

// Reasons of the non-decisions that do not depend on the figures.
const (
	reasonManual    = "manual mode: the scaler is idle"
	reasonNoGets    = "no GETs in the window: no miss rate, no action"
	reasonEmptyPool = "the pool is empty: the pool maintainer creates it, no action"
)

// DefaultEstimateHorizon is AutoScalerConfig.EstimateHorizon's default.
const DefaultEstimateHorizon = time.Hour

// Decide is the pure decision rule of DESIGN §7. Given the pool size n, the
// policy p (valid, as the FSM keeps it) and the window's totals t, it
// returns the size to ask for, the action (fsm.ActionGrow, fsm.ActionShrink
// or fsm.ActionNone, with target == n) and a human-readable reason:
//
//   - manual mode, an empty pool, or a window with no GETs (no miss rate; an
//     idle pool is not a miss rate of 0): no action;
//   - miss rate strictly above MaxMissRate: grow to ceil(n × ExpandRatio),
//     at least n+1, at most fsm.MaxNodes (no action at the maximum);
//   - miss rate strictly below MinMissRate: shrink to floor(n × ShrinkRatio),
//     at least one fewer, at least fsm.MinNodes (no action at the minimum);
//   - otherwise, thresholds included: no action.
func Decide(n int, p fsm.ScalingPolicy, t metrics.Totals) (target int, action, reason string) {
	if p.Mode == fsm.ModeManual {
		return n, fsm.ActionNone, reasonManual
	}
	rate, ok := t.MissRate()
	switch {
	case n <= 0:
		return n, fsm.ActionNone, reasonEmptyPool
	case !ok:
		return n, fsm.ActionNone, reasonNoGets
	case rate > p.MaxMissRate:
		rs, ths := formatPair(rate, p.MaxMissRate)
		if n >= fsm.MaxNodes {
			return n, fsm.ActionNone, fmt.Sprintf("miss rate %s > max %s, but at the maximum of %d nodes", rs, ths, fsm.MaxNodes)
		}
		_, up := scaled(n, p.ExpandRatio)
		target = min(max(up, n+1), fsm.MaxNodes)
		return target, fsm.ActionGrow, fmt.Sprintf("miss rate %s > max %s: grow %d -> %d (x%s)", rs, ths, n, target, formatRatio(p.ExpandRatio))
	case rate < p.MinMissRate:
		rs, ths := formatPair(rate, p.MinMissRate)
		if n <= fsm.MinNodes {
			return n, fsm.ActionNone, fmt.Sprintf("miss rate %s < min %s, but at the minimum of %d node", rs, ths, fsm.MinNodes)
		}
		down, _ := scaled(n, p.ShrinkRatio)
		target = max(min(down, n-1), fsm.MinNodes)
		return target, fsm.ActionShrink, fmt.Sprintf("miss rate %s < min %s: shrink %d -> %d (x%s)", rs, ths, n, target, formatRatio(p.ShrinkRatio))
	default:
		// Format the rate with the precision that separates it from the
		// nearer threshold.
		rs, lo := formatPair(rate, p.MinMissRate)
		rs2, hi := formatPair(rate, p.MaxMissRate)
		if len(rs2) > len(rs) {
			rs = rs2
		}
		return n, fsm.ActionNone, fmt.Sprintf("miss rate %s within min %s and max %s: no action", rs, lo, hi)
	}
}

// scaled returns floor and ceil of n × ratio, computed exactly on the
// ratio's shortest decimal form (see the design note). A ratio that is not a
// finite number (which ScalingPolicy.Validate refuses) scales to n.
func scaled(n int, ratio float64) (floor, ceil int) {
	r, ok := new(big.Rat).SetString(strconv.FormatFloat(ratio, 'f', -1, 64))
	if !ok || r.Sign() < 0 {
		return n, n
	}
	r.Mul(r, new(big.Rat).SetInt64(int64(n)))
	q := new(big.Int).Quo(r.Num(), r.Denom()) // truncation is floor for r >= 0
	floor = int(q.Int64())
	if r.IsInt() {
		return floor, floor
	}
	return floor, floor + 1
}

// formatPair formats a miss rate and a threshold with two decimals, or as
// many more (up to six) as it takes for two different values to look
// different: "0.80" and "0.8004", not "0.80" and "0.80".
func formatPair(rate, threshold float64) (string, string) {
	for prec := 2; ; prec++ {
		r := strconv.FormatFloat(rate, 'f', prec, 64)
		th := strconv.FormatFloat(threshold, 'f', prec, 64)
		if r != th || rate == threshold || prec == 6 {
			return r, th
		}
	}
}

// formatRatio formats a ratio with at least one decimal: "2.0", "1.5", "1.25".
func formatRatio(r float64) string {
	s := strconv.FormatFloat(r, 'f', -1, 64)
	if !strings.Contains(s, ".") {
		s += ".0"
	}
	return s
}

// AutoScalerConfig configures the auto-scaler.
type AutoScalerConfig struct {
	// Interval is the time between two rounds, and the window of the miss
	// rate each round reads. If zero, 1 minute.
	Interval time.Duration
	// Now is the clock. If nil, time.Now.
	Now func() time.Time
	// Name is this replica's name, recorded in every decision.
	Name string
	// Lag is how long statistics take to reach the reader (the embedded
	// metrics' scrape period). Each round reads the window that ended Lag
	// ago, so consecutive windows meet and no sample falls between them.
	Lag time.Duration
	// Warmup is how long after a change of the pool size (or a handoff seen
	// running) the miss rate is not read as the steady miss rate of the
	// size: a window that does not start after the change and its warm-up
	// is discounted, and the round takes no action. If zero, Interval: the
	// first steady window after a resize is the one that starts an Interval
	// after it.
	Warmup time.Duration
	// Warming, if not nil, reports whether the pool is still warming up
	// after a resize (a warm handoff of regions to their new owners still
	// running), with a short description for the decision log, such as
	// "handoff of 4 regions to n3: 60% done". A round that finds the pool
	// warming takes no action, nor does the next one whose window includes
	// that time. It is called once in every round whose window has a miss
	// rate (never with SeedRuleOnly), with the round's context, and must
	// return promptly. If nil, the pool is never reported warming (resizes
	// are still discounted for Warmup).
	Warming func(ctx context.Context) (string, bool)
	// EstimateHorizon is how old a measurement may be for the shrink guard
	// to use it as the estimate of the miss rate at a smaller size. If zero,
	// DefaultEstimateHorizon (1 hour).
	EstimateHorizon time.Duration
	// SeedRuleOnly turns the warm-up discount and the shrink guard off:
	// every round acts on Decide alone, as the seed's scaler did, and the
	// pool flaps under a steady load (BENCHMARKS.md, "Flapping
	// simulation"). It is there for comparison; leave it false.
	SeedRuleOnly bool
}

// AutoScaler is the leader's scaler loop: every Interval it reads the
// policy and the pool's miss rate, decides with Decide, resizes the pool
// when the decision says so, and records the decision through Raft.
type AutoScaler struct {
	cfg   AutoScalerConfig
	raft  Applier
	pool  Resizer
	rates RateReader
	log   *slog.Logger
}

// NewAutoScaler returns an auto-scaler. Run it with Run on the leader only.
func NewAutoScaler(cfg AutoScalerConfig, raft Applier, pool Resizer, rates RateReader, log *slog.Logger) *AutoScaler {
	if cfg.Interval <= 0 {
		cfg.Interval = time.Minute
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Warmup <= 0 {
		cfg.Warmup = cfg.Interval
	}
	if cfg.EstimateHorizon <= 0 {
		cfg.EstimateHorizon = DefaultEstimateHorizon
	}
	return &AutoScaler{cfg: cfg, raft: raft, pool: pool, rates: rates, log: log.With("component", "autoscaler")}
}

// Run runs a round (Tick) every Interval, the first one Interval after it
// starts, until ctx is done; then it returns. Its owner starts it on gaining
// leadership and cancels ctx, and waits for Run to return, on losing it. A
// tick that arrives with ctx already done is not acted upon.
func (a *AutoScaler) Run(ctx context.Context) {
	tick := time.NewTicker(a.cfg.Interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		// select picks at random when both are ready: check again.
		if ctx.Err() != nil {
			return
		}
		a.Tick(ctx)
	}
}

// Tick runs one round: it reads the policy from the FSM (so a policy change
// takes effect at the next round) and the pool's totals over the last
// Interval, decides, resizes the pool if the decision says so, and records
// the decision, whatever it is, with one fsm.RecordDecision. Unless
// SeedRuleOnly, the decision is Decide's with the guards of the design
// note: a discounted window takes no action, and a shrink that the
// estimate says would bring the miss rate back above the maximum is not
// taken. It returns the decision as recorded (or as it would have been, if
// recording failed).
func (a *AutoScaler) Tick(ctx context.Context) fsm.Decision {
	now := a.cfg.Now()
	st := a.raft.State()
	n := len(st.Members)
	d := fsm.Decision{
		Time:   now.UTC(), // UTC also drops the monotonic reading: the value JSON keeps
		Mode:   st.Scaling.Mode,
		Nodes:  n,
		Target: n,
		Action: fsm.ActionNone,
		By:     a.cfg.Name,
	}

	end := now.Add(-a.cfg.Lag)
	t, err := a.rates.Totals(ctx, end, a.cfg.Interval)
	if err != nil {
		d.Reason = "cannot read the pool miss rate: no action"
		d.Error = err.Error()
	} else {
		d.Gets = t.Gets
		if r, ok := t.MissRate(); ok {
			d.MissRate = &r
		}
		d.Target, d.Action, d.Reason = Decide(n, st.Scaling, t)
		if !a.cfg.SeedRuleOnly && d.MissRate != nil && n > 0 {
			if kind, why := a.discount(ctx, st.Decisions, n, end.Add(-a.cfg.Interval), end, d.Time); kind != "" {
				d.Discounted = kind
				if st.Scaling.Mode == fsm.ModeManual {
					d.Reason += "; " + why
				} else {
					d.Target, d.Action = n, fsm.ActionNone
					d.Reason = fmt.Sprintf("miss rate %s discounted: %s: no action", strconv.FormatFloat(*d.MissRate, 'f', 2, 64), why)
				}
			}
		}
		if !a.cfg.SeedRuleOnly && d.Action == fsm.ActionShrink {
			a.guardShrink(&d, st)
		}
	}

	if d.Action != fsm.ActionNone {
		if _, err := a.pool.Resize(ctx, d.Target); err != nil {
			d.Error = err.Error()
		} else {
			d.Applied = true
		}
	}

	switch {
	case d.Error != "":
		a.log.Warn("scaler decision failed", "action", d.Action, "nodes", d.Nodes, "target", d.Target, "reason", d.Reason, "err", d.Error)
	case d.Action != fsm.ActionNone:
		a.log.Info("scaler decision", "action", d.Action, "nodes", d.Nodes, "target", d.Target, "reason", d.Reason)
	default:
		a.log.Debug("scaler decision", "action", d.Action, "nodes", d.Nodes, "reason", d.Reason)
	}

	res, err := a.raft.Apply(ctx, fsm.RecordDecision{Decision: d})
	if err == nil {
		err = res.Err
	}
	if err != nil && ctx.Err() == nil {
		a.log.Warn("recording the scaler decision", "err", err)
	}
	return d
}

// discount reports whether the window (start, end] is not the steady miss
// rate of the pool's n nodes, and why: a handoff running now (the Warming
// hook), or, from the decision history ds, a change of the pool size or a
// handoff seen running that the window does not start after, warm-up
// included. (A window that ends before the change, as one read Lag late
// may, measured the old size: not steady at n either.) now is the round's
// time (UTC). kind is "" for a steady window.
func (a *AutoScaler) discount(ctx context.Context, ds []fsm.Decision, n int, start, end, now time.Time) (kind, why string) {
	if a.cfg.Warming != nil {
		if what, warming := a.cfg.Warming(ctx); warming {
			if what == "" {
				what = "the pool reports it"
			}
			return fsm.DiscountHandoff, "handoff still running (" + what + "): warm-up"
		}
	}
	// An event known to lie in [from, to] is newer than every steady
	// window: the window must start at its warm-up's end or later.
	steady := func(to time.Time) bool { return !start.Before(to.Add(a.cfg.Warmup)) }
	if c, ok := lastSizeChange(ds, n, now); ok && !steady(c.to) {
		if !end.After(c.from) {
			return fsm.DiscountResize, "window ends before " + c.String() + ": it measured the old size"
		}
		return fsm.DiscountResize, "window includes " + c.String() + " or its warm-up"
	}
	// The last round that found a handoff running: the windows that
	// include it are not steady either.
	for i := len(ds) - 1; i >= 0; i-- {
		if d := ds[i]; d.Discounted == fsm.DiscountHandoff {
			if !steady(d.Time) {
				return fsm.DiscountAfterHandoff, "window includes the handoff seen running at " + clock(d.Time) + " or its warm-up"
			}
			break
		}
	}
	return "", ""
}

// sizeChange is a change of the pool size, at some time in [from, to].
type sizeChange struct {
	nodes, target int
	from, to      time.Time // equal for the scaler's own resize: its decision's Time
}

func (c sizeChange) String() string {
	if c.from.Equal(c.to) {
		return fmt.Sprintf("the resize %d -> %d at %s", c.nodes, c.target, clock(c.to))
	}
	return fmt.Sprintf("the resize %d -> %d (not the scaler's) between %s and %s", c.nodes, c.target, clock(c.from), clock(c.to))
}

// sizeAfter returns the pool size a decision left: its target if the
// resize was committed, else its size.
func sizeAfter(d fsm.Decision) int {
	if d.Applied {
		return d.Target
	}
	return d.Nodes
}

// lastSizeChange returns the newest change of the pool size that the
// decision history ds shows, given that the pool has n nodes at now: an
// applied resize (at its decision's time), or a change between two rounds
// that the scaler did not make (the size a round saw is not the one the
// round before left). With no history there is nothing to go by.
func lastSizeChange(ds []fsm.Decision, n int, now time.Time) (sizeChange, bool) {
	if len(ds) == 0 {
		return sizeChange{}, false
	}
	if last := ds[len(ds)-1]; sizeAfter(last) != n {
		return sizeChange{nodes: sizeAfter(last), target: n, from: last.Time, to: now}, true
	}
	for i := len(ds) - 1; i >= 0; i-- {
		d := ds[i]
		if d.Applied {
			return sizeChange{nodes: d.Nodes, target: d.Target, from: d.Time, to: d.Time}, true
		}
		if i > 0 && sizeAfter(ds[i-1]) != d.Nodes {
			return sizeChange{nodes: sizeAfter(ds[i-1]), target: d.Nodes, from: ds[i-1].Time, to: d.Time}, true
		}
	}
	return sizeChange{}, false
}

// guardShrink checks the shrink d (as Decide made it) against the estimate
// of the miss rate at its target: the newest steady measurement at that
// size in the history, or an estimate a round carried forward, at most
// EstimateHorizon old. Above the policy's maximum, the shrink is not taken.
// d records the estimate, or that there was none, and the reason says which.
func (a *AutoScaler) guardShrink(d *fsm.Decision, st fsm.State) {
	k := d.Target
	d.EstimateNodes = k
	est, ok := estimateAt(st.Decisions, k, d.Time, a.cfg.EstimateHorizon)
	if !ok {
		d.Reason += fmt.Sprintf("; no estimate at %s (no steady window at that size in the last %s)", nodes(k), a.cfg.EstimateHorizon)
		return
	}
	d.Estimate, d.EstimateFrom, d.EstimateAt = &est.rate, est.from, est.at
	es, ths := formatPair(est.rate, st.Scaling.MaxMissRate)
	if est.rate > st.Scaling.MaxMissRate {
		d.Reason += fmt.Sprintf(" not taken: at %s the pool measured miss rate %s > max %s at %s (estimate)", nodes(k), es, ths, clock(est.at))
		d.Target, d.Action = d.Nodes, fsm.ActionNone
		return
	}
	d.Reason += fmt.Sprintf("; at %s the pool measured miss rate %s <= max %s at %s (estimate)", nodes(k), es, ths, clock(est.at))
}

// estimate is a miss rate measured at some pool size.
type estimate struct {
	rate float64
	at   time.Time // when it was measured (the measuring round's time)
	from string    // for people
}

// estimateAt returns the newest estimate of the miss rate at k nodes in the
// history ds no older than horizon at now: a round at k nodes whose window
// was steady, or a round that carried an estimate for k forward.
func estimateAt(ds []fsm.Decision, k int, now time.Time, horizon time.Duration) (estimate, bool) {
	for i := len(ds) - 1; i >= 0; i-- {
		d := ds[i]
		switch {
		case d.Nodes == k && d.MissRate != nil && d.Discounted == "":
			if now.Sub(d.Time) > horizon {
				return estimate{}, false
			}
			return estimate{rate: *d.MissRate, at: d.Time, from: fmt.Sprintf("measured at %s at %s", nodes(k), clock(d.Time))}, true
		case d.EstimateNodes == k && d.Estimate != nil:
			if now.Sub(d.EstimateAt) > horizon {
				return estimate{}, false
			}
			return estimate{rate: *d.Estimate, at: d.EstimateAt, from: d.EstimateFrom}, true
		}
	}
	return estimate{}, false
}

// nodes formats a pool size: "1 node", "4 nodes".
func nodes(n int) string {
	if n == 1 {
		return "1 node"
	}
	return fmt.Sprintf("%d nodes", n)
}

// clock formats a decision time for a reason: "14:02:05 UTC".
func clock(t time.Time) string { return t.UTC().Format("15:04:05 UTC") }
