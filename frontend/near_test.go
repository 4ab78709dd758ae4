package frontend

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/memcache/memcache/internal/pool"
	"github.com/memcache/memcache/internal/waitfor"
	"github.com/memcache/memcache/node"
	"github.com/memcache/memcache/region"
)

// nearRig is a real cache node and two frontends over the same stores,
// each with a near-cache polling the node over real sockets.
type nearRig struct {
	st     stores
	n      *node.Node
	srv    *httptest.Server
	view   pool.View
	f1, f2 *Frontend
	cut    atomic.Bool // f2's polls fail (see cuttable)
}

// longLease is longer than any test here runs: a copy that goes away went
// because it was revoked, not because its lease ended.
const longLease = time.Minute

func newNearRig(t *testing.T, lease time.Duration) *nearRig {
	t.Helper()
	r := &nearRig{st: newStores(t)}
	r.n, r.srv, r.view = serveNode(t, node.Config{ID: "n1", ReadLease: lease, ReadLeaseGrace: -1, PollWait: 200 * time.Millisecond}, nil)
	r.f1 = r.frontend(t, nil)
	r.f2 = r.frontend(t, &r.cut)
	return r
}

// frontend starts a frontend following r's node, its polls failing while
// cut is set, and waits until its poll is up.
func (r *nearRig) frontend(t *testing.T, cut *atomic.Bool) *Frontend {
	t.Helper()
	f := New(Config{MaxUpload: 1 << 20, NearCacheMB: 8, NodeTimeout: 10 * time.Second}, r.st.blobs, r.st.index, slog.New(slog.DiscardHandler))
	if cut != nil {
		f.nodes = node.NewClient(node.ClientConfig{HTTPClient: &http.Client{Transport: cuttable{cut, http.DefaultTransport}}, Timeout: 10 * time.Second})
		f.near.nodes = f.nodes
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		f.near.run(ctx)
	}()
	t.Cleanup(func() { cancel(); <-done })
	waitfor.True(t, 30*time.Second, "the near-cache's poll of the node is up", func() bool {
		f.setPool(r.view)
		s := f.near.stream(r.srv.URL)
		return s != nil && s.up.Load()
	})
	return f
}

// cuttable fails every poll while cut is set, and cuts polls in flight:
// the frontend has lost contact with the node (reads still pass).
type cuttable struct {
	cut  *atomic.Bool
	base http.RoundTripper
}

func (c cuttable) RoundTrip(req *http.Request) (*http.Response, error) {
	if !strings.HasPrefix(req.URL.Path, "/leases/") {
		return c.base.RoundTrip(req)
	}
	if c.cut.Load() {
		return nil, errors.New("cut")
	}
	ctx, cancel := context.WithCancel(req.Context())
	go func() {
		defer cancel()
		for !c.cut.Load() && ctx.Err() == nil {
			t := time.NewTimer(5 * time.Millisecond)
			select {
			case <-ctx.Done():
			case <-t.C:
			}
			t.Stop()
		}
	}()
	resp, err := c.base.RoundTrip(req.WithContext(ctx))
	if err != nil {
		return nil, err
	}
	resp.Body = cancelOnClose{resp.Body, cancel}
	return resp, nil
}

type cancelOnClose struct {
	io.ReadCloser
	cancel context.CancelFunc
}

func (c cancelOnClose) Close() error {
	err := c.ReadCloser.Close()
	c.cancel()
	return err
}

// requests is how many cache requests the node has served.
func (r *nearRig) requests() uint64 { return r.n.Counters().Requests }

// leased reads key through f until a read is answered from f's
// near-cache under a lease (the node serves no request for it), and
// returns the image and how many reads it made.
func (r *nearRig) leased(t *testing.T, f *Frontend, key string) ([]byte, uint64) {
	t.Helper()
	var data []byte
	var reads uint64
	waitfor.True(t, 30*time.Second, "a read of "+key+" answered from the near-cache", func() bool {
		before := r.requests()
		img, err := f.Get(context.Background(), key)
		if err != nil {
			t.Fatal(err)
		}
		reads++
		data = img.Data
		return r.requests() == before
	})
	return data, reads
}

// held reports whether f's near-cache holds a copy of key.
func held(f *Frontend, key string) bool {
	_, ok, _ := f.near.cache.Get(key)
	return ok
}

// read reads key through f, failing the test on an error.
func read(t *testing.T, f *Frontend, key string) []byte {
	t.Helper()
	img, err := f.Get(context.Background(), key)
	if err != nil {
		t.Fatalf("reading %q: %v", key, err)
	}
	return img.Data
}

func TestNearCacheServesWithoutARoundTripAndReportsItsHits(t *testing.T) {
	r := newNearRig(t, longLease)
	red := mustRead(t, "red.png")
	if _, err := r.f1.Put(context.Background(), "k", red); err != nil {
		t.Fatal(err)
	}
	got, reads := r.leased(t, r.f2, "k")
	if !bytes.Equal(got, red) {
		t.Fatal("the near-cache served other bytes than uploaded")
	}
	// Ten more reads: no request reaches the node, and each is reported
	// to it as a hit on a later poll, so that the node counts one GET per
	// read and the pool's miss rate stays true.
	before := r.requests()
	for range 10 {
		if !bytes.Equal(read(t, r.f2, "k"), red) {
			t.Fatal("the near-cache served other bytes than uploaded")
		}
	}
	reads += 10
	if d := r.requests() - before; d != 0 {
		t.Fatalf("the node served %d requests for reads under a lease, want 0", d)
	}
	waitfor.True(t, 30*time.Second, "the node counts a GET for each read", func() bool {
		return r.n.Counters().Gets >= reads
	})
	c := r.n.Counters()
	if c.Gets != reads || c.Misses != 0 {
		t.Fatalf("the node counted %d GETs (%d misses) for %d reads that all hit", c.Gets, c.Misses, reads)
	}
}

// Each way the node changes what a key's copy may be revokes the
// near-cache's lease before it answers.
func TestNearCacheRevocation(t *testing.T) {
	red, blue := mustRead(t, "red.png"), mustRead(t, "blue.png")
	setup := func(t *testing.T) *nearRig {
		r := newNearRig(t, longLease)
		if _, err := r.f1.Put(context.Background(), "k", red); err != nil {
			t.Fatal(err)
		}
		r.leased(t, r.f2, "k")
		return r
	}
	t.Run("write", func(t *testing.T) {
		r := setup(t)
		if _, err := r.f1.Put(context.Background(), "k", blue); err != nil {
			t.Fatal(err)
		}
		if held(r.f2, "k") {
			t.Fatal("the upload was answered while the other frontend still held its copy")
		}
		if !bytes.Equal(read(t, r.f2, "k"), blue) {
			t.Fatal("a read after the upload was answered served the replaced image")
		}
	})
	t.Run("invalidate", func(t *testing.T) {
		r := setup(t)
		c := node.NewClient(node.ClientConfig{})
		if err := c.Invalidate(context.Background(), r.srv.URL, "k", r.view.Epoch); err != nil {
			t.Fatal(err)
		}
		if held(r.f2, "k") {
			t.Fatal("the invalidation was answered while a frontend still held the copy")
		}
	})
	t.Run("fence", func(t *testing.T) {
		r := setup(t)
		c := node.NewClient(node.ClientConfig{})
		if err := c.Fence(context.Background(), r.srv.URL, "k", node.FenceOptions{Epoch: r.view.Epoch, Version: 99}); err != nil {
			t.Fatal(err)
		}
		if held(r.f2, "k") {
			t.Fatal("the fence was answered while a frontend still held the copy")
		}
	})
	t.Run("clear", func(t *testing.T) {
		r := setup(t)
		c := node.NewClient(node.ClientConfig{})
		if err := c.Clear(context.Background(), r.srv.URL, 1); err != nil {
			t.Fatal(err)
		}
		if held(r.f2, "k") {
			t.Fatal("the clear was answered while a frontend still held a copy")
		}
	})
	t.Run("delete-all", func(t *testing.T) {
		r := setup(t)
		gen := r.view.DeleteGen + 1
		if err := r.f1.deleteAllAt(context.Background(), gen, false); err != nil {
			t.Fatal(err)
		}
		if _, err := r.f2.Get(context.Background(), "k"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("a read after the delete-all was answered got %v, want ErrNotFound", err)
		}
	})
	t.Run("region-loss", func(t *testing.T) {
		r := setup(t)
		// The region of k moves to another node; f1 learns it, f2 does
		// not (it still routes k to n1). Once n1 has applied the map, f2
		// holds no copy of k: the replacement written through the new
		// owner is what f2 reads.
		n2, _, v2 := serveNode(t, node.Config{ID: "n2"}, nil)
		moved := r.view
		moved.Index, moved.Epoch = 2, 2
		moved.Members = append(append([]pool.Member(nil), r.view.Members...), v2.Members...)
		rk := region.Of("k")
		moved.Regions[rk], moved.Since[rk] = "n2", 2
		for _, n := range []*node.Node{r.n, n2} {
			if _, err := n.SetRegions(context.Background(), node.Regions{Epoch: 2, Owners: moved.Regions, Since: moved.Since}); err != nil {
				t.Fatal(err)
			}
		}
		if held(r.f2, "k") {
			t.Fatal("the node applied the loss of k's region while a frontend still held its copy")
		}
		r.f1.setPool(moved)
		if _, err := r.f1.Put(context.Background(), "k", blue); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(read(t, r.f2, "k"), blue) {
			t.Fatal("a frontend behind on the region map served the copy of the region's previous owner")
		}
	})
}

// A frontend cut off from the node keeps serving its copy only until the
// lease ends, and the node's write waits for that.
func TestNearCacheLostContact(t *testing.T) {
	const lease = 3 * time.Second
	r := newNearRig(t, lease)
	red, blue := mustRead(t, "red.png"), mustRead(t, "blue.png")
	if _, err := r.f1.Put(context.Background(), "k", red); err != nil {
		t.Fatal(err)
	}
	r.leased(t, r.f2, "k")
	r.cut.Store(true)
	waitfor.True(t, 30*time.Second, "f2's poll is down", func() bool { return !r.f2.near.stream(r.srv.URL).up.Load() })
	if _, err := r.f1.Put(context.Background(), "k", blue); err != nil {
		t.Fatal(err)
	}
	if !held(r.f2, "k") {
		t.Fatal("the copy of a frontend cut off from the node is gone: the test cut nothing")
	}
	if !bytes.Equal(read(t, r.f2, "k"), blue) {
		t.Fatal("a frontend cut off from the node served its copy past the lease, after the upload was answered")
	}
	// No new lease while cut off: every read goes to the node.
	before := r.requests()
	read(t, r.f2, "k")
	read(t, r.f2, "k")
	if d := r.requests() - before; d != 2 {
		t.Fatalf("a frontend cut off from the node made %d requests for 2 reads, want 2 (no lease)", d)
	}
}

// A revocation that overtakes the answer to the read it revokes keeps
// that answer out of the near-cache.
func TestNearCacheRevocationOvertakingTheRead(t *testing.T) {
	n := newNear(8, nil, slog.New(slog.DiscardHandler))
	s := &stream{base: "http://n1"}
	s.up.Store(true)
	n.streams.Store(&map[string]*stream{"http://n1": s})
	item := node.Item{Value: []byte("old"), ETag: `"old"`}
	for _, rev := range []node.Revocation{{Key: "k"}, {Regions: 1 << region.Of("k")}, {All: true}} {
		_, f := n.begin("k", "http://n1")
		if f == nil {
			t.Fatal("no lease asked for with the poll up")
		}
		n.revoke(rev)
		n.end(f, "http://n1", &item, time.Minute)
		if _, _, leased := n.lookup("k", "http://n1"); leased {
			t.Fatalf("revocation %+v overtook the read, yet the read's copy is served", rev)
		}
	}
	// Without a revocation the same read is kept; another key's does not
	// spoil it.
	_, f := n.begin("k", "http://n1")
	n.revoke(node.Revocation{Key: "other"})
	n.end(f, "http://n1", &item, time.Minute)
	if _, _, leased := n.lookup("k", "http://n1"); !leased {
		t.Fatal("a read no revocation overtook is not served from the near-cache")
	}
	if _, _, leased := n.lookup("k", "http://n2"); leased {
		t.Fatal("a copy from n1 was served for a key the view gives to n2")
	}
}
