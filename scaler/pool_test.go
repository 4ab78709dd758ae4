package scaler_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/memcache/memcache/fsm"
	"github.com/memcache/memcache/gossip"
	"github.com/memcache/memcache/internal/waitfor"
	"github.com/memcache/memcache/region"
	"github.com/memcache/memcache/scaler"
)

// poolWait bounds every condition wait of the Pool tests: generous, for a
// busy 2-core machine running the race detector.
const poolWait = 30 * time.Second

// poolEnv is a Pool over real parts: a real FSM fed as Raft would
// (fsmApplier), a real gossip cluster of in-process members, and the
// Static provisioner over the manager's gossip view, wrapped to record
// what the Pool asks of it.
type poolEnv struct {
	t     *testing.T
	mgr   *gossip.Gossip
	nodes map[string]*gossip.Gossip
	raft  *flakyApplier
	prov  *recordingProvisioner
}

func newPoolEnv(t *testing.T, idle ...string) *poolEnv {
	t.Helper()
	env := &poolEnv{t: t, nodes: map[string]*gossip.Gossip{}}
	env.mgr = env.gossip("mgr", gossip.RoleManager)
	for _, id := range idle {
		env.nodes[id] = env.gossip(id, gossip.RoleNode)
	}
	waitfor.True(t, poolWait, "the manager to see every node alive", func() bool {
		return len(env.alive()) == len(idle)
	})
	env.raft = &flakyApplier{fsmApplier: fsmApplier{f: fsm.New()}}
	env.prov = &recordingProvisioner{p: scaler.NewStatic(env.mgr), raft: env.raft}
	return env
}

// gossip starts a member with test timings joined to the manager's gossip.
func (env *poolEnv) gossip(id string, role gossip.Role) *gossip.Gossip {
	env.t.Helper()
	var join []string
	if env.mgr != nil {
		join = []string{env.mgr.Addr()}
	}
	g, err := gossip.New(gossip.Config{BindAddr: "127.0.0.1:0", Join: join, Fast: true,
		Meta: gossip.Meta{Role: role, ID: id, HTTP: "http://" + id + ".invalid:7000"}}, autoLogger(env.t))
	if err != nil {
		env.t.Fatal(err)
	}
	env.t.Cleanup(func() { g.Close() })
	return g
}

// alive returns the ids of the nodes alive in the manager's gossip view.
func (env *poolEnv) alive() []string {
	var ids []string
	for _, m := range env.mgr.Members() {
		if m.Meta.Role == gossip.RoleNode && m.State == gossip.StateAlive {
			ids = append(ids, m.Meta.ID)
		}
	}
	return ids
}

func (env *poolEnv) pool(cfg scaler.PoolConfig) *scaler.Pool {
	return scaler.NewPool(cfg, env.raft, env.mgr, env.prov, autoLogger(env.t))
}

// run runs p.Run until the test ends, and waits for it to return.
func (env *poolEnv) run(p *scaler.Pool) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); p.Run(ctx) }()
	env.t.Cleanup(func() { cancel(); <-done })
}

// memberIDs returns the ids of the pool's members, in order.
func memberIDs(st fsm.State) []string {
	var ids []string
	for _, m := range st.Members {
		ids = append(ids, m.ID)
	}
	return ids
}

// flakyApplier is a fsmApplier that can refuse the next command of a type,
// as a lost leadership would.
type flakyApplier struct {
	fsmApplier
	mu       sync.Mutex
	failNext map[fsm.CommandType]error // guarded by mu
	applied  []fsm.Command             // guarded by mu; what reached the FSM
}

func (a *flakyApplier) Apply(ctx context.Context, cmd fsm.Command) (fsm.Result, error) {
	a.mu.Lock()
	if err := a.failNext[cmd.Type()]; err != nil {
		delete(a.failNext, cmd.Type())
		a.mu.Unlock()
		return fsm.Result{}, err
	}
	a.applied = append(a.applied, cmd)
	a.mu.Unlock()
	return a.fsmApplier.Apply(ctx, cmd)
}

func (a *flakyApplier) fail(typ fsm.CommandType, err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.failNext == nil {
		a.failNext = map[fsm.CommandType]error{}
	}
	a.failNext[typ] = err
}

func (a *flakyApplier) commands() []fsm.Command {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.applied)
}

// acquireCall is one Provisioner.Acquire call.
type acquireCall struct {
	n       int
	exclude []string
}

// releaseCall is one Provisioner.Release call, with the pool as the FSM
// held it then.
type releaseCall struct {
	ids     []string
	members []string
}

// recordingProvisioner passes calls to a real provisioner and records them.
type recordingProvisioner struct {
	p    scaler.Provisioner
	raft *flakyApplier

	mu       sync.Mutex
	acquires []acquireCall // guarded by mu
	releases []releaseCall // guarded by mu
}

func (r *recordingProvisioner) Acquire(ctx context.Context, n int, exclude []string) ([]scaler.Node, error) {
	r.mu.Lock()
	r.acquires = append(r.acquires, acquireCall{n, slices.Clone(exclude)})
	r.mu.Unlock()
	return r.p.Acquire(ctx, n, exclude)
}

func (r *recordingProvisioner) Release(ctx context.Context, ids []string) error {
	r.mu.Lock()
	r.releases = append(r.releases, releaseCall{slices.Clone(ids), memberIDs(r.raft.State())})
	r.mu.Unlock()
	return r.p.Release(ctx, ids)
}

func (r *recordingProvisioner) Close() error { return r.p.Close() }

func (r *recordingProvisioner) calls() ([]acquireCall, []releaseCall) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.acquires), slices.Clone(r.releases)
}

// TestPoolResize: Resize grows the pool with nodes from the provisioner,
// excluding the members, appended in the order it gives them; shrinks it by
// the most recently added members and releases them once the change is
// committed; leaves a pool of the right size alone; and refuses sizes
// outside 1..8. A grow the provisioner cannot supply, or whose commit
// fails, changes nothing and gives back what it took.
func TestPoolResize(t *testing.T) {
	env := newPoolEnv(t, "n4", "n2", "n1", "n3")
	p := env.pool(scaler.PoolConfig{AcquireTimeout: poolWait})
	ctx := t.Context()

	for _, n := range []int{0, fsm.MaxNodes + 1, -1} {
		if _, err := p.Resize(ctx, n); !errors.Is(err, scaler.ErrInvalidSize) {
			t.Errorf("Resize(%d): got %v, want ErrInvalidSize", n, err)
		}
	}
	if acq, _ := env.prov.calls(); len(acq) != 0 || len(env.raft.commands()) != 0 {
		t.Fatalf("refused sizes: got %d acquires and commands %v, want none", len(acq), env.raft.commands())
	}

	res, err := p.Resize(ctx, 2)
	st := env.raft.State()
	if err != nil || res.Err != nil || res.Epoch != 1 || res.Index != st.Index {
		t.Fatalf("Resize(2) from empty: got %+v, %v, want epoch 1 at index %d", res, err, st.Index)
	}
	if got := memberIDs(st); !slices.Equal(got, []string{"n1", "n2"}) {
		t.Fatalf("members after Resize(2): got %q, want [n1 n2] (the provisioner's first two)", got)
	}
	if got := st.Regions.Counts(); got["n1"] != 8 || got["n2"] != 8 {
		t.Errorf("regions after Resize(2): got %v, want 8 each", got)
	}

	before := env.raft.State()
	res, err = p.Resize(ctx, 2)
	if err != nil || res.Index != before.Index || res.Epoch != before.Epoch {
		t.Errorf("Resize(2) at 2: got %+v, %v, want the current index %d and epoch %d", res, err, before.Index, before.Epoch)
	}
	if n := len(env.raft.commands()); n != 1 {
		t.Errorf("Resize(2) at 2: got %d commands in all, want still 1", n)
	}

	if _, err := p.Resize(ctx, 4); err != nil {
		t.Fatalf("Resize(4): %v", err)
	}
	grown := env.raft.State()
	if got := memberIDs(grown); !slices.Equal(got, []string{"n1", "n2", "n3", "n4"}) {
		t.Fatalf("members after Resize(4): got %q, want [n1 n2 n3 n4] (new ones appended)", got)
	}
	if grown.Epoch != 2 || region.Moved(before.Regions, grown.Regions) != 8 {
		t.Errorf("Resize(4): got epoch %d, %d regions moved, want epoch 2, 8 moved", grown.Epoch, region.Moved(before.Regions, grown.Regions))
	}
	acq, rel := env.prov.calls()
	if want := []acquireCall{{2, nil}, {2, []string{"n1", "n2"}}}; !equalAcquires(acq, want) {
		t.Errorf("acquires: got %v, want %v", acq, want)
	}
	if len(rel) != 0 {
		t.Errorf("releases while growing: got %v, want none", rel)
	}

	// The provisioner has no fifth node: nothing changes.
	if _, err := p.Resize(ctx, 5); !errors.Is(err, scaler.ErrNoCapacity) {
		t.Errorf("Resize(5) with 4 nodes in all: got %v, want ErrNoCapacity", err)
	}
	if _, err := p.Resize(ctx, fsm.MaxNodes); !errors.Is(err, scaler.ErrNoCapacity) {
		t.Errorf("Resize(%d) with 4 nodes in all: got %v, want ErrNoCapacity (a valid size)", fsm.MaxNodes, err)
	}
	if st := env.raft.State(); st.Index != grown.Index || !slices.Equal(memberIDs(st), memberIDs(grown)) {
		t.Errorf("after a grow without capacity: got members %q index %d, want %q index %d", memberIDs(st), st.Index, memberIDs(grown), grown.Index)
	}

	res, err = p.Resize(ctx, 1)
	st = env.raft.State()
	if err != nil || res.Epoch != 3 || !slices.Equal(memberIDs(st), []string{"n1"}) {
		t.Fatalf("Resize(1): got %+v, %v, members %q, want epoch 3, [n1] (the last added go first)", res, err, memberIDs(st))
	}
	_, rel = env.prov.calls()
	if len(rel) != 1 || !slices.Equal(rel[0].ids, []string{"n2", "n3", "n4"}) || !slices.Equal(rel[0].members, []string{"n1"}) {
		t.Errorf("releases after Resize(1): got %+v, want [n2 n3 n4] released once the pool is [n1]", rel)
	}

	// A grow whose commit fails gives its node back.
	lost := errors.New("leadership lost")
	env.raft.fail(fsm.CmdResize, lost)
	if _, err := p.Resize(ctx, 2); !errors.Is(err, lost) {
		t.Errorf("Resize(2) with a failing commit: got %v, want %v", err, lost)
	}
	if got := memberIDs(env.raft.State()); !slices.Equal(got, []string{"n1"}) {
		t.Errorf("members after a failed commit: got %q, want [n1]", got)
	}
	_, rel = env.prov.calls()
	if len(rel) != 2 || !slices.Equal(rel[1].ids, []string{"n2"}) {
		t.Errorf("releases after a failed grow: got %+v, want n2 given back", rel)
	}

	// A shrink whose commit fails releases nothing.
	if _, err := p.Resize(ctx, 3); err != nil {
		t.Fatalf("Resize(3): %v", err)
	}
	env.raft.fail(fsm.CmdResize, lost)
	if _, err := p.Resize(ctx, 1); !errors.Is(err, lost) {
		t.Errorf("Resize(1) with a failing commit: got %v, want %v", err, lost)
	}
	if got := memberIDs(env.raft.State()); len(got) != 3 {
		t.Errorf("members after a failed shrink: got %q, want still 3", got)
	}
	if _, rel = env.prov.calls(); len(rel) != 2 {
		t.Errorf("releases after a failed shrink: got %+v, want none more", rel[2:])
	}
}

func equalAcquires(a, b []acquireCall) bool {
	return slices.EqualFunc(a, b, func(x, y acquireCall) bool {
		return x.n == y.n && slices.Equal(x.exclude, y.exclude)
	})
}

// TestPoolRunCreatesTheInitialPool: Run fills an empty pool with
// InitialNodes nodes.
func TestPoolRunCreatesTheInitialPool(t *testing.T) {
	env := newPoolEnv(t, "n1", "n2", "n3")
	env.run(env.pool(scaler.PoolConfig{InitialNodes: 2, DeadGrace: time.Hour, AcquireTimeout: poolWait}))
	waitfor.True(t, poolWait, "the initial pool of 2", func() bool { return len(env.raft.State().Members) > 0 })
	if got := memberIDs(env.raft.State()); !slices.Equal(got, []string{"n1", "n2"}) {
		t.Errorf("initial pool: got %q, want [n1 n2]", got)
	}
}

// TestPoolRunReplacesAMemberThatLeaves: a member that leaves gossip is
// replaced at once by an idle node, which takes its place and exactly its
// regions (the others keep theirs); the member is released. When no node is
// idle, the next member to leave is removed and its regions go to the
// survivors.
func TestPoolRunReplacesAMemberThatLeaves(t *testing.T) {
	env := newPoolEnv(t, "n1", "n2", "n3", "n4")
	p := env.pool(scaler.PoolConfig{DeadGrace: time.Hour, AcquireTimeout: poolWait})
	if _, err := p.Resize(t.Context(), 3); err != nil {
		t.Fatal(err)
	}
	before := env.raft.State()
	env.run(p)

	env.nodes["n2"].Close()
	var after fsm.State
	waitfor.True(t, poolWait, "n2 replaced", func() bool {
		after = env.raft.State()
		_, in := after.Member("n2")
		return !in
	})
	if got := memberIDs(after); !slices.Equal(got, []string{"n1", "n4", "n3"}) {
		t.Errorf("members after n2 left: got %q, want [n1 n4 n3] (n4 in n2's place)", got)
	}
	for r := range region.Count {
		want := before.Regions[r]
		if want == "n2" {
			want = "n4"
		}
		if after.Regions[r] != want {
			t.Errorf("region %d: got owner %q, want %q (only n2's regions go to n4)", r, after.Regions[r], want)
		}
	}
	waitfor.True(t, poolWait, "n2 released", func() bool {
		_, rel := env.prov.calls()
		return len(rel) == 1
	})
	if _, rel := env.prov.calls(); !slices.Equal(rel[0].ids, []string{"n2"}) {
		t.Errorf("released %q, want [n2]", rel[0].ids)
	}

	// No idle node is left: n3 leaves and is not replaced.
	env.nodes["n3"].Close()
	waitfor.True(t, poolWait, "n3 removed", func() bool { return len(env.raft.State().Members) == 2 })
	st := env.raft.State()
	if got := memberIDs(st); !slices.Equal(got, []string{"n1", "n4"}) {
		t.Errorf("members after n3 left: got %q, want [n1 n4]", got)
	}
	if c := st.Regions.Counts(); c["n1"] != 8 || c["n4"] != 8 {
		t.Errorf("regions after n3 left: got %v, want 8 each for n1 and n4", c)
	}
}

// TestPoolRunReplacesAMemberMissingForDeadGrace: a member that gossip has
// never reported (so no failure event will come) is replaced once it has
// been missing for DeadGrace, and not before.
func TestPoolRunReplacesAMemberMissingForDeadGrace(t *testing.T) {
	const grace = 2 * time.Second
	env := newPoolEnv(t, "n1", "n2")
	ghost := fsm.Member{ID: "ghost", HTTP: "http://ghost.invalid:7000"}
	if _, err := env.raft.Apply(t.Context(), fsm.Resize{Members: []fsm.Member{{ID: "n1", HTTP: "http://n1.invalid:7000"}, ghost}}); err != nil {
		t.Fatal(err)
	}
	before := env.raft.State()
	start := time.Now()
	env.run(env.pool(scaler.PoolConfig{DeadGrace: grace, AcquireTimeout: poolWait}))
	waitfor.True(t, poolWait, "ghost replaced", func() bool {
		_, in := env.raft.State().Member("ghost")
		return !in
	})
	if took := time.Since(start); took < grace {
		t.Errorf("ghost replaced after %v, want no sooner than the dead grace %v", took, grace)
	}
	st := env.raft.State()
	if got := memberIDs(st); !slices.Equal(got, []string{"n1", "n2"}) {
		t.Errorf("members: got %q, want [n1 n2] (n2 in ghost's place)", got)
	}
	for r := range region.Count {
		if want := map[string]string{"n1": "n1", "ghost": "n2"}[before.Regions[r]]; st.Regions[r] != want {
			t.Errorf("region %d: got %q, want %q", r, st.Regions[r], want)
		}
	}
}

// blockingDrainer is a Drainer that waits until released and records what
// it was asked to drain.
type blockingDrainer struct {
	release chan struct{}
	mu      sync.Mutex
	asked   []string
}

func (d *blockingDrainer) Drain(ctx context.Context, m fsm.Member, epoch uint64) error {
	d.mu.Lock()
	d.asked = append(d.asked, fmt.Sprintf("%s@%d", m.ID, epoch))
	d.mu.Unlock()
	select {
	case <-d.release:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// TestPoolShrinkDrainsBeforeRelease: a shrink commits at once, but gives a
// removed node back to the provisioner only once the Drainer says it has
// handed off; a grow meanwhile may take it back, and then it is not
// released at all (that would stop a member); removed again, it is
// released once, by its latest drain only.
func TestPoolShrinkDrainsBeforeRelease(t *testing.T) {
	env := newPoolEnv(t, "n1", "n2", "n3")
	d := &blockingDrainer{release: make(chan struct{})}
	p := env.pool(scaler.PoolConfig{AcquireTimeout: poolWait, Drainer: d})
	runCtx, stop := context.WithCancel(context.Background())
	stopped := make(chan struct{})
	go func() { defer close(stopped); p.Run(runCtx) }()
	t.Cleanup(func() { stop(); <-stopped })
	ctx := t.Context()
	if _, err := p.Resize(ctx, 3); err != nil {
		t.Fatal(err)
	}
	res, err := p.Resize(ctx, 1)
	if err != nil {
		t.Fatalf("Resize(1): %v", err)
	}
	if got := memberIDs(env.raft.State()); !slices.Equal(got, []string{"n1"}) {
		t.Fatalf("members after Resize(1): %q, want [n1]", got)
	}
	waitfor.True(t, poolWait, "the drains of n2 and n3 to begin", func() bool {
		d.mu.Lock()
		defer d.mu.Unlock()
		got := slices.Sorted(slices.Values(d.asked))
		return slices.Equal(got, []string{fmt.Sprintf("n2@%d", res.Epoch), fmt.Sprintf("n3@%d", res.Epoch)})
	})
	if _, rel := env.prov.calls(); len(rel) != 0 {
		t.Errorf("released %v before the drains ended, want nothing", rel)
	}
	// Growing while they drain takes n2 back.
	if _, err := p.Resize(ctx, 2); err != nil {
		t.Fatalf("Resize(2) during the drain: %v", err)
	}
	if got := memberIDs(env.raft.State()); !slices.Equal(got, []string{"n1", "n2"}) {
		t.Fatalf("members after growing during the drain: %q, want [n1 n2]", got)
	}
	// And removed again: only the second drain may release it, once.
	res2, err := p.Resize(ctx, 1)
	if err != nil {
		t.Fatalf("Resize(1) again: %v", err)
	}
	waitfor.True(t, poolWait, "the second drain of n2 to begin", func() bool {
		d.mu.Lock()
		defer d.mu.Unlock()
		return slices.Contains(d.asked, fmt.Sprintf("n2@%d", res2.Epoch))
	})
	close(d.release)
	waitfor.True(t, poolWait, "n3 and n2 to be released after their drains", func() bool {
		_, rel := env.prov.calls()
		return len(rel) == 2
	})
	stop()
	<-stopped // Run waits for the drains
	_, rel := env.prov.calls()
	var released []string
	for _, r := range rel {
		released = append(released, r.ids...)
	}
	slices.Sort(released)
	if !slices.Equal(released, []string{"n2", "n3"}) {
		t.Errorf("released %v, want n2 and n3 once each (n2 by its second drain only)", released)
	}
}
