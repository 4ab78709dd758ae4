package load

import (
	"context"
	"errors"
	"fmt"
	"io"
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
	"github.com/memcache/memcache/internal/waitfor"
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

// fakeFrontend answers uploads with 200 and reads of key with source(key)
// as X-Memcache-Source ("" for a 500), counting what it answered.
type fakeFrontend struct {
	source               func(key string) string
	reads, uploads, hits atomic.Int64
}

func (f *fakeFrontend) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch {
	case r.Method == http.MethodPost && r.URL.Path == "/api/upload":
		io.Copy(io.Discard, r.Body)
		f.uploads.Add(1)
		io.WriteString(w, `{"success":"true"}`)
	case r.Method == http.MethodGet && strings.HasPrefix(r.URL.Path, "/images/"):
		f.reads.Add(1)
		src := f.source(strings.TrimPrefix(r.URL.Path, "/images/"))
		if src == "" {
			http.Error(w, "injected", http.StatusInternalServerError)
			return
		}
		if src == "cache" {
			f.hits.Add(1)
		}
		w.Header().Set("X-Memcache-Source", src)
		w.Write([]byte("\x89PNG\r\n\x1a\n"))
	default:
		http.NotFound(w, r)
	}
}

func serveFake(t *testing.T, source func(string) string) (*fakeFrontend, string) {
	t.Helper()
	f := &fakeFrontend{source: source}
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	return f, srv.URL
}

// TestRunCountsHitsAsTheFrontendReportsThem: a read is a hit exactly when
// the frontend says it came from the cache, a failed read is an error and
// neither a read nor a hit.
func TestRunCountsHitsAsTheFrontendReportsThem(t *testing.T) {
	for _, tc := range []struct {
		name   string
		source func(string) string
		check  func(t *testing.T, s Stats)
	}{
		{"every read from the cache", func(string) string { return "cache" }, func(t *testing.T, s Stats) {
			if s.Reads == 0 || s.CacheHits != s.Reads || s.HitRate() != 1 || s.Errors != 0 {
				t.Errorf("%+v: want every read a hit, hit rate 1", s)
			}
		}},
		{"every read from the store", func(string) string { return "store" }, func(t *testing.T, s Stats) {
			if s.Reads == 0 || s.CacheHits != 0 || s.HitRate() != 0 || s.Errors != 0 {
				t.Errorf("%+v: want no hit, hit rate 0", s)
			}
		}},
		{"half the keys from the cache", func(k string) string {
			return map[bool]string{true: "cache", false: "store"}[strings.HasSuffix(k, "0")]
		}, func(t *testing.T, s Stats) {
			if s.Reads == 0 || s.Errors != 0 {
				t.Errorf("%+v: want reads and no error", s)
			}
		}},
		{"every read fails", func(string) string { return "" }, func(t *testing.T, s Stats) {
			if s.Errors == 0 || s.Reads != 0 || s.CacheHits != 0 || s.HitRate() != -1 {
				t.Errorf("%+v: want errors only, no read, no hit, hit rate -1", s)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fake, url := serveFake(t, tc.source)
			total, err := Run(context.Background(), Config{Frontend: url, Keys: 2, ImageKB: 1, ReadRatio: 1, Concurrency: 2,
				Duration: 300 * time.Millisecond}, nil)
			if err != nil {
				t.Fatal(err)
			}
			if total.Writes != 0 || fake.uploads.Load() != 0 {
				t.Errorf("%d writes, %d uploads at the frontend; want none with read ratio 1 and no seeding", total.Writes, fake.uploads.Load())
			}
			// Every answer is counted, but those cut off by the end of the
			// run (at most one per worker).
			if got, served := total.Reads+total.Errors, fake.reads.Load(); got > served || got < served-2 {
				t.Errorf("%d reads and errors counted, %d served; want all but those cut off at the end (at most 2)", got, served)
			}
			if got, served := total.CacheHits, fake.hits.Load(); got > served || got < served-2 {
				t.Errorf("%d hits counted, %d reads answered from the cache; want all but those cut off at the end (at most 2)", got, served)
			}
			tc.check(t, total)
		})
	}
}

// TestRecorderCountsAKnownSequence feeds the recorder a known sequence and
// checks every count, per interval and in total.
func TestRecorderCountsAKnownSequence(t *testing.T) {
	var r recorder
	ms := time.Millisecond
	r.add(true, true, 1*ms, nil)   // read, hit
	r.add(true, false, 2*ms, nil)  // read, miss
	r.add(true, true, 3*ms, nil)   // read, hit
	r.add(false, false, 4*ms, nil) // write
	r.add(true, true, 0, errors.New("x"))
	first := r.interval(time.Second)
	want := Stats{Elapsed: time.Second, Reads: 3, Writes: 1, CacheHits: 2, Errors: 1, P50: 3 * ms, P99: 4 * ms}
	if first != want {
		t.Errorf("first interval: %+v, want %+v", first, want)
	}
	if h := first.HitRate(); h != 2.0/3 {
		t.Errorf("hit rate %v, want 2/3", h)
	}
	if rate := first.Rate(); rate != 4 {
		t.Errorf("rate %v, want 4 req/s", rate)
	}
	r.add(true, false, 5*ms, nil) // read, miss
	r.add(false, true, 6*ms, nil) // write (a write is never a hit)
	second := r.interval(2 * time.Second)
	want = Stats{Elapsed: 2 * time.Second, Reads: 1, Writes: 1, CacheHits: 0, Errors: 0, P50: 6 * ms, P99: 6 * ms}
	if second != want {
		t.Errorf("second interval: %+v, want %+v", second, want)
	}
	total := r.total(4 * time.Second)
	want = Stats{Elapsed: 4 * time.Second, Reads: 4, Writes: 2, CacheHits: 2, Errors: 1, P50: 4 * ms, P99: 6 * ms}
	if total != want {
		t.Errorf("total: %+v, want %+v", total, want)
	}
	if h := total.HitRate(); h != 0.5 {
		t.Errorf("total hit rate %v, want 0.5", h)
	}
	if s := (Stats{}); s.HitRate() != -1 || s.Rate() != 0 {
		t.Errorf("empty stats: hit rate %v, rate %v; want -1 and 0", s.HitRate(), s.Rate())
	}
}

// TestRunSendsOneRequestPerScheduledTick drives the pacer's ticker by
// hand: the ticker runs at 1/Rate, and every tick sends exactly one
// request, no more and none skipped, whatever the machine's load.
func TestRunSendsOneRequestPerScheduledTick(t *testing.T) {
	fake, url := serveFake(t, func(string) string { return "cache" })
	ticks := make(chan time.Time)
	var interval atomic.Int64
	cfg := Config{Frontend: url, Keys: 5, ImageKB: 1, ReadRatio: 1, Concurrency: 4, Rate: 50, Duration: 5 * time.Minute,
		newTicker: func(d time.Duration) (<-chan time.Time, func()) {
			interval.Store(int64(d))
			return ticks, func() {}
		}}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	type result struct {
		s   Stats
		err error
	}
	done := make(chan result, 1)
	go func() {
		s, err := Run(ctx, cfg, nil)
		done <- result{s, err}
	}()
	const sends = 30
	for i := 1; i <= sends; i++ {
		select {
		case ticks <- time.Now():
		case r := <-done:
			t.Fatalf("Run returned early: %+v %v", r.s, r.err)
		}
		waitfor.True(t, 30*time.Second, fmt.Sprintf("request %d to be served", i), func() bool { return fake.reads.Load() >= int64(i) })
		if n := fake.reads.Load(); n != int64(i) {
			t.Fatalf("after %d ticks the frontend served %d requests, want %d", i, n, i)
		}
	}
	if d := time.Duration(interval.Load()); d != 20*time.Millisecond {
		t.Errorf("pacer ticks every %v, want 20ms (50 req/s)", d)
	}
	// Every request sent has been answered; the run ends with no more.
	waitfor.True(t, 30*time.Second, "the run to count every answered request", func() bool {
		return fake.reads.Load() == sends
	})
	cancel()
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	if n := fake.reads.Load(); n != sends {
		t.Errorf("%d requests for %d ticks, want %d", n, sends, sends)
	}
	if r.s.Reads > sends || r.s.Errors != 0 || r.s.CacheHits != r.s.Reads {
		t.Errorf("totals %+v for %d ticks: want at most %d reads, every one a hit, no error", r.s, sends, sends)
	}
}

// TestRunPacesToTheTargetRate: the real ticker at 50 req/s for 2 s against
// a frontend that answers at once: never more than 100 requests (the rate is
// a ceiling), and the run does send (the exact count per tick is
// TestRunSendsOneRequestPerScheduledTick's; wall-clock throughput on a busy
// machine is not).
func TestRunPacesToTheTargetRate(t *testing.T) {
	fake, url := serveFake(t, func(string) string { return "store" })
	const rate, secs = 50, 2
	total, err := Run(context.Background(), Config{
		Frontend: url, Keys: 5, ImageKB: 1, ReadRatio: 1, Concurrency: 4, Rate: rate,
		Duration: secs * time.Second,
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if n := fake.reads.Load(); n > rate*secs+2 || n < rate*secs/10 {
		t.Errorf("%d requests in %d s at %d req/s, want at most %d (and not almost none)", n, secs, rate, rate*secs)
	}
	if total.Errors != 0 || total.Reads > fake.reads.Load() {
		t.Errorf("totals %+v, %d served: want no error", total, fake.reads.Load())
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
