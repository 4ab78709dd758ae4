package load

import (
	"context"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/memcache/memcache/blob"
	"github.com/memcache/memcache/frontend"
	"github.com/memcache/memcache/keyindex"
)

// startFrontend runs a real frontend on the embedded stores (no cache nodes:
// every read is answered from the stores).
func startFrontend(t *testing.T) (string, *keyindex.Index) {
	t.Helper()
	dir := t.TempDir()
	b, err := blob.NewDir(filepath.Join(dir, "blobs"))
	if err != nil {
		t.Fatal(err)
	}
	ix, err := keyindex.Open(context.Background(), filepath.Join(dir, "keys.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ix.Close() })
	f := frontend.New(frontend.Config{}, b, ix, slog.New(slog.DiscardHandler))
	srv := httptest.NewServer(f.Handler())
	t.Cleanup(srv.Close)
	return srv.URL, ix
}

func TestRunSeedsReadsAndWrites(t *testing.T) {
	url, ix := startFrontend(t)
	var ticks int
	total, err := Run(context.Background(), Config{
		Frontend: url, Keys: 25, ImageKB: 2, Skew: 1.3, ReadRatio: 0.8, Concurrency: 4,
		Duration: 1500 * time.Millisecond, Seed: true,
	}, func(Stats) { ticks++ })
	if err != nil {
		t.Fatal(err)
	}
	if n, _ := ix.Count(context.Background()); n != 25 {
		t.Errorf("%d keys stored after seeding, want 25", n)
	}
	if total.Errors != 0 || total.Reads == 0 || total.Writes == 0 {
		t.Errorf("totals %+v: want reads and writes and no errors", total)
	}
	// Without cache nodes, no read can be a cache hit.
	if total.CacheHits != 0 || total.HitRate() != 0 {
		t.Errorf("%d cache hits with no cache node, want 0", total.CacheHits)
	}
	if frac := float64(total.Reads) / float64(total.Reads+total.Writes); frac < 0.6 || frac > 0.95 {
		t.Errorf("read fraction %.2f, want about 0.8", frac)
	}
	if ticks == 0 {
		t.Error("no progress reported")
	}
	if total.P50 <= 0 || total.P99 < total.P50 {
		t.Errorf("latency p50 %v p99 %v", total.P50, total.P99)
	}
}

func TestRunPacesToTheTargetRate(t *testing.T) {
	url, _ := startFrontend(t)
	total, err := Run(context.Background(), Config{
		Frontend: url, Keys: 5, ImageKB: 1, ReadRatio: 1, Concurrency: 4, Rate: 40,
		Duration: 2 * time.Second, Seed: true,
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	// 40 req/s for 2 s: at most 80 (the rate is a ceiling), and not far below.
	if n := total.Reads; n > 84 || n < 40 {
		t.Errorf("%d requests in 2 s at 40 req/s, want about 80", n)
	}
}

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		cfg Config
		msg string
	}{
		{Config{}, "frontend URL is required"},
		{Config{Frontend: "http://x", ReadRatio: 1.5}, "read ratio"},
		{Config{Frontend: "http://x", Keys: -1}, "must not be negative"},
		{Config{Frontend: "http://x", ImageKB: 20000}, "10 MB"},
	} {
		if err := tc.cfg.Validate(); err == nil || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("Validate(%+v) = %v, want an error mentioning %q", tc.cfg, err, tc.msg)
		}
	}
}

// countingFrontend runs a real frontend on the embedded stores, counting
// the connections its clients open; wrap, if set, wraps its handler.
func countingFrontend(t *testing.T, wrap func(http.Handler) http.Handler) (string, *atomic.Int64) {
	t.Helper()
	dir := t.TempDir()
	b, err := blob.NewDir(filepath.Join(dir, "blobs"))
	if err != nil {
		t.Fatal(err)
	}
	ix, err := keyindex.Open(context.Background(), filepath.Join(dir, "keys.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ix.Close() })
	h := frontend.New(frontend.Config{}, b, ix, slog.New(slog.DiscardHandler)).Handler()
	if wrap != nil {
		h = wrap(h)
	}
	srv := httptest.NewUnstartedServer(h)
	opened := new(atomic.Int64)
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			opened.Add(1)
		}
	}
	srv.Start()
	t.Cleanup(srv.Close)
	return srv.URL, opened
}

// TestRunReusesConnections: the workers keep their connections instead of
// opening one per request (hundreds of workers would otherwise fill the
// ephemeral ports with closed sockets): an upload's answer is read to the
// end, and the client keeps an idle connection per worker even when every
// worker's read ends at once.
func TestRunReusesConnections(t *testing.T) {
	t.Run("uploads", func(t *testing.T) {
		const workers = 16
		url, opened := countingFrontend(t, nil)
		total, err := Run(context.Background(), Config{
			Frontend: url, Keys: 20, ImageKB: 1, ReadRatio: 0, Concurrency: workers,
			Duration: 1500 * time.Millisecond, Seed: true,
		}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if total.Writes == 0 || total.Errors != 0 {
			t.Fatalf("totals %+v: want writes and no errors", total)
		}
		// A worker may dial while another's connection is on its way back
		// to the pool: allow twice the workers, far below one per request.
		if n := opened.Load(); n > 2*workers {
			t.Errorf("%d connections opened for %d uploads by %d workers, want at most %d", n, total.Writes+20, workers, 2*workers)
		}
	})
	t.Run("reads ending together", func(t *testing.T) {
		const workers = 32
		// Every read waits until all the workers' reads are in, then they
		// all answer at once: their connections go back to the pool
		// together.
		var (
			mu      sync.Mutex
			waiting int
			gate    = make(chan struct{})
		)
		barrier := func(next http.Handler) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.Method == http.MethodGet {
					mu.Lock()
					g := gate
					if waiting++; waiting == workers {
						close(gate)
						gate, waiting = make(chan struct{}), 0
					}
					mu.Unlock()
					select {
					case <-g:
					case <-r.Context().Done():
						return
					}
				}
				next.ServeHTTP(w, r)
			})
		}
		url, opened := countingFrontend(t, barrier)
		total, err := Run(context.Background(), Config{
			Frontend: url, Keys: 5, ImageKB: 1, ReadRatio: 1, Concurrency: workers,
			Duration: 1500 * time.Millisecond, Seed: true,
		}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if total.Reads < 2*workers || total.Errors != 0 {
			t.Fatalf("totals %+v: want at least two rounds of reads and no errors", total)
		}
		if n := opened.Load(); n > 2*workers {
			t.Errorf("%d connections opened for %d reads by %d workers, want at most %d", n, total.Reads, workers, 2*workers)
		}
	})
}
