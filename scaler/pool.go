package scaler

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/memcache/memcache/fsm"
	"github.com/memcache/memcache/gossip"
)

// ErrInvalidSize is returned by Pool.Resize for a size outside 1..8.
var ErrInvalidSize = errors.New("scaler: pool size must be between 1 and 8")

// Applier commits commands through Raft (implemented by *cluster.Cluster).
type Applier interface {
	Apply(ctx context.Context, cmd fsm.Command) (fsm.Result, error)
	State() fsm.State
}

// Membership is the gossip view the pool maintainer follows (implemented
// by *gossip.Gossip).
type Membership interface {
	Members() []gossip.Member
	Subscribe() (<-chan gossip.Event, func())
}

// Drainer waits until a node that a shrink at epoch took out of the pool
// has handed its regions off.
type Drainer interface {
	Drain(ctx context.Context, m fsm.Member, epoch uint64) error
}

// PoolConfig configures pool maintenance.
type PoolConfig struct {
	// DeadGrace is how long a pool member may be missing from gossip before
	// the leader gives its regions away, when no failure event said so
	// (after a leader change, or a restart of the whole system). If zero, 10 s.
	DeadGrace time.Duration
	// InitialNodes is the pool size the leader creates when the pool is
	// empty (a new system, or every member failed). If zero, 1.
	InitialNodes int
	// AcquireTimeout bounds how long a provisioner may take to supply nodes.
	// If zero, 60 s.
	AcquireTimeout time.Duration
	// ReplaceTimeout bounds the wait for a replacement of a failed member
	// before its regions go to the survivors. If it ends first, the pool
	// is grown back in the background, within AcquireTimeout and without
	// holding up other changes (a provisioner that boots machines). If
	// zero, AcquireTimeout.
	ReplaceTimeout time.Duration
	// Drainer, if set, is asked to wait until each member a shrink removed
	// has handed its regions off to their new owners (node/handoff.go);
	// the member is given back to the provisioner after that, or after
	// DrainTimeout. If nil, removed members are given back at once.
	Drainer Drainer
	// DrainTimeout bounds the drain. If zero, 45 s (a node's default handoff
	// timeout and the time a previous owner keeps a region past it).
	DrainTimeout time.Duration
}

// Pool maintains the cache-node pool on the Raft leader: it resizes the
// pool when asked, taking nodes from a provisioner and giving them back,
// and replaces members that gossip declares dead.
type Pool struct {
	cfg     PoolConfig
	raft    Applier
	members Membership
	prov    Provisioner
	log     *slog.Logger

	mu sync.Mutex     // serialises changes of the member list
	wg sync.WaitGroup // grow-backs and drains in flight; Run waits for them

	relMu     sync.Mutex
	releasing map[string]bool   // removed members being released after their drain: not to be acquired
	draining  map[string]uint64 // removed members handing off: the epoch of their latest removal
	runCtx    context.Context   // Run's (the leadership's); nil until Run starts
}

// DefaultDeadGrace is PoolConfig.DeadGrace's default.
const DefaultDeadGrace = 10 * time.Second

// NewPool returns a pool maintainer. Run it with Run on the leader only.
func NewPool(cfg PoolConfig, raft Applier, members Membership, prov Provisioner, log *slog.Logger) *Pool {
	if cfg.DeadGrace <= 0 {
		cfg.DeadGrace = DefaultDeadGrace
	}
	if cfg.InitialNodes <= 0 {
		cfg.InitialNodes = 1
	}
	if cfg.AcquireTimeout <= 0 {
		cfg.AcquireTimeout = 60 * time.Second
	}
	if cfg.ReplaceTimeout <= 0 || cfg.ReplaceTimeout > cfg.AcquireTimeout {
		cfg.ReplaceTimeout = cfg.AcquireTimeout
	}
	if cfg.DrainTimeout <= 0 {
		cfg.DrainTimeout = 45 * time.Second
	}
	return &Pool{cfg: cfg, raft: raft, members: members, prov: prov, log: log.With("component", "pool")}
}

// exclude returns what an Acquire must not return: the members, the
// removed nodes being released, and, if draining, the removed nodes still
// handing off. A resize or a replacement (under p.mu) may take a draining
// node back: it is then not released. A grow-back, which acquires without
// p.mu, may not.
func (p *Pool) exclude(members []fsm.Member, draining bool) []string {
	out := ids(members)
	p.relMu.Lock()
	defer p.relMu.Unlock()
	for id := range p.releasing {
		out = append(out, id)
	}
	if draining {
		for id := range p.draining {
			out = append(out, id)
		}
	}
	return out
}

// leaderCtx returns Run's context (the leadership's), or, before Run has
// started, ctx without its cancellation.
func (p *Pool) leaderCtx(ctx context.Context) context.Context {
	p.relMu.Lock()
	defer p.relMu.Unlock()
	if p.runCtx != nil {
		return p.runCtx
	}
	return context.WithoutCancel(ctx)
}

func ids(ms []fsm.Member) []string {
	out := make([]string, len(ms))
	for i, m := range ms {
		out[i] = m.ID
	}
	return out
}

// Resize makes the pool n nodes: growing takes nodes from the provisioner
// and appends them; shrinking removes the most recently added members and
// gives them back to the provisioner after the change is committed. It must
// run on the leader.
func (p *Pool) Resize(ctx context.Context, n int) (fsm.Result, error) {
	if n < fsm.MinNodes || n > fsm.MaxNodes {
		return fsm.Result{}, fmt.Errorf("%w: got %d", ErrInvalidSize, n)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.resizeLocked(ctx, n)
}

func (p *Pool) resizeLocked(ctx context.Context, n int) (fsm.Result, error) {
	st := p.raft.State()
	cur := st.Members
	switch {
	case n == len(cur):
		return fsm.Result{Index: st.Index, Epoch: st.Epoch}, nil
	case n > len(cur):
		actx, cancel := context.WithTimeout(ctx, p.cfg.AcquireTimeout)
		got, err := p.prov.Acquire(actx, n-len(cur), p.exclude(cur, false))
		cancel()
		if err != nil {
			return fsm.Result{}, fmt.Errorf("growing the pool to %d: %w", n, err)
		}
		next := slices.Clone(cur)
		var added []string
		for _, g := range got {
			next = append(next, fsm.Member{ID: g.ID, HTTP: g.HTTP})
			added = append(added, g.ID)
		}
		res, err := p.raft.Apply(ctx, fsm.Resize{Members: next, Epoch: st.Epoch})
		if err != nil {
			p.prov.Release(context.WithoutCancel(ctx), added)
			return res, err
		}
		p.log.Info("pool grown", "from", len(cur), "to", n, "added", added, "epoch", res.Epoch)
		return res, nil
	default:
		gone := slices.Clone(cur[n:])
		removed := ids(gone)
		res, err := p.raft.Apply(ctx, fsm.Resize{Members: slices.Clone(cur[:n]), Epoch: st.Epoch})
		if err != nil {
			return res, err
		}
		p.log.Info("pool shrunk", "from", len(cur), "to", n, "removed", removed, "epoch", res.Epoch)
		release := func(ids []string) {
			if err := p.prov.Release(context.WithoutCancel(ctx), ids); err != nil {
				p.log.Warn("releasing removed nodes", "err", err)
			}
		}
		if p.cfg.Drainer == nil {
			release(removed)
			return res, nil
		}
		// The removed nodes hand their regions off before they stop; the
		// drain ends with the leadership (a new leader knows nothing of it).
		p.relMu.Lock()
		if p.draining == nil {
			p.draining = map[string]uint64{}
		}
		for _, id := range removed {
			p.draining[id] = res.Epoch
		}
		p.relMu.Unlock()
		lctx := p.leaderCtx(ctx)
		p.wg.Go(func() {
			dctx, cancel := context.WithTimeout(lctx, p.cfg.DrainTimeout)
			defer cancel()
			var wg sync.WaitGroup
			for _, m := range gone {
				wg.Go(func() {
					start := time.Now()
					if err := p.cfg.Drainer.Drain(dctx, m, res.Epoch); err != nil {
						p.log.Warn("removed node did not finish handing off its regions", "member", m.ID, "err", err)
						return
					}
					p.log.Info("removed node handed off its regions", "member", m.ID, "took", time.Since(start).Round(time.Millisecond))
				})
			}
			wg.Wait()
			// Release those this drain is the latest removal of and the
			// pool has not taken back meanwhile, and let no grow take them
			// while they are being released. Under p.mu, no resize is
			// between its Acquire and its commit.
			p.mu.Lock()
			now := p.raft.State()
			p.relMu.Lock()
			var out []string
			for _, id := range removed {
				if p.draining[id] != res.Epoch {
					continue // removed again since: that drain decides
				}
				delete(p.draining, id)
				if _, in := now.Member(id); !in && lctx.Err() == nil {
					out = append(out, id)
				}
			}
			if p.releasing == nil {
				p.releasing = map[string]bool{}
			}
			for _, id := range out {
				p.releasing[id] = true
			}
			p.relMu.Unlock()
			p.mu.Unlock()
			if lctx.Err() != nil {
				p.log.Info("leadership lost during a drain: the removed nodes are left idle", "removed", removed)
			}
			if len(out) > 0 {
				release(out)
			}
			p.relMu.Lock()
			for _, id := range out {
				delete(p.releasing, id)
			}
			p.relMu.Unlock()
		})
		return res, nil
	}
}

// Run maintains the pool until ctx is done: it replaces a member as soon as
// gossip reports it failed or left, and one that has been missing from
// gossip for DeadGrace; and it creates the initial pool when it is empty.
func (p *Pool) Run(ctx context.Context) {
	p.relMu.Lock()
	p.runCtx = ctx
	p.relMu.Unlock()
	defer p.wg.Wait()
	events, cancel := p.members.Subscribe()
	defer cancel()
	tick := time.NewTicker(max(p.cfg.DeadGrace/4, 50*time.Millisecond))
	defer tick.Stop()
	missingSince := map[string]time.Time{}
	for {
		p.reconcile(ctx, missingSince)
		select {
		case <-ctx.Done():
			return
		case ev, ok := <-events:
			if !ok {
				return
			}
			if ev.Member.Meta.Role == gossip.RoleNode && (ev.Kind == gossip.EventFail || ev.Kind == gossip.EventLeave) {
				p.replace(ctx, ev.Member.Meta.ID, ev.Kind.String())
			}
		case <-tick.C:
		}
	}
}

// reconcile fills an empty pool and replaces members missing for too long.
func (p *Pool) reconcile(ctx context.Context, missingSince map[string]time.Time) {
	st := p.raft.State()
	if len(st.Members) == 0 {
		p.mu.Lock()
		_, err := p.resizeLocked(ctx, p.cfg.InitialNodes)
		p.mu.Unlock()
		if err != nil && ctx.Err() == nil {
			p.log.Warn("cannot create the initial pool yet", "nodes", p.cfg.InitialNodes, "err", err)
		}
		return
	}
	alive := map[string]bool{}
	for _, m := range p.members.Members() {
		if m.Meta.Role == gossip.RoleNode && m.State == gossip.StateAlive {
			alive[m.Meta.ID] = true
		}
	}
	now := time.Now()
	for _, m := range st.Members {
		if alive[m.ID] {
			delete(missingSince, m.ID)
			continue
		}
		since, seen := missingSince[m.ID]
		if !seen {
			missingSince[m.ID] = now
			continue
		}
		if now.Sub(since) >= p.cfg.DeadGrace {
			p.replace(ctx, m.ID, fmt.Sprintf("missing from gossip for %v", now.Sub(since).Round(time.Millisecond)))
			delete(missingSince, m.ID)
		}
	}
}

// replace takes a failed member out of the pool, with a replacement from
// the provisioner in its place when one can be had.
func (p *Pool) replace(ctx context.Context, id, why string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	st := p.raft.State()
	if _, ok := st.Member(id); !ok {
		return
	}
	cmd := fsm.MarkFailed{ID: id}
	actx, cancel := context.WithTimeout(ctx, p.cfg.ReplaceTimeout)
	got, err := p.prov.Acquire(actx, 1, p.exclude(st.Members, false))
	cancel()
	growBack := false
	if err == nil && len(got) == 1 {
		cmd.Replacement = &fsm.Member{ID: got[0].ID, HTTP: got[0].HTTP}
	} else {
		growBack = p.cfg.ReplaceTimeout < p.cfg.AcquireTimeout && errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil
		p.log.Warn("no replacement for failed pool member", "member", id, "err", err, "grow_back", growBack)
	}
	res, err := p.raft.Apply(ctx, cmd)
	if err != nil {
		p.log.Error("removing failed pool member", "member", id, "err", err)
		if cmd.Replacement != nil {
			p.prov.Release(context.WithoutCancel(ctx), []string{cmd.Replacement.ID})
		}
		return
	}
	p.log.Warn("pool member failed; regions reassigned", "member", id, "why", why,
		"replacement", cmd.Replacement, "epoch", res.Epoch)
	p.prov.Release(context.WithoutCancel(ctx), []string{id})
	if growBack {
		n := len(st.Members)
		p.wg.Go(func() { p.growBack(ctx, n) })
	}
}

// growBack grows the pool back to n nodes after a member failed without a
// replacement in time. It waits for the provisioner without holding the
// pool's lock, so that other failures and resizes go on meanwhile, and
// adds the node only if the pool is still smaller than n.
func (p *Pool) growBack(ctx context.Context, n int) {
	actx, cancel := context.WithTimeout(ctx, p.cfg.AcquireTimeout)
	got, err := p.prov.Acquire(actx, 1, p.exclude(p.raft.State().Members, true))
	cancel()
	if err != nil || len(got) != 1 {
		if ctx.Err() == nil {
			p.log.Warn("cannot grow the pool back after a failure", "to", n, "err", err)
		}
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	st := p.raft.State()
	if _, in := st.Member(got[0].ID); in || len(st.Members) >= n {
		if !in { // a member (taken by a resize meanwhile) is not given back
			p.prov.Release(context.WithoutCancel(ctx), []string{got[0].ID})
		}
		return
	}
	next := append(slices.Clone(st.Members), fsm.Member{ID: got[0].ID, HTTP: got[0].HTTP})
	res, err := p.raft.Apply(ctx, fsm.Resize{Members: next, Epoch: st.Epoch})
	if err != nil {
		p.log.Warn("growing the pool back after a failure", "to", n, "err", err)
		p.prov.Release(context.WithoutCancel(ctx), []string{got[0].ID})
		return
	}
	p.log.Info("pool grown back after a failure", "to", len(next), "added", got[0].ID, "epoch", res.Epoch)
}
