package node

import (
	"context"
	"errors"
	"time"

	"github.com/memcache/memcache/internal/pool"
)

// ApplyPool brings the node in line with the pool view the managers serve:
// the regions it owns (none if it is not a pool member), the cache config,
// and the clear-caches and delete-all generations (a node that was away
// still clears when it learns a generation moved). A clear raises the
// node's floor to the view's Generation, fencing fills made before it.
//
// ApplyPool runs on the watch loop, which renews the serving lease after
// it: it never waits for read lease holders. The read leases on regions
// lost are revoked in the background (the node serves them no more from
// now on); a clear from the view clears at once and revokes in the
// background (a clear changes no image; the delete-all that needs copies
// gone clears every node over HTTP, which revokes before it answers).
func (n *Node) ApplyPool(st pool.View) {
	if st.Epoch > 0 {
		_, revoke, err := n.setRegions(Regions{Epoch: st.Epoch, Owners: st.Regions, Since: st.Since, From: st.From})
		if err != nil && !errors.Is(err, ErrStaleRegions) {
			n.log.Error("applying region map", "err", err)
		}
		if revoke != 0 {
			n.revokeLater(func(ctx context.Context) error { return n.reads.revokeRegions(ctx, revoke, nil) })
		}
	}
	cfg := st.Cache
	if cfg != n.cache.Config() {
		if err := n.cache.SetConfig(cfg); err != nil {
			n.log.Error("applying cache config", "err", err)
		} else {
			n.log.Info("cache config applied", "capacity_mb", cfg.CapacityMB, "policy", cfg.Policy)
		}
	}
	n.mu.Lock()
	clear := st.ClearGen > n.clearGen || st.DeleteGen > n.deleteGen
	n.clearGen, n.deleteGen = max(n.clearGen, st.ClearGen), max(n.deleteGen, st.DeleteGen)
	n.mu.Unlock()
	if clear {
		n.clearAt(st.Generation())
		n.revokeLater(func(ctx context.Context) error { return n.reads.revokeAll(ctx, nil) })
		n.log.Info("cache cleared", "clear_gen", st.ClearGen, "delete_gen", st.DeleteGen)
	}
}

// revokeLater runs revoke in the background, bounded by the longest any
// revocation can wait (the start grace, then one lease term).
func (n *Node) revokeLater(revoke func(context.Context) error) {
	if n.reads == nil {
		return
	}
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), n.reads.grace+n.reads.term+5*time.Second)
		defer cancel()
		if err := revoke(ctx); err != nil {
			n.log.Warn("revoking read leases", "err", err)
		}
	}()
}
