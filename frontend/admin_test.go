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

// TestAdminCallsMoveOnFromAManagerThatDoesNotAnswer: with one manager
// paused and one without a leader (503), every admin call sent to the
// frontend is answered by the manager that works, whichever it tries first.
func TestAdminCallsMoveOnFromAManagerThatDoesNotAnswer(t *testing.T) {
	good := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(`{"success":"true","numNodes":2}`))
	}))
	defer good.Close()
	noLeader := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusServiceUnavailable)
		w.Write([]byte(`{"error":{"code":503,"message":"no leader"}}`))
	}))
	defer noLeader.Close()
	managers := []string{"http://" + stall.Listen(t, "127.0.0.1:0"), noLeader.URL, good.URL}
	s := newStores(t)
	f := New(Config{Managers: func() []string { return managers }}, s.blobs, s.index, slog.New(slog.DiscardHandler))
	srv := httptest.NewServer(f.Handler())
	defer srv.Close()

	client := &http.Client{Timeout: 30 * time.Second}
	// Three calls start at each manager in turn.
	for i := range len(managers) {
		start := time.Now()
		resp, err := client.Post(srv.URL+"/api/getNumNodes", "", nil)
		if err != nil {
			t.Fatalf("call %d: got %v, want the working manager's answer", i, err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("call %d: got %d, want 200", i, resp.StatusCode)
		}
		if d := time.Since(start); d > adminReadTimeout+5*time.Second {
			t.Errorf("call %d took %v, want at most about one attempt's deadline (%v)", i, d, adminReadTimeout)
		}
	}
}

// TestACommittedDeleteAllIsNotSentToAnotherManager: a manager that
// committed a delete-all but could not confirm it carried out answers 503
// with HeaderCommitted; sending the call on to the next manager would
// commit another generation, so the frontend answers with it instead.
func TestACommittedDeleteAllIsNotSentToAnotherManager(t *testing.T) {
	var calls atomic.Int32
	committed := func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" {
			return // the probe before a long call
		}
		calls.Add(1)
		w.Header().Set(HeaderCommitted, "7")
		w.WriteHeader(http.StatusServiceUnavailable)
		w.Write([]byte(`{"success":"false","error":{"code":503,"message":"committed, not yet carried out"}}`))
	}
	a, b := httptest.NewServer(http.HandlerFunc(committed)), httptest.NewServer(http.HandlerFunc(committed))
	defer a.Close()
	defer b.Close()
	s := newStores(t)
	f := New(Config{Managers: func() []string { return []string{a.URL, b.URL} }}, s.blobs, s.index, slog.New(slog.DiscardHandler))
	srv := httptest.NewServer(f.Handler())
	defer srv.Close()
	resp, err := http.Post(srv.URL+"/api/delete_all", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get(HeaderCommitted) != "7" || calls.Load() != 1 {
		t.Errorf("got %d, %s %q, %d manager calls; want 503, the header \"7\", 1 call",
			resp.StatusCode, HeaderCommitted, resp.Header.Get(HeaderCommitted), calls.Load())
	}
}
