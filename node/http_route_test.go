package node

import (
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"testing"

	"github.com/memcache/memcache/auth"
	"github.com/memcache/memcache/internal/pool"
)

// TestHotPathRoutesAsChi: every request answers the same through the
// node's handler, whose GET /cache/{key} skips chi, as through chi alone.
func TestHotPathRoutesAsChi(t *testing.T) {
	const secret = "s3cret"
	n, err := New(Config{ID: "n1", Secret: secret, Cache: pool.CacheConfig{CapacityMB: 1, Policy: pool.LRU}}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"k", "a/b", "sp ace", "../config", "/x"} {
		if err := n.cache.Put(k, Item{Value: []byte("value of " + k), ContentType: "image/png", ETag: `"e"`}); err != nil {
			t.Fatal(err)
		}
	}
	h := n.Handler()
	hp, ok := h.(hotPath)
	if !ok {
		t.Fatalf("Handler is a %T, want hotPath", h)
	}
	paths := []string{"/cache/k", "/cache/", "/cache", "/cache/a%2Fb", "/cache/a/b", "/cache/sp%20ace",
		"/cache/../config", "/cache//x", "/cache/%2Fx", "/cach%65/k", "/cache%2Fk", "/CACHE/k", "//cache/k", "/cache/absent", "/config"}
	for _, method := range []string{http.MethodGet, http.MethodHead, http.MethodPost} {
		for _, path := range paths {
			for _, hdr := range []map[string]string{
				{auth.Header: secret},
				{auth.Header: secret, HeaderEpoch: "0"},
				{auth.Header: secret, HeaderEpoch: "7"},
				{auth.Header: secret, HeaderEpoch: "x"},
				{auth.Header: secret, "If-None-Match": `"e"`},
				{auth.Header: "wrong"},
				{},
			} {
				serve := func(h http.Handler) *httptest.ResponseRecorder {
					r := httptest.NewRequest(method, path, nil)
					for k, v := range hdr {
						r.Header.Set(k, v)
					}
					w := httptest.NewRecorder()
					h.ServeHTTP(w, r)
					return w
				}
				got, want := serve(h), serve(hp.mux)
				if got.Code != want.Code || got.Body.String() != want.Body.String() {
					t.Errorf("%s %s %v: got %d %q, want (chi) %d %q", method, path, hdr, got.Code, got.Body, want.Code, want.Body)
				}
				for k := range want.Header() {
					// chi lists the Allow header's methods in no fixed order.
					g, w := slices.Sorted(slices.Values(got.Header().Values(k))), slices.Sorted(slices.Values(want.Header().Values(k)))
					if !slices.Equal(g, w) {
						t.Errorf("%s %s %v: header %s: got %q, want (chi) %q", method, path, hdr, k, g, w)
					}
				}
				if len(got.Header()) != len(want.Header()) {
					t.Errorf("%s %s %v: headers %v, want (chi) %v", method, path, hdr, got.Header(), want.Header())
				}
			}
		}
	}
}

// TestGetHitAllocations: a GET hit through the node's whole handler, with
// the cluster secret, allocates only its header values (one array and the
// Content-Length text).
func TestGetHitAllocations(t *testing.T) {
	const secret = "3f1c9a0b7e5d42c8a6f01b2d3e4c5a6978f0e1d2c3b4a596"
	n, err := New(Config{ID: "n1", Secret: secret, Cache: pool.CacheConfig{CapacityMB: 1, Policy: pool.LRU}}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{"cat.png", "images/cat.png"} {
		n.cache.Put(key, Item{Value: make([]byte, 1000), ContentType: "image/png", ETag: `"e"`})
	}
	h := n.Handler()
	for _, key := range []string{"cat.png", "images%2Fcat.png"} {
		r := httptest.NewRequest(http.MethodGet, "/cache/"+key, nil)
		r.Header.Set(auth.Header, secret)
		r.Header.Set(HeaderEpoch, "0")
		w := &discardWriter{h: make(http.Header)}
		allocs := testing.AllocsPerRun(1000, func() {
			w.reset()
			h.ServeHTTP(w, r)
		})
		if w.status != http.StatusOK || w.n != 1000 {
			t.Fatalf("GET /cache/%s: %d, %d bytes; want 200, 1000 bytes", key, w.status, w.n)
		}
		if allocs > 2 {
			t.Errorf("GET /cache/%s hit: %.0f allocations, want at most 2", key, allocs)
		}
	}
}

// TestCacheKeyAsEscapedPath: cacheKey, which reads the decoded path
// without allocating when it can, returns what unescaping the escaped path
// after "/cache/" returns, for URLs as the server parses them and as built
// by hand.
func TestCacheKeyAsEscapedPath(t *testing.T) {
	want := func(u *url.URL) (string, error) {
		key, err := url.PathUnescape(strings.TrimPrefix(u.EscapedPath(), "/cache/"))
		if err == nil && key == "" {
			err = ErrEmptyKey
		}
		return key, err
	}
	var urls []*url.URL
	for _, raw := range []string{"/cache/k", "/cache/", "/cache/a%2Fb", "/cache/a/b", "/cache/sp%20ace", "/cache/%25", "/cache/%2F",
		"/cache%2Fk", "/cach%65/k", "/cache/caf%C3%A9", "/cache/a+b", "/cache/%2fx", "/cache/[x]", "/other/k", "/cache//x"} {
		u, err := url.ParseRequestURI(raw)
		if err != nil {
			t.Fatal(err)
		}
		urls = append(urls, u)
	}
	urls = append(urls,
		&url.URL{Path: "/cache/a/b", RawPath: "/cache/a%2Fc"}, // RawPath not decoding to Path
		&url.URL{Path: "/cache/a b", RawPath: "/cache/a b"},   // RawPath not validly escaped
		&url.URL{Path: "/cache/k", RawPath: "/cach%65/k"},
		&url.URL{Path: "/cache/%zz"},
		&url.URL{Path: ""})
	for _, u := range urls {
		gotKey, gotErr := cacheKey(&http.Request{URL: u})
		wantKey, wantErr := want(u)
		if gotKey != wantKey || (gotErr == nil) != (wantErr == nil) {
			t.Errorf("cacheKey of Path %q RawPath %q: got %q, %v; want %q, %v", u.Path, u.RawPath, gotKey, gotErr, wantKey, wantErr)
		}
	}
}
