package frontend

import (
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/memcache/memcache/internal/stall"
)

// TestLongAdminCallsPassOverAManagerThatDoesNotAnswer: a delete-all or a
// resize has minutes to finish, so a manager that accepts connections but
// never answers (SIGSTOPped, as the fault campaign found) must not hold it
// for that long: the frontend probes it first and asks the next one. The
// client gives up after 30 s, far below the 2-minute attempt deadline.
func TestLongAdminCallsPassOverAManagerThatDoesNotAnswer(t *testing.T) {
	var calls atomic.Int32
	good := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/healthz" {
			calls.Add(1)
		}
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(`{"success":"true"}`))
	}))
	defer good.Close()
	managers := []string{"http://" + stall.Listen(t, "127.0.0.1:0"), good.URL}
	s := newStores(t)
	f := New(Config{Managers: func() []string { return managers }}, s.blobs, s.index, slog.New(slog.DiscardHandler))
	srv := httptest.NewServer(f.Handler())
	defer srv.Close()

	client := &http.Client{Timeout: 30 * time.Second}
	for i, path := range []string{"/api/delete_all", "/api/configure_cache?numNodes=2", "/api/delete_all", "/api/configure_cache?numNodes=3"} {
		resp, err := client.Post(srv.URL+path, "", nil)
		if err != nil {
			t.Fatalf("%s (call %d): %v; want the working manager's answer", path, i, err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("%s (call %d): got %d, want 200", path, i, resp.StatusCode)
		}
	}
	if n := calls.Load(); n != 4 {
		t.Errorf("the working manager got %d calls, want 4 (one each)", n)
	}
}
