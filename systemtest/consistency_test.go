package systemtest

import (
	"fmt"
	"net/http"
	"testing"

	"github.com/memcache/memcache/internal/testcluster"
)

// TestConfigReadSeesEveryAnsweredWrite is the fault campaign's first
// finding kept as a focused case (seed 3690272169548096308): GET
// /v1/config served a replica's own copy, so a read on a follower right
// after an answered write, or on a replica just resumed from SIGSTOP,
// returned the config from before it. Reads now go to the leader and wait
// on a barrier; ?stale=true still reads the replica's copy, and a bad
// value of it is refused.
func TestConfigReadSeesEveryAnsweredWrite(t *testing.T) {
	c := testcluster.Start(t, testcluster.Options{Managers: 3, Nodes: 1, AdminToken: testcluster.Token})
	leader := c.WaitLeader()
	var followers []string
	for _, m := range c.Managers {
		if m != leader {
			followers = append(followers, m.URL())
		}
	}
	for i := range 20 {
		want := 32 + 16*(i%4)
		body := fmt.Appendf(nil, `{"capacity_mb":%d}`, want)
		if code := testcluster.WriteToken(t, testcluster.Token, http.MethodPut, leader.URL()+"/v1/config/cache", body, nil); code != http.StatusOK {
			t.Fatalf("write %d: %d", i, code)
		}
		// Straight after the answer, without waiting: every replica's read
		// must show the write (a follower learns the commit only on the
		// leader's next append, after the answer).
		for _, u := range append(followers, leader.URL()) {
			var got struct {
				Cache struct {
					CapacityMB int `json:"capacity_mb"`
				} `json:"cache"`
			}
			if code := testcluster.CallToken(t, testcluster.Token, http.MethodGet, u+"/v1/config", nil, &got); code != http.StatusOK {
				t.Fatalf("read via %s: %d", u, code)
			}
			if got.Cache.CapacityMB != want {
				t.Fatalf("write %d answered capacity %d, then %s/v1/config read %d", i, want, u, got.Cache.CapacityMB)
			}
		}
	}
	if code := testcluster.CallToken(t, testcluster.Token, http.MethodGet, followers[0]+"/v1/config?stale=true", nil, nil); code != http.StatusOK {
		t.Errorf("stale read on a follower: %d, want 200", code)
	}
	if code := testcluster.CallToken(t, testcluster.Token, http.MethodGet, followers[0]+"/v1/config?stale=maybe", nil, nil); code != http.StatusBadRequest {
		t.Errorf("stale=maybe: %d, want 400", code)
	}
}
