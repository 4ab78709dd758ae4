package scaler_test

// The flapping simulation (issue 13): a deterministic pool of real
// node.Cache instances under a steady Zipf read load, resized by the real
// AutoScaler through a real FSM, on a simulated clock. BENCHMARKS.md,
// "Flapping simulation", records its figures:
//
//	go test -count=1 -v -run 'TestFlappingSimulation' ./scaler/

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/memcache/memcache/fsm"
	"github.com/memcache/memcache/internal/pool"
	"github.com/memcache/memcache/metrics"
	"github.com/memcache/memcache/node"
	"github.com/memcache/memcache/region"
	"github.com/memcache/memcache/scaler"
)

// simConfig is a simulated pool and its load.
type simConfig struct {
	keys       int     // distinct keys, read with a Zipf law
	itemBytes  int     // the size of every image
	capacityMB int     // cache capacity of every node
	skew       float64 // the Zipf exponent s (> 1)
	reads      int     // reads per minute, steady
	minutes    int     // rounds of the scaler, one a minute
	seed       uint64  // of the load
	warm       bool    // moved regions arrive warm (a handoff, hottest first), not cold
	startNodes int     // the pool's size at the start, its caches empty; if zero, 1
	policy     fsm.ScalingPolicy
	seedOnly   bool // AutoScalerConfig.SeedRuleOnly
}

// issue13 is the measurement of issue 13 on a one-minute clock: 4 MB
// nodes, 400 keys of 40 KB read with skew 1.1, the policy max 0.3 min 0.1
// expand 2 shrink 0.5, and a pool that starts with one cold node.
//
// Reads per window. The measurement read 750 GETs a window (150 req/s over
// its 5 s interval) and flapped; this model, with 750 reads a window, does
// not: its resizes are instantaneous and a cold owner fills at its first
// miss, and its steady miss rates (0.23 at 1 node, 0.11 at 2, 0.005 at 4,
// 0 at 8) sit inside the 0.1..0.3 band. What makes the seed's rule flap is
// the windows that are not steady: cold owners after a resize and the noise
// of a short window. With 150 reads a window the model has both, and the
// seed's rule flaps as the measurement did: seed 12 goes
// 1 -> 2 -> 4 -> 8 -> 4 -> 2 -> 1 -> 2 -> 4 -> 8, the measurement's sequence.
var issue13 = simConfig{
	keys: 400, itemBytes: 40 << 10, capacityMB: 4, skew: 1.1, reads: 150, minutes: 30, seed: 12,
	policy: fsm.ScalingPolicy{Mode: fsm.ModeAuto, MaxMissRate: 0.3, MinMissRate: 0.1, ExpandRatio: 2, ShrinkRatio: 0.5},
}

// simPool is a pool of cache nodes, one node.Cache each, whose members and
// region map are the real FSM's (region.Assign in Apply). It is the
// scaler's Resizer and, through its per-minute counts, its RateReader.
type simPool struct {
	cfg    simConfig
	raft   *fsmApplier
	caches map[string]*node.Cache // by member id
	nextID int
	value  []byte
	keys   []string
	region []int // region of keys[k]
	zipf   *rand.Zipf
	start  time.Time
	counts []metrics.Totals // counts[m] is minute m+1, ending at start + (m+1) minutes
}

func newSimPool(t *testing.T, cfg simConfig, start time.Time) *simPool {
	p := &simPool{cfg: cfg, raft: &fsmApplier{f: fsm.New()}, caches: map[string]*node.Cache{},
		value: make([]byte, cfg.itemBytes), start: start}
	for k := range cfg.keys {
		key := fmt.Sprintf("img-%03d", k)
		p.keys = append(p.keys, key)
		p.region = append(p.region, region.Of(key))
	}
	p.zipf = rand.NewZipf(rand.New(rand.NewPCG(cfg.seed, cfg.seed^0x9e3779b97f4a7c15)), cfg.skew, 1, uint64(cfg.keys-1))
	if _, err := p.raft.Apply(t.Context(), fsm.SetCache{Config: fsm.CacheConfig{CapacityMB: cfg.capacityMB, Policy: fsm.PolicyLRU}}); err != nil {
		t.Fatal(err)
	}
	if _, err := p.raft.Apply(t.Context(), fsm.SetScaling{Policy: cfg.policy}); err != nil {
		t.Fatal(err)
	}
	return p
}

// Resize implements scaler.Resizer as the Pool does: growing appends new
// (empty) nodes, shrinking removes the most recently added; the FSM
// reassigns the regions. A node that loses a region drops its entries; a
// region's new owner starts cold, or, with cfg.warm, is filled from the
// previous owner, coldest first so that the hottest are the most recent.
func (p *simPool) Resize(ctx context.Context, n int) (fsm.Result, error) {
	st := p.raft.State()
	members := append([]fsm.Member(nil), st.Members...)
	for len(members) < n {
		p.nextID++
		id := fmt.Sprintf("sim-%d", p.nextID)
		c, err := node.NewCache(pool.CacheConfig{CapacityMB: p.cfg.capacityMB, Policy: pool.LRU})
		if err != nil {
			return fsm.Result{}, err
		}
		p.caches[id] = c
		members = append(members, fsm.Member{ID: id, HTTP: "http://" + id + ".test:7000"})
	}
	members = members[:n]
	res, err := p.raft.Apply(ctx, fsm.Resize{Members: members, Epoch: st.Epoch})
	if err != nil {
		return res, err
	}
	next := p.raft.State().Regions
	if p.cfg.warm {
		for k := len(p.keys) - 1; k >= 0; k-- { // coldest first
			r := p.region[k]
			from, to := st.Regions[r], next[r]
			if from == "" || from == to {
				continue
			}
			if it, ok, _ := p.caches[from].Get(p.keys[k]); ok {
				p.caches[to].Add(p.keys[k], it)
			}
		}
	}
	owned := map[string]uint16{}
	for r, id := range next {
		owned[id] |= 1 << r
	}
	for id, c := range p.caches {
		if _, in := owned[id]; !in {
			delete(p.caches, id) // given back to the provisioner: its cache is gone
			continue
		}
		c.SetOwned(owned[id], 0)
	}
	return res, nil
}

// minute runs one minute of the steady load: every read goes to the
// owner of the key's region, and a miss is filled into it, as the
// frontend does. The node's own counters are not used: the pool counts.
func (p *simPool) minute() {
	regions := p.raft.State().Regions
	var t metrics.Totals
	for range p.cfg.reads {
		k := p.zipf.Uint64()
		c := p.caches[regions[p.region[k]]]
		_, hit, err := c.Get(p.keys[k])
		if err != nil {
			panic(err) // the owner refused its own region: a bug of the simulation
		}
		t.Gets++
		t.Requests++
		if hit {
			t.Hits++
			continue
		}
		t.Misses++
		if _, err := c.Add(p.keys[k], node.Item{Value: p.value}); err != nil {
			panic(err)
		}
	}
	p.counts = append(p.counts, t)
}

// Totals implements scaler.RateReader: the minutes that end in the window.
func (p *simPool) Totals(_ context.Context, now time.Time, window time.Duration) (metrics.Totals, error) {
	var t metrics.Totals
	for m, c := range p.counts {
		end := p.start.Add(time.Duration(m+1) * time.Minute)
		if end.After(now.Add(-window)) && !end.After(now) {
			t.Gets += c.Gets
			t.Misses += c.Misses
			t.Hits += c.Hits
			t.Requests += c.Requests
		}
	}
	return t, nil
}

// simRun is what a simulation did: the pool size and the scaler's
// decision at every minute.
type simRun struct {
	sizes     []int // sizes[m]: the pool during minute m+1
	decisions []fsm.Decision
}

// resizes returns the sizes the pool went through, starting size first.
func (r simRun) path() []int {
	path := []int{r.sizes[0]}
	for _, d := range r.decisions {
		if d.Applied {
			path = append(path, d.Target)
		}
	}
	return path
}

// directionChanges counts the times a resize goes the other way from the
// one before.
func (r simRun) directionChanges() int {
	p, changes := r.path(), 0
	for i := 2; i < len(p); i++ {
		if (p[i] > p[i-1]) != (p[i-1] > p[i-2]) {
			changes++
		}
	}
	return changes
}

// runSim starts the pool with one cold node and runs cfg.minutes minutes of
// load, a scaler round at the end of each.
func runSim(t *testing.T, cfg simConfig) simRun {
	t.Helper()
	start := time.Date(2026, 1, 5, 14, 0, 0, 0, time.UTC)
	p := newSimPool(t, cfg, start)
	if _, err := p.Resize(t.Context(), max(cfg.startNodes, 1)); err != nil {
		t.Fatal(err)
	}
	now := start
	as := scaler.NewAutoScaler(scaler.AutoScalerConfig{Interval: time.Minute, Now: func() time.Time { return now },
		Name: "sim", SeedRuleOnly: cfg.seedOnly}, p.raft, p, p, autoLogger(t))
	var run simRun
	for m := range cfg.minutes {
		run.sizes = append(run.sizes, len(p.raft.State().Members))
		p.minute()
		now = start.Add(time.Duration(m+1) * time.Minute)
		d := as.Tick(t.Context())
		if d.Error != "" {
			t.Fatalf("minute %d: the round failed: %+v", m+1, d)
		}
		run.decisions = append(run.decisions, d)
	}
	if got := len(p.raft.State().Decisions); got != cfg.minutes {
		t.Fatalf("the FSM recorded %d decisions, want one a round, %d (a refused decision?)", got, cfg.minutes)
	}
	return run
}

// logRun prints the run, one line a minute, and its summary.
func logRun(t *testing.T, name string, r simRun) {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "%s: sizes %v, %d resizes, %d direction changes\n", name, r.path(), len(r.path())-1, r.directionChanges())
	for m, d := range r.decisions {
		mark := ""
		if d.Discounted != "" {
			mark = " (discounted)"
		}
		if d.Estimate != nil {
			mark += fmt.Sprintf(" (estimate %.2f at %d)", *d.Estimate, d.EstimateNodes)
		}
		fmt.Fprintf(&b, "  min %2d  nodes %d  miss %.3f  %-6s%s  %s\n", m+1, r.sizes[m], *d.MissRate, d.Action, mark, d.Reason)
	}
	t.Log(b.String())
}

// checkSettles fails the test unless the run settles as issue 13 asks: at
// most three resizes, never through twice the final size, and no
// up-down-up (or down-up-down) sequence; and unless it does not overshoot:
// it never goes beyond one expand step above right, the smallest size whose
// steady miss rate is within the maximum (that one step is the grow a new
// pool's first window may ask for: it is cold, and there is no earlier
// resize to discount it by).
func checkSettles(t *testing.T, r simRun, right int) {
	t.Helper()
	path := r.path()
	final := path[len(path)-1]
	if n := len(path) - 1; n > 3 {
		t.Errorf("got %d resizes %v, want at most 3", n, path)
	}
	for _, s := range path {
		if s >= 2*final {
			t.Errorf("the pool went through %d nodes, twice its final %d or more (sizes %v)", s, final, path)
			break
		}
	}
	if c := r.directionChanges(); c > 0 {
		t.Errorf("got %d direction changes %v, want none", c, path)
	}
	limit := int(issue13.policy.ExpandRatio) * right
	for _, s := range path {
		if s > limit {
			t.Errorf("the pool went through %d nodes (sizes %v), want at most %d: one expand step above %d, the smallest size whose steady miss rate is within the maximum (overshoot)",
				s, path, limit, right)
			break
		}
	}
}

// rightSize returns the smallest pool size whose steady miss rate under
// cfg's load is within the policy's maximum, and the steady rates of the
// sizes 1, 2, 4 and 8: each the mean over minutes 11..30 of a pool held at that size
// (manual mode), after its caches warmed up.
func rightSize(t *testing.T, cfg simConfig) (int, map[int]float64) {
	t.Helper()
	rates, right := map[int]float64{}, 0
	for n := fsm.MinNodes; n <= fsm.MaxNodes; n *= 2 {
		held := cfg
		held.startNodes, held.seedOnly = n, true
		held.policy.Mode = fsm.ModeManual
		r := runSim(t, held)
		var sum float64
		for _, d := range r.decisions[10:] {
			sum += *d.MissRate
		}
		rates[n] = sum / float64(len(r.decisions)-10)
		if right == 0 && rates[n] <= cfg.policy.MaxMissRate {
			right = n
		}
	}
	if right == 0 {
		right = fsm.MaxNodes
	}
	return right, rates
}

// simSeeds is how many load seeds the simulation runs besides issue13's.
const simSeeds = 20

// TestFlappingSimulation: under the steady load of issue 13's measurement,
// the seed's rule alone flaps, and the guarded scaler settles: at most
// three resizes, never through twice its final size, no up-down-up. It
// runs issue13 (seed 12), logged minute by minute, and then the same load
// with simSeeds other seeds, cold and warm handoff, logged one line each.
func TestFlappingSimulation(t *testing.T) {
	t.Run("seed rule alone", func(t *testing.T) {
		cfg := issue13
		cfg.seedOnly = true
		r := runSim(t, cfg)
		logRun(t, "seed rule alone", r)
		if c := r.directionChanges(); c < 2 {
			t.Errorf("got %d direction changes %v, want the seed's rule to flap (at least 2)", c, r.path())
		}
	})
	right, steady := rightSize(t, issue13)
	t.Logf("steady miss rates of a pool held at a size (minutes 11..30): 1 node %.3f, 2 nodes %.3f, 4 nodes %.3f, 8 nodes %.3f; the smallest within max %.2f: %d",
		steady[1], steady[2], steady[4], steady[8], issue13.policy.MaxMissRate, right)
	t.Run("guarded", func(t *testing.T) {
		r := runSim(t, issue13)
		logRun(t, "guarded", r)
		checkSettles(t, r, right)
	})
	t.Run("guarded, warm handoff", func(t *testing.T) {
		cfg := issue13
		cfg.warm = true
		r := runSim(t, cfg)
		logRun(t, "guarded, warm handoff", r)
		checkSettles(t, r, right)
	})
	t.Run("seeds", func(t *testing.T) {
		var b strings.Builder
		var flapped, resizes [2]int
		for seed := uint64(1); seed <= simSeeds; seed++ {
			fmt.Fprintf(&b, "seed %2d:", seed)
			for _, warm := range []bool{false, true} {
				cfg := issue13
				cfg.seed, cfg.warm, cfg.seedOnly = seed, warm, true
				alone := runSim(t, cfg)
				cfg.seedOnly = false
				guarded := runSim(t, cfg)
				right, _ := rightSize(t, cfg)
				t.Run(fmt.Sprintf("seed %d warm %v", seed, warm), func(t *testing.T) { checkSettles(t, guarded, right) })
				w := 0
				if warm {
					w = 1
					b.WriteString("   warm:")
				}
				if alone.directionChanges() >= 2 {
					flapped[w]++
				}
				resizes[w] += len(alone.path()) - 1
				fmt.Fprintf(&b, " seed rule %-26s guarded %-8s", fmt.Sprint(alone.path()), fmt.Sprint(guarded.path()))
			}
			b.WriteString("\n")
		}
		fmt.Fprintf(&b, "seed rule alone: flapped (2+ direction changes) in %d of %d cold runs, %d of %d warm; %d and %d resizes in all",
			flapped[0], simSeeds, flapped[1], simSeeds, resizes[0], resizes[1])
		t.Log(b.String())
	})
}
