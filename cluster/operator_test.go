package cluster

import (
	"context"
	"errors"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/memcache/memcache/fsm"
	"github.com/memcache/memcache/internal/waitfor"
)

// add starts a new replica that joins seed's gossip without bootstrapping
// (BootstrapExpect 0), as `memcache manager --bootstrap-expect 0` does.
func (tc *testCluster) add(name, seed string) *replica {
	tc.t.Helper()
	r := &replica{name: name, dataDir: tc.t.TempDir(), raftAddr: "127.0.0.1:0"}
	tc.mu.Lock()
	tc.replicas = append(tc.replicas, r)
	tc.mu.Unlock()
	tc.start(r, 0, seed)
	return r
}

// voters waits until every running replica's Raft configuration is
// exactly ids, all voters.
func (tc *testCluster) voters(ids ...string) {
	tc.t.Helper()
	slices.Sort(ids)
	waitfor.True(tc.t, 20*time.Second, "voters "+strings.Join(ids, ",")+" on every replica", func() bool {
		for _, r := range tc.running() {
			peers, err := r.c.Peers()
			if err != nil || len(peers) != len(ids) {
				return false
			}
			for i, p := range peers {
				if p.ID != ids[i] || p.Suffrage != "Voter" {
					return false
				}
			}
		}
		return true
	})
}

// operatorStatus is the status of an operator call's answer: 200, or the
// OperatorError's.
func operatorStatus(t *testing.T, err error) int {
	t.Helper()
	var oe *OperatorError
	switch {
	case err == nil:
		return http.StatusOK
	case errors.As(err, &oe):
		return oe.Status
	}
	t.Fatalf("operator call: %v", err)
	return 0
}

// TestGrowToFiveThenRemovePeers: a running group of three grows to five
// as replicas started without bootstrapping join (the leader makes them
// voters) while writes go on; the operator API lists them, removes a
// stopped replica for good, refuses what would break the group or be
// undone, and removes a live replica only with force, after which the
// leader leaves it out when it reconciles.
func TestGrowToFiveThenRemovePeers(t *testing.T) {
	tc := newTestCluster(t, 3)
	seed := tc.leader().c.Gossip().Addr()
	mustApply(t, tc.leader(), fsm.SetCache{Config: fsm.CacheConfig{CapacityMB: 70, Policy: "LRU"}})
	d := tc.add("d", seed)
	tc.add("e", seed)
	tc.voters("a", "b", "c", "d", "e")
	mustApply(t, d, fsm.SetCache{Config: fsm.CacheConfig{CapacityMB: 77, Policy: "RR"}})
	tc.converged("a write through a new replica", cacheIs(77, "RR"))

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	l := tc.leader()
	var followers []*replica
	for _, r := range tc.running() {
		if r != l {
			followers = append(followers, r)
		}
	}
	via := followers[0] // every call goes to a follower, which forwards it
	gone, live := followers[1], followers[2]
	op := &OperatorClient{Addr: via.url, Token: testToken, Timeout: 20 * time.Second}

	peers, err := op.Peers(ctx, false)
	if err != nil || len(peers) != 5 {
		t.Fatalf("list peers: %v, %v; want 5", peers, err)
	}
	for _, p := range peers {
		if p.Leader != (p.ID == l.name) || p.Address == "" || p.Suffrage != "Voter" {
			t.Errorf("peer %+v: want a voter with an address, leader iff it is %s", p, l.name)
		}
	}
	if stale, err := op.Peers(ctx, true); err != nil || len(stale) != 5 {
		t.Errorf("list peers ?stale: %v, %v; want 5", stale, err)
	}

	refusals := []struct {
		name  string
		op    *OperatorClient
		id    string
		force bool
		want  int
	}{
		{"no token", &OperatorClient{Addr: via.url}, gone.name, false, http.StatusUnauthorized},
		{"wrong token", &OperatorClient{Addr: via.url, Token: "nope"}, gone.name, false, http.StatusUnauthorized},
		{"unknown id", op, "zz", false, http.StatusNotFound},
		{"id with a space", op, "a b", false, http.StatusBadRequest},
		{"id too long", op, strings.Repeat("x", 200), false, http.StatusBadRequest},
		{"live replica", op, live.name, false, http.StatusConflict},
		{"the leader", op, l.name, true, http.StatusConflict},
	}
	for _, tt := range refusals {
		_, err := tt.op.RemovePeer(ctx, tt.id, tt.force)
		if got := operatorStatus(t, err); got != tt.want {
			t.Errorf("%s: remove %q: got %d (%v), want %d", tt.name, tt.id, got, err, tt.want)
		}
	}
	if _, err := (&OperatorClient{Addr: via.url}).Peers(ctx, false); operatorStatus(t, err) != http.StatusUnauthorized {
		t.Errorf("list peers without a token: %v, want 401", err)
	}
	tc.voters("a", "b", "c", "d", "e") // nothing changed

	// A stopped replica is removed for good: it is not alive in gossip, so
	// the leader does not add it back.
	tc.stop(gone)
	waitfor.True(t, 20*time.Second, gone.name+" to leave the leader's gossip", func() bool { return !tc.leader().c.aliveManager(gone.name) })
	peers, err = op.RemovePeer(ctx, gone.name, false)
	if err != nil || len(peers) != 4 {
		t.Fatalf("remove stopped %s: %v, %v; want 4 peers left", gone.name, peers, err)
	}
	rest := func(without ...*replica) []string {
		var ids []string
		for _, r := range tc.replicas {
			if r != gone && !slices.Contains(without, r) {
				ids = append(ids, r.name)
			}
		}
		return ids
	}
	tc.voters(rest()...)
	mustApply(t, via, fsm.ClearCaches{})
	tc.converged("a write after the removal", func(s fsm.State) bool { return s.ClearGen == 1 })

	// A live replica goes only with force, and the leader leaves it out: a
	// new replica joining makes the leader reconcile, and it adds the new
	// one but not the removed one. Reconciling goes through gossip's
	// members in id order, so the removed replica (a..e) would be added
	// back before f: once f is a voter, the removed one was skipped.
	if _, err := op.RemovePeer(ctx, live.name, true); err != nil {
		t.Fatalf("force-remove live %s: %v", live.name, err)
	}
	waitfor.True(t, 20*time.Second, live.name+" out of the leader's configuration", func() bool {
		peers, err := tc.leader().c.Peers()
		return err == nil && !slices.ContainsFunc(peers, func(p RaftPeer) bool { return p.ID == live.name })
	})
	f := tc.add("f", seed)
	waitfor.True(t, 20*time.Second, "f to be a voter and "+live.name+" still out", func() bool {
		peers, err := tc.leader().c.Peers()
		if err != nil || slices.ContainsFunc(peers, func(p RaftPeer) bool { return p.ID == live.name }) {
			return false
		}
		return slices.ContainsFunc(peers, func(p RaftPeer) bool { return p.ID == f.name && p.Suffrage == "Voter" })
	})
	if peers, _ := tc.leader().c.Peers(); len(peers) != len(rest(live)) {
		t.Errorf("configuration %+v, want %v", peers, rest(live))
	}
}

// TestRemoveOnlyVoterRefused: a group of one cannot remove its only voter.
func TestRemoveOnlyVoterRefused(t *testing.T) {
	tc := newTestCluster(t, 1)
	l := tc.leader()
	for _, force := range []bool{false, true} {
		if err := l.c.RemovePeer(l.name, force); !errors.Is(err, ErrPeerRefused) {
			t.Errorf("remove the only voter (force %v): got %v, want ErrPeerRefused", force, err)
		}
	}
}
