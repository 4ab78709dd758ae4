package node

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/memcache/memcache/internal/pool"
)

// newClientNode serves a real node behind the cluster secret and returns a
// client that carries it.
func newClientNode(t *testing.T) (*Node, string, *Client) {
	t.Helper()
	n, err := New(Config{ID: "A", Secret: "s", Cache: pool.CacheConfig{CapacityMB: 1, Policy: pool.LRU}}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(n.Handler())
	t.Cleanup(srv.Close)
	return n, srv.URL, NewClient(ClientConfig{Secret: "s", Timeout: 5 * time.Second})
}

func readEntry(t *testing.T, e *Entry) string {
	t.Helper()
	if e.Body == nil {
		t.Fatal("entry without a body")
	}
	defer e.Body.Close()
	b, err := io.ReadAll(e.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// ownAllSince gives node A every region since epoch.
func ownAllSince(t *testing.T, n *Node, epoch uint64) {
	t.Helper()
	var m Regions
	m.Epoch = epoch
	for r := range m.Owners {
		m.Owners[r], m.Since[r] = "A", epoch
	}
	if _, err := n.SetRegions(context.Background(), m); err != nil {
		t.Fatal(err)
	}
}

func TestClientCacheCallsRoundTripAndMapErrors(t *testing.T) {
	n, base, c := newClientNode(t)
	ctx := context.Background()
	keys := []string{"plain", "a/b/../c.png", "with space", "猫 ☕", "100%", "?q=1#x"}
	for _, k := range keys {
		if err := c.Put(ctx, base, k, []byte("v-"+k), PutOptions{ContentType: "image/png", ETag: `"e-` + k + `"`}); err != nil {
			t.Fatalf("Put %q: %v", k, err)
		}
	}
	for _, k := range keys {
		e, err := c.Get(ctx, base, k, 0, GetOptions{})
		if err != nil {
			t.Fatalf("Get %q: %v", k, err)
		}
		if e.ContentType != "image/png" || e.ETag != `"e-`+k+`"` || e.Size != int64(len("v-"+k)) || e.NotModified {
			t.Errorf("Get %q: got %+v, want image/png, its ETag and size", k, e)
		}
		if got := readEntry(t, e); got != "v-"+k {
			t.Errorf("Get %q: got %q, want %q", k, got, "v-"+k)
		}
	}
	// Revalidation: a matching ETag is a 304 without a body.
	e, err := c.Get(ctx, base, "plain", 0, GetOptions{IfNoneMatch: `"e-plain"`})
	if err != nil || !e.NotModified || e.Body != nil || e.ETag != `"e-plain"` {
		t.Fatalf("Get with a matching If-None-Match: %+v, %v; want NotModified, no body", e, err)
	}
	e, err = c.Get(ctx, base, "plain", 0, GetOptions{IfNoneMatch: `"other"`})
	if err != nil || e.NotModified || readEntry(t, e) != "v-plain" {
		t.Fatalf("Get with another If-None-Match: %+v, %v; want the value", e, err)
	}
	// Only if absent: 412 → ErrExists, the value unchanged.
	err = c.Put(ctx, base, "plain", []byte("late"), PutOptions{OnlyIfAbsent: true})
	if !errors.Is(err, ErrExists) {
		t.Fatalf("Put OnlyIfAbsent of a cached key: %v, want ErrExists", err)
	}
	if err := c.Put(ctx, base, "fresh", []byte("f"), PutOptions{OnlyIfAbsent: true}); err != nil {
		t.Fatalf("Put OnlyIfAbsent of an absent key: %v", err)
	}
	// Invalidate one key: then a miss (404 → ErrMiss).
	if err := c.Invalidate(ctx, base, "plain", 0); err != nil {
		t.Fatal(err)
	}
	var serr *StatusError
	if _, err := c.Get(ctx, base, "plain", 0, GetOptions{}); !errors.Is(err, ErrMiss) || !errors.As(err, &serr) || serr.Code != 404 {
		t.Fatalf("Get after Invalidate: %v, want ErrMiss (404)", err)
	}
	// Too large for the 1 MB cache: 413 → ErrTooLarge.
	if err := c.Put(ctx, base, "big", make([]byte, 2<<20), PutOptions{}); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("Put of 2 MB into 1 MB: %v, want ErrTooLarge", err)
	}
	// Clear all.
	if err := c.Clear(ctx, base, 0); err != nil {
		t.Fatal(err)
	}
	if n.Cache().Len() != 0 {
		t.Fatalf("after Clear: %d items, want 0", n.Cache().Len())
	}

	// Epochs: the node owns every region since epoch 3.
	ownAllSince(t, n, 3)
	for _, tc := range []struct {
		name string
		call func() error
		want error
	}{
		{"Get with a newer epoch (node behind)", func() error { _, err := c.Get(ctx, base, "k", 4, GetOptions{}); return err }, ErrConflict},
		{"Put with an epoch before the ownership", func() error { return c.Put(ctx, base, "k", []byte("v"), PutOptions{Epoch: 2}) }, ErrConflict},
		{"Invalidate with a newer epoch (node behind)", func() error { return c.Invalidate(ctx, base, "k", 4) }, ErrConflict},
		{"Put with the current epoch", func() error { return c.Put(ctx, base, "k", []byte("v"), PutOptions{Epoch: 3}) }, nil},
		{"Invalidate with an older epoch at the owner", func() error { return c.Invalidate(ctx, base, "k", 1) }, nil},
	} {
		if err := tc.call(); !errors.Is(err, tc.want) || (tc.want == nil) != (err == nil) {
			t.Errorf("%s: got %v, want %v", tc.name, err, tc.want)
		}
	}
	// The node gives every region to B: 421 → ErrMisdirected, with the node's epoch.
	var m Regions
	m.Epoch = 4
	for r := range m.Owners {
		m.Owners[r], m.Since[r] = "B", 4
	}
	if _, err := c.SetRegions(ctx, base, m); err != nil {
		t.Fatal(err)
	}
	for name, call := range map[string]func() error{
		"Get":        func() error { _, err := c.Get(ctx, base, "k", 4, GetOptions{}); return err },
		"Put":        func() error { return c.Put(ctx, base, "k", []byte("v"), PutOptions{Epoch: 4}) },
		"Invalidate": func() error { return c.Invalidate(ctx, base, "k", 4) },
	} {
		err := call()
		if !errors.Is(err, ErrMisdirected) || !errors.As(err, &serr) || serr.Epoch != 4 {
			t.Errorf("%s of a region the node lost: %v, want ErrMisdirected at epoch 4", name, err)
		}
	}
}

func TestClientControlCalls(t *testing.T) {
	n, base, c := newClientNode(t)
	ctx := context.Background()
	cfg, err := c.Config(ctx, base)
	if err != nil || cfg != (pool.CacheConfig{CapacityMB: 1, Policy: pool.LRU}) {
		t.Fatalf("Config: %+v, %v; want {1 LRU}", cfg, err)
	}
	got, err := c.SetConfig(ctx, base, pool.CacheConfig{CapacityMB: 8, Policy: pool.RR})
	if err != nil || got != (pool.CacheConfig{CapacityMB: 8, Policy: pool.RR}) || n.Cache().Config() != got {
		t.Fatalf("SetConfig: %+v, %v; node has %+v; want {8 RR}", got, err, n.Cache().Config())
	}
	var serr *StatusError
	if _, err := c.SetConfig(ctx, base, pool.CacheConfig{CapacityMB: 0, Policy: pool.RR}); !errors.As(err, &serr) || serr.Code != http.StatusBadRequest {
		t.Fatalf("SetConfig of 0 MB: %v, want a 400 StatusError", err)
	}

	var m Regions
	m.Epoch = 2
	for r := range m.Owners {
		m.Owners[r], m.Since[r] = []string{"A", "B"}[r%2], 2
	}
	applied, err := c.SetRegions(ctx, base, m)
	if err != nil || applied.Epoch != 2 || len(applied.Owned) != 8 {
		t.Fatalf("SetRegions: %+v, %v; want epoch 2 and 8 regions owned", applied, err)
	}
	held, err := c.Regions(ctx, base)
	if err != nil || held != m {
		t.Fatalf("Regions: %+v, %v; want %+v", held, err, m)
	}
	m.Epoch = 1
	if _, err := c.SetRegions(ctx, base, m); !errors.Is(err, ErrConflict) {
		t.Fatalf("SetRegions of an older map: %v, want ErrConflict", err)
	}

	if err := c.Put(ctx, base, keysIn(0, 1)[0], []byte("v"), PutOptions{Epoch: 2}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Get(ctx, base, keysIn(0, 1)[0], 2, GetOptions{}); err != nil {
		t.Fatal(err)
	}
	st, err := c.Stats(ctx, base, time.Time{})
	if err != nil || st.ID != "A" || st.Epoch != 2 || st.Counters.Gets != 1 || st.Counters.Hits != 1 || st.Counters.Items != 1 {
		t.Fatalf("Stats: %+v, %v; want node A at epoch 2, 1 GET, 1 hit, 1 item", st, err)
	}
	n.sampler.sample()
	if st, err := c.Stats(ctx, base, time.Time{}); err != nil || len(st.Samples) != 1 {
		t.Fatalf("Stats since the start: %d samples, %v; want 1", len(st.Samples), err)
	}
	if st, err := c.Stats(ctx, base, time.Now().Add(time.Hour)); err != nil || len(st.Samples) != 0 {
		t.Fatalf("Stats since a later time: %d samples, %v; want 0", len(st.Samples), err)
	}

	// Without the secret: 401, as a StatusError.
	bare := NewClient(ClientConfig{})
	if _, err := bare.Stats(ctx, base, time.Time{}); !errors.As(err, &serr) || serr.Code != http.StatusUnauthorized {
		t.Fatalf("Stats without the secret: %v, want a 401 StatusError", err)
	}
}

func TestClientCallsHaveADeadline(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer srv.Close()
	defer close(release)
	c := NewClient(ClientConfig{Timeout: 50 * time.Millisecond})
	start := time.Now()
	_, err := c.Stats(context.Background(), srv.URL, time.Time{})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Stats of a node that does not answer: %v, want a deadline error", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("gave up after %v, want about 50ms", d)
	}
}

func TestFillsOlderThanAClearAreRefused(t *testing.T) {
	n, base, c := newClientNode(t)
	ctx := context.Background()
	// Generation 0 and headerless fills are accepted on a fresh node.
	if err := c.Put(ctx, base, "k", []byte("v0"), PutOptions{}); err != nil {
		t.Fatalf("fill at generation 0: %v", err)
	}
	if r := do(t, "PUT", keyURL(base, "h"), []byte("v"), "X-Memcache-Secret", "s"); r.code != http.StatusNoContent {
		t.Fatalf("headerless PUT on a fresh node: %d, want 204", r.code)
	}
	// A frontend carrying out a delete-all clears at generation 2.
	if err := c.Clear(ctx, base, 2); err != nil {
		t.Fatal(err)
	}
	if n.Floor() != 2 || n.Cache().Len() != 0 {
		t.Fatalf("after Clear at 2: floor %d, %d items; want 2 and 0", n.Floor(), n.Cache().Len())
	}
	// A read that loaded its value before the clear fills late: refused.
	err := c.Put(ctx, base, "k", []byte("old"), PutOptions{Generation: 1, OnlyIfAbsent: true})
	var serr *StatusError
	if !errors.Is(err, ErrConflict) || !errors.As(err, &serr) || serr.Code != http.StatusConflict {
		t.Fatalf("fill at generation 1 after a clear at 2: %v, want 409 ErrConflict", err)
	}
	if r := do(t, "PUT", keyURL(base, "h"), []byte("v"), "X-Memcache-Secret", "s"); r.code != http.StatusConflict {
		t.Fatalf("headerless PUT (generation 0) after a clear at 2: %d, want 409", r.code)
	}
	if r := do(t, "PUT", keyURL(base, "h"), []byte("v"), "X-Memcache-Secret", "s", HeaderGeneration, "x"); r.code != http.StatusBadRequest {
		t.Fatalf("PUT with a malformed generation: %d, want 400", r.code)
	}
	if n.Cache().Len() != 0 {
		t.Fatalf("refused fills stored %d items", n.Cache().Len())
	}
	// Current fills are stored; a clear with an older generation lowers nothing.
	if err := c.Put(ctx, base, "k", []byte("new"), PutOptions{Generation: 2}); err != nil {
		t.Fatalf("fill at generation 2: %v", err)
	}
	if err := c.Clear(ctx, base, 1); err != nil || n.Floor() != 2 {
		t.Fatalf("Clear at 1: %v, floor %d; want the floor to stay 2", err, n.Floor())
	}
	// The watched view raises the floor too.
	v := pool.View{Cache: pool.CacheConfig{CapacityMB: 1, Policy: pool.LRU}, ClearGen: 2, DeleteGen: 1}
	v.Index = 1
	n.ApplyPool(v)
	if n.Floor() != 3 {
		t.Fatalf("after a view at generation 3: floor %d, want 3", n.Floor())
	}
	if err := c.Put(ctx, base, "k", []byte("v"), PutOptions{Generation: 2}); !errors.Is(err, ErrConflict) {
		t.Fatalf("fill at generation 2 after the view at 3: %v, want ErrConflict", err)
	}
	if err := c.Put(ctx, base, "k", []byte("v"), PutOptions{Generation: 3}); err != nil {
		t.Fatalf("fill at generation 3: %v", err)
	}
}

// TestGetBodyOutlivesTheAnswerTimeout: Timeout bounds the wait for a Get's
// answer, not the reading of its body, which BodyTimeout bounds: a caller
// streaming a large value to a slow reader gets all of it even when that
// takes longer than Timeout, and nothing once BodyTimeout has passed.
func TestGetBodyOutlivesTheAnswerTimeout(t *testing.T) {
	n, err := New(Config{ID: "A", Cache: pool.CacheConfig{CapacityMB: 64, Policy: pool.LRU}}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(n.Handler())
	defer srv.Close()
	// More than the loopback socket buffers hold: most of the value is
	// still on the node's side when the reader pauses.
	value := make([]byte, 32<<20)
	rand.Read(value)
	if err := n.Cache().Put("big", Item{Value: value, ContentType: "image/png"}); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, tc := range []struct {
		name        string
		bodyTimeout time.Duration
		wantAll     bool
	}{
		{"within the body bound", 30 * time.Second, true},
		{"past the body bound", time.Second, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// Timeout is long enough for a busy machine to answer.
			c := NewClient(ClientConfig{Timeout: time.Second, BodyTimeout: tc.bodyTimeout})
			e, err := c.Get(ctx, srv.URL, "big", 0, GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			defer e.Body.Close()
			first := make([]byte, 1)
			if _, err := io.ReadFull(e.Body, first); err != nil {
				t.Fatal(err)
			}
			// The property is about elapsed time: the reader stalls for
			// twice Timeout (and twice the short BodyTimeout) on the test's
			// own clock before reading on. Nothing else is awaited.
			<-time.After(2 * time.Second)
			rest, err := io.ReadAll(e.Body)
			got := append(first, rest...)
			if tc.wantAll {
				if err != nil || !bytes.Equal(got, value) {
					t.Fatalf("slow read within BodyTimeout: %d of %d bytes, %v; want the whole value", len(got), len(value), err)
				}
				return
			}
			if !errors.Is(err, context.DeadlineExceeded) || len(got) == len(value) {
				t.Fatalf("read past BodyTimeout: %d of %d bytes, %v; want a deadline error", len(got), len(value), err)
			}
		})
	}
}
