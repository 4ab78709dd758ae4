package cluster

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
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

// TestAResizeRetriedAfterAnUncertainAttemptReportsItsSuccess: the leader
// commits a resize forwarded by a follower but its answer never arrives
// (the follower's attempt times out); the follower sends it again, and the
// leader refuses it because the pool's epoch moved — by this very resize.
// Apply must report the resize as done, not as refused: a caller told
// "refused" would release the nodes it had just added to the pool.
func TestAResizeRetriedAfterAnUncertainAttemptReportsItsSuccess(t *testing.T) {
	tc := newTestClusterForward(t, 3, FastTiming(), time.Second)
	l := tc.leader()
	f := tc.follower()
	// A pool at epoch 1, so the resize below carries a precondition.
	first := mustApply(t, l, fsm.Resize{Members: []fsm.Member{{ID: "n0", HTTP: "http://127.0.0.1:1"}}})
	if _, err := f.c.Wait(context.Background(), first.Index-1); err != nil {
		t.Fatal(err)
	}
	// The leader's HTTP API commits the first forwarded command, then holds
	// its answer until the follower has given up on it.
	h := l.srv.Handler
	addr := l.url[len("http://"):]
	l.srv.Close()
	var held atomic.Bool
	slow := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/internal/v1/apply" || held.Swap(true) {
			h.ServeHTTP(w, r)
			return
		}
		h.ServeHTTP(httptest.NewRecorder(), r)
		<-r.Context().Done() // the follower's attempt deadline
	})}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	go slow.Serve(ln)
	t.Cleanup(func() { slow.Close() })

	st := f.c.State()
	want := []fsm.Member{{ID: "n0", HTTP: "http://127.0.0.1:1"}, {ID: "n1", HTTP: "http://127.0.0.1:2"}}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res, err := f.c.Apply(ctx, fsm.Resize{Members: want, Epoch: st.Epoch})
	if err != nil {
		t.Fatalf("Apply(Resize) on follower %s: got %v, want success (the first attempt was committed)", f.name, err)
	}
	got, err := f.c.Wait(ctx, res.Index-1)
	if err != nil || got.Epoch != st.Epoch+1 || len(got.Members) != 2 {
		t.Fatalf("state after the resize: epoch %d, %d members, err %v; want epoch %d, 2 members (applied once)", got.Epoch, len(got.Members), err, st.Epoch+1)
	}
}
