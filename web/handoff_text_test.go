package web

import (
	"testing"

	"github.com/memcache/memcache/node"
)

// TestHandoffText: the pool table's handoff column names what a node is
// receiving (from whom, how much so far) and keeping (for whom), and is
// empty when no handoff is under way.
func TestHandoffText(t *testing.T) {
	for _, c := range []struct {
		st   node.HandoffStatus
		want string
	}{
		{node.HandoffStatus{}, ""},
		{node.HandoffStatus{Receiving: []node.HandoffRegion{{Region: 1, Peer: "n1", Entries: 10, Bytes: 3 << 20}, {Region: 5, Peer: "n1", Entries: 5, Bytes: 1 << 19}}},
			"receiving 2 regions from n1: 15 entries, 3.5 MB so far"},
		{node.HandoffStatus{Receiving: []node.HandoffRegion{{Region: 1, Peer: "n2", Entries: 1, Bytes: 2048}, {Region: 2, Peer: "n1"}},
			Giving: []node.HandoffRegion{{Region: 7, Peer: "n3"}}},
			"receiving 2 regions from n1, n2: 1 entries, 2.0 KB so far; keeping 1 region for n3"},
		{node.HandoffStatus{Waiting: []int{3, 4}}, "2 regions not served until the previous owner holds the map"},
	} {
		if got := handoffText(c.st); got != c.want {
			t.Errorf("handoffText(%v) = %q, want %q", c.st, got, c.want)
		}
	}
}
