package cluster

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/memcache/memcache/fsm"
	"github.com/memcache/memcache/internal/stall"
)

// pauseHTTP makes r's HTTP API stop answering, as if its process were paused.
func pauseHTTP(t *testing.T, r *replica) {
	t.Helper()
	addr := r.url[len("http://"):]
	r.srv.Close()
	stall.Listen(t, addr)
}

// TestApplyOnAFollowerMovesOnFromAPausedLeader: the leader stops answering
// (its HTTP API hangs and its Raft links are cut, as with SIGSTOP); a write
// on a follower, forwarded to it, must not hang on it but reach the leader
// the others elect.
func TestApplyOnAFollowerMovesOnFromAPausedLeader(t *testing.T) {
	tc := newTestClusterForward(t, 3, FastTiming(), time.Second)
	l := tc.leader()
	f := tc.follower()
	pauseHTTP(t, l)
	tc.isolate(l, true)

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	capacity := 77
	res, err := f.c.Apply(ctx, fsm.Configure{CapacityMB: &capacity})
	if err != nil {
		t.Fatalf("Apply on follower %s with leader %s paused: got %v, want it committed by a new leader", f.name, l.name, err)
	}
	if st, err := f.c.Wait(ctx, res.Index-1); err != nil || st.Cache.CapacityMB != 77 {
		t.Fatalf("follower state: capacity %d, err %v; want 77", st.Cache.CapacityMB, err)
	}
}

// TestForwardToLeaderHasADeadline: a request a follower proxies to a leader
// that does not answer gets 504 within the proxy timeout, not never.
func TestForwardToLeaderHasADeadline(t *testing.T) {
	tc := newTestClusterForward(t, 3, FastTiming(), time.Second)
	l := tc.leader()
	f := tc.follower()
	pauseHTTP(t, l)
	srv := httptest.NewServer(f.c.ForwardToLeader(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		t.Error("the follower served a request meant for the leader")
	})))
	defer srv.Close()

	client := &http.Client{Timeout: 20 * time.Second}
	start := time.Now()
	resp, err := client.Post(srv.URL+"/anything", "text/plain", nil)
	if err != nil {
		t.Fatalf("POST through follower %s to paused leader %s: got %v, want 504 within about 1 s", f.name, l.name, err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusGatewayTimeout || resp.Header.Get("Retry-After") == "" {
		t.Errorf("got %d (Retry-After %q), want 504 with Retry-After", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("answered after %v, want about the 1 s proxy timeout", d)
	}
}
