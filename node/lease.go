package node

import (
	"net/http"
	"time"

	"github.com/memcache/memcache/internal/jsonhttp"
)

// The serving lease. A node that follows the managers (its watch renews
// the lease with every consistent answer, see package pool) serves GETs
// and fills only while the lease holds: cut off from the leader, it stops
// serving its regions before the managers give them to another node, so it
// never answers from a copy that a write through the new owner has made
// stale. Invalidations stay allowed: removing a copy is always safe. A
// node never renewed (one not following managers) is not fenced.

// Renew extends the lease to sent+lease: the managers' leader answered a
// request sent at sent with the view the node now holds. Call it after
// applying that view. A renewal never shortens the lease.
func (n *Node) Renew(sent time.Time, lease time.Duration) {
	if lease <= 0 {
		return
	}
	until := int64(sent.Add(lease).Sub(n.start))
	for {
		cur := n.leaseUntil.Load()
		if until <= cur || n.leaseUntil.CompareAndSwap(cur, until) {
			break
		}
	}
	n.leaseTerm.Store(int64(lease))
	n.leased.Store(true)
}

// leaseRemaining returns how long the lease still holds (negative once it
// has lapsed), and false if the node was never renewed.
func (n *Node) leaseRemaining() (time.Duration, bool) {
	if !n.leased.Load() {
		return 0, false
	}
	return time.Duration(n.leaseUntil.Load() - int64(time.Since(n.start))), true
}

// checkLease answers 503 for a read or fill the node must not serve: its
// lease has lapsed. It reports whether the request may go on.
func (n *Node) checkLease(w http.ResponseWriter) bool {
	if left, ok := n.leaseRemaining(); ok && left <= 0 {
		w.Header().Set("Retry-After", "1")
		jsonhttp.Error(w, http.StatusServiceUnavailable, "node %s has not heard from the managers' leader for %v past its lease: it may have lost its regions; read the stores", n.id, -left)
		return false
	}
	return true
}
