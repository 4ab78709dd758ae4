package node

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/memcache/memcache/internal/waitfor"
)

func newLeaseNode(t *testing.T, cfg Config) (*Node, string) {
	t.Helper()
	cfg.ID = "n1"
	if cfg.PollWait == 0 {
		cfg.PollWait = 100 * time.Millisecond
	}
	n, err := New(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(n.Handler())
	t.Cleanup(srv.Close)
	return n, srv.URL
}

// poll polls the node as holder id, acknowledging ack.
func poll(t *testing.T, srv, id string, ack uint64) Poll {
	t.Helper()
	r := do(t, http.MethodGet, fmt.Sprintf("%s/leases/%s?ack=%d", srv, id, ack), nil)
	if r.code != http.StatusOK {
		t.Fatalf("poll: %d %s", r.code, r.body)
	}
	var p Poll
	if err := json.Unmarshal(r.body, &p); err != nil {
		t.Fatal(err)
	}
	return p
}

// leaseOf GETs key as holder id and returns the lease granted.
func leaseOf(t *testing.T, srv, id, key string) string {
	t.Helper()
	r := do(t, http.MethodGet, srv+"/cache/"+key, nil, HeaderReadLease, id)
	if r.code != http.StatusOK {
		t.Fatalf("get %s: %d %s", key, r.code, r.body)
	}
	return r.hdr.Get(HeaderReadLeaseMs)
}

func TestReadLeasePollBadInputIsRefused(t *testing.T) {
	_, srv := newLeaseNode(t, Config{ReadLease: time.Minute, ReadLeaseGrace: -1})
	for _, c := range []struct {
		path string
		want int
	}{
		{"/leases/", http.StatusBadRequest},                           // no holder
		{"/leases/a%20b", http.StatusBadRequest},                      // not a holder id
		{"/leases/" + strings.Repeat("a", 65), http.StatusBadRequest}, // too long
		{"/leases/fe-1?ack=-1", http.StatusBadRequest},                // not an unsigned integer
		{"/leases/fe-1?hits=x", http.StatusBadRequest},                // nor is this
		{"/leases/fe-1?hits=99999999999999", http.StatusBadRequest},   // implausible
		{"/leases/fe-1?ack=3&hits=2", http.StatusOK},                  // fine
	} {
		if r := do(t, http.MethodGet, srv+c.path, nil); r.code != c.want {
			t.Errorf("GET %s: %d %s, want %d", c.path, r.code, r.body, c.want)
		}
	}
	// A GET naming a malformed holder is served without a lease.
	do(t, http.MethodPut, srv+"/cache/k", []byte("v"))
	if l := leaseOf(t, srv, "a b", "k"); l != "" {
		t.Errorf("a malformed holder was granted a lease of %s ms", l)
	}
	_, off := newLeaseNode(t, Config{})
	if r := do(t, http.MethodGet, off+"/leases/fe-1", nil); r.code != http.StatusNotFound {
		t.Errorf("poll of a node with read leases off: %d, want 404", r.code)
	}
}

func TestReadLeaseHoldersAreBounded(t *testing.T) {
	_, srv := newLeaseNode(t, Config{ReadLease: time.Minute, ReadLeaseGrace: -1, PollWait: time.Millisecond})
	for i := range maxHolders {
		poll(t, srv, fmt.Sprintf("fe-%d", i), 0)
	}
	if r := do(t, http.MethodGet, srv+"/leases/fe-one-too-many", nil); r.code != http.StatusTooManyRequests {
		t.Fatalf("poll of holder %d: %d, want 429", maxHolders+1, r.code)
	}
}

// A lease is granted only to a holder with a poll open (or just answered),
// never past the node's serving lease, and not on what is being revoked.
func TestReadLeaseGrants(t *testing.T) {
	n, srv := newLeaseNode(t, Config{ReadLease: 20 * time.Second, ReadLeaseGrace: -1})
	do(t, http.MethodPut, srv+"/cache/k", []byte("v"))
	if l := leaseOf(t, srv, "fe-1", "k"); l != "" {
		t.Fatalf("a holder that never polled was granted %s ms", l)
	}
	poll(t, srv, "fe-1", 0)
	if l := leaseOf(t, srv, "fe-1", "k"); l != "20000" {
		t.Fatalf("a polling holder was granted %q ms, want 20000", l)
	}
	// Capped by the serving lease: 10 s left, less a tenth.
	n.Renew(time.Now(), 10*time.Second)
	poll(t, srv, "fe-1", 0)
	if l, _ := strconv.Atoi(leaseOf(t, srv, "fe-1", "k")); l <= 0 || l > 9000 {
		t.Fatalf("with 10 s of serving lease left, granted %d ms, want at most 9000", l)
	}
	// While the key is being revoked (fe-1 does not acknowledge), no lease.
	poll(t, srv, "fe-2", 0)
	done := make(chan response, 1)
	go func() { done <- do(t, http.MethodDelete, srv+"/cache/k", nil) }()
	waitfor.True(t, 30*time.Second, "the invalidation is waiting for fe-1", func() bool {
		n.reads.mu.Lock()
		defer n.reads.mu.Unlock()
		return n.reads.revokingKeys["k"] > 0
	})
	n.Cache().Put("k", Item{Value: []byte("v")}) // visible to a read during the wait
	n.Cache().Put("k2", Item{Value: []byte("v")})
	poll(t, srv, "fe-2", 0)
	if r := do(t, http.MethodGet, srv+"/cache/k", nil, HeaderReadLease, "fe-2"); r.hdr.Get(HeaderReadLeaseMs) != "" {
		t.Fatalf("a lease was granted on a key being revoked")
	}
	if l := leaseOf(t, srv, "fe-2", "k2"); l == "" {
		t.Fatal("no lease granted on a key not being revoked")
	}
	p := poll(t, srv, "fe-1", 0)
	if len(p.Revocations) != 1 || p.Revocations[0].Key != "k" {
		t.Fatalf("fe-1 was sent %+v, want the revocation of k", p.Revocations)
	}
	poll(t, srv, "fe-1", p.Revocations[0].Seq) // acknowledges
	if r := <-done; r.code != http.StatusNoContent {
		t.Fatalf("invalidation: %d %s", r.code, r.body)
	}
	if _, ok, _ := n.Cache().Get("k"); ok {
		t.Fatal("the invalidation answered before it removed the copy")
	}
}

// A revocation whose holder does not acknowledge waits for its lease to
// end, and one the caller gives up on changes nothing.
func TestReadLeaseRevocationWaitsForTheLeaseOrGivesUp(t *testing.T) {
	n, srv := newLeaseNode(t, Config{ReadLease: 2 * time.Second, ReadLeaseGrace: -1})
	do(t, http.MethodPut, srv+"/cache/k", []byte("v"))
	poll(t, srv, "fe-1", 0)
	leaseOf(t, srv, "fe-1", "k")
	granted := time.Now()
	if r := do(t, http.MethodDelete, srv+"/cache/k", nil); r.code != http.StatusNoContent {
		t.Fatalf("invalidation: %d", r.code)
	}
	if waited := time.Since(granted); waited < 2*time.Second {
		t.Fatalf("the invalidation answered %v after the lease was granted, before it ended (2 s) and unacknowledged", waited)
	}

	do(t, http.MethodPut, srv+"/cache/k", []byte("v"))
	poll(t, srv, "fe-1", 0)
	leaseOf(t, srv, "fe-1", "k")
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := n.ClearAt(ctx, 7); err == nil {
		t.Fatal("a clear given up on before the leases were revoked reported success")
	}
	if _, ok, _ := n.Cache().Get("k"); !ok || n.Floor() == 7 {
		t.Fatal("a clear given up on before the leases were revoked changed the cache")
	}
}

// A node makes no change until its grace has passed since it started: a
// previous run may have granted leases it knows nothing of.
func TestReadLeaseStartGrace(t *testing.T) {
	n, srv := newLeaseNode(t, Config{ReadLease: time.Minute, ReadLeaseGrace: 2 * time.Second})
	do(t, http.MethodPut, srv+"/cache/k", []byte("v"))
	if r := do(t, http.MethodDelete, srv+"/cache/k", nil); r.code != http.StatusNoContent {
		t.Fatalf("invalidation: %d", r.code)
	}
	if since := time.Since(n.reads.start); since < 2*time.Second {
		t.Fatalf("an invalidation answered %v after the node started, within its 2 s grace", since)
	}
}
