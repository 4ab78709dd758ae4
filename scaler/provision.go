// Package scaler runs the leader-only auto-scaler and provides the cache nodes the pool grows into.
package scaler

import (
	"context"
	"errors"

	"github.com/memcache/memcache/gossip"
)

// Errors returned by this package.
var (
	// ErrNoCapacity is returned, wrapped with how many nodes were found, by
	// Provisioner.Acquire when it cannot supply as many nodes as asked for.
	ErrNoCapacity = errors.New("scaler: not enough cache nodes")
	// ErrClosed is returned by Acquire after the provisioner was closed.
	ErrClosed = errors.New("scaler: provisioner closed")
)

// Node is a cache node a provisioner hands out.
type Node struct {
	ID   string // the node's id (gossip Meta.ID)
	HTTP string // base URL of the node's HTTP API (gossip Meta.HTTP)
}

// Provisioner supplies cache nodes.
type Provisioner interface {
	// Acquire returns n nodes that are alive in the gossip cluster and not
	// in exclude (ids of current pool members), ready to be put into the
	// pool. It returns ErrNoCapacity (wrapped, saying how many it could
	// find) if it cannot supply n; in that case it releases what it started
	// for this call (a provisioner of machines may leave those still
	// booting for the next call to adopt).
	Acquire(ctx context.Context, n int, exclude []string) ([]Node, error)
	// Release is told that these nodes left the pool. A provisioner stops
	// the nodes it started itself; others are left running, idle.
	Release(ctx context.Context, ids []string) error
	// Close stops what the provisioner started and runs on this machine,
	// and waits for it (machines elsewhere, such as EC2 instances, keep
	// running: the pool outlives a manager's restart); later calls of
	// Acquire fail.
	Close() error
}

// Members is the gossip view a provisioner consults (implemented by
// *gossip.Gossip).
type Members interface {
	Members() []gossip.Member
}
