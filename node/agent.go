package node

import (
	"context"
	"errors"

	"github.com/memcache/memcache/internal/pool"
)

// ApplyPool brings the node in line with the pool view the managers serve:
// the regions it owns (none if it is not a pool member), the cache config,
// and the clear-caches and delete-all generations (a node that was away
// still clears when it learns a generation moved). A clear raises the
// node's floor to the view's Generation, fencing fills made before it.
//
// A clear or a region loss first revokes the read leases it affects
// (readlease.go): ApplyPool returns once that is done.
func (n *Node) ApplyPool(st pool.View) {
	ctx := context.Background()
	if st.Epoch > 0 {
		_, err := n.SetRegions(ctx, Regions{Epoch: st.Epoch, Owners: st.Regions, Since: st.Since})
		if err != nil && !errors.Is(err, ErrStaleRegions) {
			n.log.Error("applying region map", "err", err)
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
		n.ClearAt(ctx, st.Generation())
		n.log.Info("cache cleared", "clear_gen", st.ClearGen, "delete_gen", st.DeleteGen)
	}
}
