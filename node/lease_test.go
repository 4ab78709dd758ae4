package node

import (
	"bytes"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

// TestLeaseFencesReadsAndFills: a node never renewed serves; once renewed
// it serves while the lease holds and refuses GETs and fills (503) once it
// has lapsed, while still removing copies; a later renewal serves again.
// A renewal never shortens the lease.
func TestLeaseFencesReadsAndFills(t *testing.T) {
	n, err := New(Config{ID: "n1"}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(n.Handler())
	defer srv.Close()
	do := func(method, path string, body []byte) int {
		t.Helper()
		req, _ := http.NewRequest(method, srv.URL+path, bytes.NewReader(body))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := do(http.MethodPut, "/cache/k", []byte("v1")); code != http.StatusNoContent {
		t.Fatalf("put, never renewed: %d", code)
	}
	if code := do(http.MethodGet, "/cache/k", nil); code != http.StatusOK {
		t.Fatalf("get, never renewed: %d, want 200", code)
	}

	n.Renew(time.Now(), time.Hour)
	if code := do(http.MethodGet, "/cache/k", nil); code != http.StatusOK {
		t.Fatalf("get under the lease: %d, want 200", code)
	}
	n.Renew(time.Now().Add(-2*time.Hour), time.Hour) // an older answer arriving late
	if code := do(http.MethodGet, "/cache/k", nil); code != http.StatusOK {
		t.Fatalf("a late, older renewal shortened the lease: %d", code)
	}

	// A node whose lease ran out: a fresh node renewed in the past.
	n2, _ := New(Config{ID: "n2"}, slog.New(slog.DiscardHandler))
	n2.Cache().Put("k", Item{Value: []byte("old")})
	n2.Renew(time.Now().Add(-time.Minute), time.Second)
	srv2 := httptest.NewServer(n2.Handler())
	defer srv2.Close()
	for _, c := range []struct {
		method string
		want   int
	}{{http.MethodGet, http.StatusServiceUnavailable}, {http.MethodPut, http.StatusServiceUnavailable}, {http.MethodDelete, http.StatusNoContent}} {
		req, _ := http.NewRequest(c.method, srv2.URL+"/cache/k", bytes.NewReader([]byte("new")))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != c.want {
			t.Errorf("%s with the lease lapsed: %d, want %d", c.method, resp.StatusCode, c.want)
		}
	}
	if _, ok, _ := n2.Cache().Get("k"); ok {
		t.Error("the invalidation under a lapsed lease did not remove the copy")
	}
	// A fence must be refused: the node may have lost the region to a node
	// the fence never reached, and the upload must not go on.
	for _, h := range []string{HeaderFence, HeaderVersion} {
		req, _ := http.NewRequest(http.MethodDelete, srv2.URL+"/cache/k", nil)
		req.Header.Set(h, "7")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusServiceUnavailable {
			t.Errorf("fence (%s) with the lease lapsed: %d, want 503", h, resp.StatusCode)
		}
	}
	n2.Renew(time.Now(), time.Hour)
	resp, err := http.Get(srv2.URL + "/cache/k")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("get after renewal: %d, want 404 (served again, nothing cached)", resp.StatusCode)
	}
}
