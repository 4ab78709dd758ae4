package frontend

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http/httptest"
	"os"
	"testing"

	"github.com/memcache/memcache/internal/pool"
	"github.com/memcache/memcache/node"
)

// oneNodeView is a view in which the node at url owns every region.
func oneNodeView(url string) pool.View {
	v := pool.View{Index: 1, Cache: pool.CacheConfig{CapacityMB: 1, Policy: pool.LRU}}
	v.Members = []pool.Member{{ID: "n1", HTTP: url}}
	for r := range v.Regions {
		v.Regions[r] = "n1"
	}
	return v
}

// TestReplacementTooLargeToCacheKeepsTheOldImageOut is the fault
// campaign's second finding as a focused case: a read that loaded a row
// just before it was replaced filled the cache after the upload's
// invalidation, and the old image was served from then on — here the new
// image is too large to cache, so nothing of the upload's own would
// overwrite it. With versions and fences the late fill is refused and
// every read answers the new image.
func TestReplacementTooLargeToCacheKeepsTheOldImageOut(t *testing.T) {
	st := newStores(t)
	n, err := node.New(node.Config{ID: "n1", Cache: pool.CacheConfig{CapacityMB: 1, Policy: pool.LRU}}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	nodeSrv := httptest.NewServer(n.Handler())
	defer nodeSrv.Close()
	f := New(Config{MaxUpload: 4 << 20}, st.blobs, st.index, slog.New(slog.DiscardHandler))
	view := oneNodeView(nodeSrv.URL)
	f.setPool(view)
	ctx := context.Background()

	red := mustRead(t, "red.png")
	big := append(mustRead(t, "blue.png"), make([]byte, 2<<20)...) // a PNG over the node's 1 MB
	if _, err := f.Put(ctx, "k", red); err != nil {
		t.Fatal(err)
	}
	if img, err := f.Get(ctx, "k"); err != nil || !img.FromCache || !bytes.Equal(img.Data, red) {
		t.Fatalf("first image: from cache %v, err %v; want it cached", img.FromCache, err)
	}
	// A read loads the row of the first image, then stalls.
	old, err := st.index.Get(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Put(ctx, "k", big); err != nil {
		t.Fatal(err)
	}
	// The stalled read's fill arrives now.
	f.toCache(ctx, "k", Image{Data: red, ContentType: "image/png", ETag: etagOf(old.SHA256)}, cacheWrite{onlyIfAbsent: true, version: old.Version}, &view, view.Generation())
	for i := range 3 {
		img, err := f.Get(ctx, "k")
		if err != nil || !bytes.Equal(img.Data, big) {
			t.Fatalf("read %d after the replacement: %d bytes (from cache %v), err %v; want the new %d bytes", i, len(img.Data), img.FromCache, err, len(big))
		}
	}
}

// TestReplacingWithTheOwnerUnreachableStoresNothing: an upload that
// replaces a key fences the owner's copy before it commits; when the owner
// cannot be reached it answers ErrUnavailable having changed nothing (the
// row, the blob store and the old image stay), while the first upload of
// a new key does not need the owner.
func TestReplacingWithTheOwnerUnreachableStoresNothing(t *testing.T) {
	st := newStores(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := "http://" + ln.Addr().String()
	ln.Close() // nothing listens there now: connections are refused
	f := New(Config{MaxUpload: 64 << 10, InvalidateTimeout: 300e6}, st.blobs, st.index, slog.New(slog.DiscardHandler))
	f.setPool(oneNodeView(dead))
	ctx := context.Background()
	red, blue := mustRead(t, "red.png"), mustRead(t, "blue.png")
	first, err := f.Put(ctx, "k", red)
	if err != nil {
		t.Fatalf("first upload of a new key with the owner down: %v", err)
	}
	objects := func() int {
		ents, err := os.ReadDir(st.dir + "/img")
		if err != nil {
			t.Fatal(err)
		}
		return len(ents)
	}
	if n := objects(); n != 1 {
		t.Fatalf("%d objects after one upload", n)
	}
	if _, err := f.Put(ctx, "k", blue); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("replacement with the owner down: %v, want ErrUnavailable", err)
	}
	row, err := st.index.Get(ctx, "k")
	if err != nil || row.Object != first.Object || row.Version != 1 {
		t.Errorf("row after the refused replacement: %+v, %v; want the first (version 1)", row, err)
	}
	if n := objects(); n != 1 {
		t.Errorf("%d objects after the refused replacement, want 1 (its blob removed)", n)
	}
	if _, err := f.Get(ctx, "k"); err != nil {
		t.Errorf("read after the refused replacement: %v", err)
	}
}
