package node

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/memcache/memcache/internal/pool"
)

// fenceNode is a real node behind a real HTTP server, with its fences on a
// clock the test moves.
type fenceNode struct {
	n     *Node
	c     *Client
	url   string
	mu    sync.Mutex
	clock time.Time
	gen   uint64
	t     *testing.T
	ctx   context.Context
}

func newFenceNode(t *testing.T, capacityMB int) *fenceNode {
	n, err := New(Config{ID: "n1", Cache: pool.CacheConfig{CapacityMB: capacityMB, Policy: pool.LRU}}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	fn := &fenceNode{n: n, c: NewClient(ClientConfig{}), clock: time.Unix(1000, 0), t: t, ctx: context.Background()}
	n.fences.now = func() time.Time { fn.mu.Lock(); defer fn.mu.Unlock(); return fn.clock }
	srv := httptest.NewServer(n.Handler())
	t.Cleanup(srv.Close)
	fn.url = srv.URL
	return fn
}

func (fn *fenceNode) advance(d time.Duration) {
	fn.mu.Lock()
	fn.clock = fn.clock.Add(d)
	fn.mu.Unlock()
}

// write is an upload's write (version, token) or, with fill, a read's fill.
func (fn *fenceNode) write(value string, version uint64, token string, fill bool) error {
	return fn.c.Put(fn.ctx, fn.url, "k", []byte(value), PutOptions{Generation: fn.gen, Version: version, Fence: token, OnlyIfAbsent: fill})
}

func (fn *fenceNode) fence(token string, version uint64) {
	fn.t.Helper()
	if err := fn.c.Fence(fn.ctx, fn.url, "k", FenceOptions{Token: token, Version: version}); err != nil {
		fn.t.Fatalf("fence: %v", err)
	}
}

// cached returns the value cached under k ("" if none).
func (fn *fenceNode) cached() string {
	fn.t.Helper()
	e, err := fn.c.Get(fn.ctx, fn.url, "k", 0, GetOptions{})
	if errors.Is(err, ErrMiss) {
		return ""
	}
	if err != nil {
		fn.t.Fatal(err)
	}
	defer e.Body.Close()
	b, err := io.ReadAll(e.Body)
	if err != nil {
		fn.t.Fatal(err)
	}
	return string(b)
}

func wantStatus(t *testing.T, what string, err, want error) {
	t.Helper()
	if (want == nil) != (err == nil) || (want != nil && !errors.Is(err, want)) {
		t.Fatalf("%s: got %v, want %v", what, err, want)
	}
}

// TestFenceKeepsTheReplacedRowOut: an upload fences the key before its
// row commits; a read's fill of the replaced row, arriving at any time
// after, is refused; the upload's own write lands and lifts the block for
// newer fills only.
func TestFenceKeepsTheReplacedRowOut(t *testing.T) {
	fn := newFenceNode(t, 1)
	wantStatus(t, "first upload's write", fn.write("v1", 1, "", false), nil)
	fn.fence("up2", 0) // the second upload, before its commit
	if got := fn.cached(); got != "" {
		t.Fatalf("after the fence the node serves %q, want nothing", got)
	}
	wantStatus(t, "a fill of v1 during the upload", fn.write("v1", 1, "", true), ErrExists)
	wantStatus(t, "a fill of v2 before the upload's own write", fn.write("v2", 2, "", true), ErrExists)
	wantStatus(t, "another upload's write under the block", fn.write("x", 2, "other", false), ErrExists)
	wantStatus(t, "the upload's write", fn.write("v2", 2, "up2", false), nil)
	wantStatus(t, "the late fill of v1", fn.write("v1", 1, "", true), ErrExists)
	wantStatus(t, "a late unfenced write of v1", fn.write("v1", 1, "", false), ErrExists)
	if got := fn.cached(); got != "v2" {
		t.Fatalf("cached %q, want v2", got)
	}
	// Evicted or cleared by hand, v2 may be filled again, v1 still not.
	fn.n.cache.Delete("k")
	wantStatus(t, "the late fill of v1 after eviction", fn.write("v1", 1, "", true), ErrExists)
	wantStatus(t, "a fill of v2 after eviction", fn.write("v2", 2, "", true), nil)
}

// TestConcurrentUploadsKeepTheNewestVersion: two uploads fence the key;
// whatever order their writes arrive in, what stays cached is the newest
// committed version or nothing, never the older.
func TestConcurrentUploadsKeepTheNewestVersion(t *testing.T) {
	for _, c := range []struct {
		name   string
		writes [][3]string // value, version, token
	}{
		{"newer first", [][3]string{{"v2", "2", "b"}, {"v1", "1", "a"}}},
		{"older first", [][3]string{{"v1", "1", "a"}, {"v2", "2", "b"}}},
		// The block holder (b, fenced last) committed first: a's newer
		// write is refused by the block but raises the fence past b's.
		{"block holder older", [][3]string{{"v3", "3", "a"}, {"v2", "2", "b"}}},
	} {
		t.Run(c.name, func(t *testing.T) {
			fn := newFenceNode(t, 1)
			fn.fence("a", 0)
			fn.fence("b", 0)
			newest := ""
			var top uint64
			for _, w := range c.writes {
				v := map[string]uint64{"1": 1, "2": 2, "3": 3}[w[1]]
				fn.write(w[0], v, w[2], false)
				if v > top {
					top, newest = v, w[0]
				}
			}
			if got := fn.cached(); got != "" && got != newest {
				t.Fatalf("cached %q, want %q or nothing", got, newest)
			}
			wantStatus(t, "a fill older than the newest", fn.write("old", top-1, "", true), ErrExists)
		})
	}
}

// TestFenceByVersionTooLargeClearAndExpiry: a fence raised by version
// drops older copies; a versioned write too large to cache raises it too;
// a clear drops fences (fills from before it are refused by generation);
// a fence expires FenceTTL after its last change.
func TestFenceByVersionTooLargeClearAndExpiry(t *testing.T) {
	fn := newFenceNode(t, 1)
	wantStatus(t, "write v1", fn.write("v1", 1, "", false), nil)
	fn.fence("", 2)
	if got := fn.cached(); got != "" {
		t.Fatalf("fenced at version 2, still serves %q", got)
	}
	wantStatus(t, "fill v1 after the fence", fn.write("v1", 1, "", true), ErrExists)

	wantStatus(t, "write v3", fn.write("v3", 3, "", false), nil)
	big := strings.Repeat("x", 2<<20)
	wantStatus(t, "write v4, too large", fn.write(big, 4, "", false), ErrTooLarge)
	if got := fn.cached(); got != "" {
		t.Fatalf("v4 was too large, the node still serves %q", got)
	}
	wantStatus(t, "fill v3 after v4", fn.write("v3", 3, "", true), ErrExists)

	fn.n.ClearAt(context.Background(), 1)
	fn.gen = 1
	wantStatus(t, "fill v1 after a clear", fn.write("v1", 1, "", true), nil)

	fn.fence("", 5)
	wantStatus(t, "fill v1 under the fence", fn.write("v1", 1, "", true), ErrExists)
	fn.advance(FenceTTL - time.Second)
	wantStatus(t, "fill v1 just before expiry", fn.write("v1", 1, "", true), ErrExists)
	fn.advance(2 * time.Second)
	wantStatus(t, "fill v1 after expiry", fn.write("v1", 1, "", true), nil)
	fn.n.fences.mu.Lock()
	left := len(fn.n.fences.m)
	fn.n.fences.mu.Unlock()
	if left > 1 {
		t.Errorf("%d fences kept after expiry, want expired ones pruned", left)
	}
}

// TestUploadWriteFencesANewKey: the first upload of a key fences nothing
// before it commits, so its write fences the key at its version: a fill
// of an older row (a concurrent first upload's) is refused even once the
// write is evicted. A fill does not fence.
func TestUploadWriteFencesANewKey(t *testing.T) {
	fn := newFenceNode(t, 1)
	wantStatus(t, "a fill of v1", fn.write("v1", 1, "", true), nil)
	fn.n.cache.Delete("k")
	wantStatus(t, "the upload write of v2", fn.write("v2", 2, "", false), nil)
	fn.n.cache.Delete("k")
	wantStatus(t, "a fill of v1 after v2 was evicted", fn.write("v1", 1, "", true), ErrExists)
	wantStatus(t, "a fill of v2", fn.write("v2", 2, "", true), nil)
}

// TestOnlyTheLastPendingUploadIsCached is the campaign's fourth finding as
// a focused case: upload a fenced the key, upload b fenced it too and
// wrote first; b's image was cached while a, about to commit a newer row,
// was still pending, so for a moment the store held a's image and the
// cache b's. A write is stored only when no other fencing upload is
// pending; a failed upload releases its fence.
func TestOnlyTheLastPendingUploadIsCached(t *testing.T) {
	fn := newFenceNode(t, 1)
	fn.fence("a", 0)
	fn.fence("b", 0)
	wantStatus(t, "b's write while a is pending", fn.write("vb", 1, "b", false), ErrExists)
	if got := fn.cached(); got != "" {
		t.Fatalf("cached %q while an upload is pending, want nothing", got)
	}
	wantStatus(t, "a fill while a is pending", fn.write("vb", 1, "", true), ErrExists)
	wantStatus(t, "a's write, the last pending", fn.write("va", 2, "a", false), nil)
	if got := fn.cached(); got != "va" {
		t.Fatalf("cached %q, want va", got)
	}

	// c fences, then fails to write: it releases its fence at its version.
	fn.fence("c", 0)
	fn.fence("c", 3) // token and version: released
	wantStatus(t, "a fill of v3 after c released", fn.write("vc", 3, "", true), nil)
	wantStatus(t, "a fill of v2 after c released", fn.write("va", 2, "", true), ErrExists)
}
