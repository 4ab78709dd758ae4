package scaler

// Design note: the auto-scaler (DESIGN.md §7).
//
// Decide is the whole rule, a pure function of the pool size, the policy and
// the window's summed counts; AutoScaler only gathers its inputs, resizes
// the pool through the Resizer and records the outcome with
// fsm.RecordDecision, so every replica (and the UI on any of them) sees the
// same history, non-decisions included.
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
// the decision, whatever it is, with one fsm.RecordDecision. It returns the
// decision as recorded (or as it would have been, if recording failed).
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

	t, err := a.rates.Totals(ctx, now.Add(-a.cfg.Lag), a.cfg.Interval)
	if err != nil {
		d.Reason = "cannot read the pool miss rate: no action"
		d.Error = err.Error()
	} else {
		d.Gets = t.Gets
		if r, ok := t.MissRate(); ok {
			d.MissRate = &r
		}
		d.Target, d.Action, d.Reason = Decide(n, st.Scaling, t)
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
