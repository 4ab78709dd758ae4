package scaler

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/memcache/memcache/gossip"
)

// Static hands out cache nodes that joined the gossip cluster on their own
// and are not in the pool. It never starts or stops anything.
type Static struct {
	members Members
}

// NewStatic returns a provisioner that picks idle nodes from members.
func NewStatic(members Members) *Static {
	return &Static{members: members}
}

// Acquire returns the first n idle nodes by ID: gossip members with role
// node, alive (not leaving), with an HTTP URL and not in exclude. It
// returns ErrNoCapacity, wrapped, if there are fewer than n.
func (s *Static) Acquire(_ context.Context, n int, exclude []string) ([]Node, error) {
	if n < 0 {
		return nil, fmt.Errorf("scaler: acquire %d nodes: n must not be negative", n)
	}
	idle := idleNodes(s.members.Members(), exclude)
	if len(idle) < n {
		return nil, fmt.Errorf("%w: asked for %d, found %d idle in gossip", ErrNoCapacity, n, len(idle))
	}
	return idle[:n], nil
}

// Release does nothing: the nodes stay running, idle, for a later Acquire.
func (s *Static) Release(context.Context, []string) error { return nil }

// Close does nothing: Static starts nothing.
func (s *Static) Close() error { return nil }

// idleNodes returns the members that can join the pool, sorted by ID: role
// node, state alive, a non-empty HTTP URL, and an ID not in exclude. A
// duplicated ID is offered once.
func idleNodes(members []gossip.Member, exclude []string) []Node {
	var out []Node
	for _, m := range members {
		if m.Meta.Role != gossip.RoleNode || m.State != gossip.StateAlive ||
			m.Meta.ID == "" || m.Meta.HTTP == "" || slices.Contains(exclude, m.Meta.ID) {
			continue
		}
		out = append(out, Node{ID: m.Meta.ID, HTTP: m.Meta.HTTP})
	}
	slices.SortStableFunc(out, func(a, b Node) int { return strings.Compare(a.ID, b.ID) })
	return slices.CompactFunc(out, func(a, b Node) bool { return a.ID == b.ID })
}
