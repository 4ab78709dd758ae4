package frontend

import (
	"bytes"
	"context"
	"encoding/base64"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"testing"

	"github.com/memcache/memcache/node"
)

// TestReplacingWithAnImageTooLargeToCacheRemovesTheOldCopy: the owner node
// holds the old image; the new one is over the node's capacity, so it is
// not cached. The old copy must still be invalidated: every read after the
// upload answers the new image (from the stores), never the old one.
func TestReplacingWithAnImageTooLargeToCacheRemovesTheOldCopy(t *testing.T) {
	st := newStores(t)
	n, _, view := serveNode(t, node.Config{ID: "n1"}, nil)
	view.Cache.CapacityMB = 1
	if err := n.Cache().SetConfig(view.Cache); err != nil {
		t.Fatal(err)
	}
	f := New(Config{MaxUpload: 4 << 20}, st.blobs, st.index, slog.New(slog.DiscardHandler))
	f.setPool(view)
	srv := httptest.NewServer(f.Handler())
	defer srv.Close()
	ctx := context.Background()
	red := mustRead(t, "red.png")
	big := append(append([]byte{}, red...), make([]byte, 3<<19)...) // a PNG, 1.5 MB: over the node's 1 MB
	if _, err := f.Put(ctx, "k", red); err != nil {
		t.Fatal(err)
	}
	if img, err := f.Get(ctx, "k"); err != nil || !img.FromCache || !bytes.Equal(img.Data, red) {
		t.Fatalf("before the replace: cache %v, %d bytes, %v; want the old image from the cache", img.FromCache, len(img.Data), err)
	}
	if _, err := f.Put(ctx, "k", big); err != nil {
		t.Fatalf("replace with an image too large to cache: %v", err)
	}
	if _, ok, _ := n.Cache().Get("k"); ok {
		t.Error("the owner node still holds a copy of k after the replace")
	}
	for _, path := range []string{"/images/k", "/api/key/k"} {
		var body []byte
		if path == "/images/k" {
			_, _, body = get(t, srv.URL+path)
		} else {
			_, out := post(t, srv.URL+path)
			body = decodeContent(t, out)
		}
		if !bytes.Equal(body, big) {
			t.Errorf("%s after the replace: %d bytes, want the new image's %d", path, len(body), len(big))
		}
	}
}

// TestEachReadPathCountsOneReadAndOneGet checks the figures the scaler and
// the UI act on: a read through /images/{key}, /api/key/{key} or the
// retrieve page counts exactly one read at the frontend (a hit or a miss)
// and one GET at the owner node (a miss there exactly when the frontend
// counts one); an upload, a replace and a listing count none.
func TestEachReadPathCountsOneReadAndOneGet(t *testing.T) {
	st := newStores(t)
	n, _, view := serveNode(t, node.Config{ID: "n1"}, nil)
	f := New(Config{MaxUpload: 64 << 10}, st.blobs, st.index, slog.New(slog.DiscardHandler))
	f.setPool(view)
	srv := httptest.NewServer(f.Handler())
	defer srv.Close()
	red, blue := mustRead(t, "red.png"), mustRead(t, "blue.png")

	type counts struct{ hits, misses, gets, nodeMisses uint64 }
	snap := func() counts {
		c := n.Counters()
		return counts{f.hits.Load(), f.misses.Load(), c.Gets, c.Misses}
	}
	step := func(what string, do func(), want counts) {
		t.Helper()
		before := snap()
		do()
		after := snap()
		got := counts{after.hits - before.hits, after.misses - before.misses, after.gets - before.gets, after.nodeMisses - before.nodeMisses}
		if got != want {
			t.Errorf("%s: counted %d hits, %d misses at the frontend, %d GETs, %d misses at the node; want %d, %d, %d, %d",
				what, got.hits, got.misses, got.gets, got.nodeMisses, want.hits, want.misses, want.gets, want.nodeMisses)
		}
	}
	none, hit, miss := counts{}, counts{hits: 1, gets: 1}, counts{misses: 1, gets: 1, nodeMisses: 1}
	step("upload", func() {
		if code, out := upload(t, srv.URL, "/api/upload", ptr("k"), red); code != 200 {
			t.Fatalf("upload: %d %v", code, out)
		}
	}, none)
	step("upload page", func() {
		if code, _ := upload(t, srv.URL, "/upload", ptr("p"), red); code != 200 {
			t.Fatalf("upload page: %d", code)
		}
	}, none)
	step("replace", func() {
		if code, out := upload(t, srv.URL, "/api/upload", ptr("k"), blue); code != 200 {
			t.Fatalf("replace: %d %v", code, out)
		}
	}, none)
	step("list", func() { post(t, srv.URL+"/api/list_keys") }, none)
	reads := map[string]func(key string){
		"/images/{key}": func(key string) {
			if code, _, _ := get(t, srv.URL+"/images/"+url.PathEscape(key)); code != 200 {
				t.Fatalf("/images/%s: %d", key, code)
			}
		},
		"/api/key/{key}": func(key string) {
			if code, _ := post(t, srv.URL+"/api/key/"+url.PathEscape(key)); code != 200 {
				t.Fatalf("/api/key/%s: %d", key, code)
			}
		},
		"/retrieve": func(key string) {
			if code, _, _ := get(t, srv.URL+"/retrieve?key="+url.QueryEscape(key)); code != 200 {
				t.Fatalf("/retrieve?key=%s: %d", key, code)
			}
		},
	}
	for path, read := range reads {
		n.Cache().Delete("k")
		step(path+" cold", func() { read("k") }, miss)
		step(path+" warm", func() { read("k") }, hit)
		step(path+" warm again", func() { read("k") }, hit)
	}
	step("unknown key", func() {
		if code, _, _ := get(t, srv.URL+"/images/nope"); code != http.StatusNotFound {
			t.Fatalf("/images/nope: %d, want 404", code)
		}
	}, miss)
	step("bad key", func() {
		if code, _, _ := get(t, srv.URL+"/images/bad%0Akey"); code != http.StatusBadRequest {
			t.Fatalf("/images/bad%%0Akey: %d, want 400", code)
		}
	}, none)
}

// decodeContent returns the image bytes of an /api/key answer.
func decodeContent(t *testing.T, out map[string]any) []byte {
	t.Helper()
	s, _ := out["content"].(string)
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		t.Fatalf("content of %v: %v", out, err)
	}
	return b
}

// TestUploadAtTheLimit: an image of exactly MaxUpload bytes is stored; one
// byte more is refused with 413 and stores nothing.
func TestUploadAtTheLimit(t *testing.T) {
	st := newStores(t)
	_, srv := newTestFrontend(t, st.blobs, st.index) // MaxUpload 64 KB
	red := mustRead(t, "red.png")
	exact := append(append([]byte{}, red...), make([]byte, 64<<10-len(red))...)
	if code, out := upload(t, srv.URL, "/api/upload", ptr("exact"), exact); code != http.StatusOK {
		t.Fatalf("upload of exactly the limit: %d %v, want 200", code, out)
	}
	if _, out := post(t, srv.URL+"/api/key/exact"); !bytes.Equal(decodeContent(t, out), exact) {
		t.Fatal("the upload at the limit was not stored whole")
	}
	if code, out := upload(t, srv.URL, "/api/upload", ptr("over"), append(exact, 0)); code != http.StatusRequestEntityTooLarge {
		t.Fatalf("upload one byte over the limit: %d %v, want 413", code, out)
	}
	if n, _ := st.index.Count(context.Background()); n != 1 {
		t.Errorf("%d rows, want 1 (only the upload at the limit)", n)
	}
}
