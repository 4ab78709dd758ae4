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
	"runtime"
	"slices"
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
	if l := total.Service; l.P50 <= 0 || l.P90 < l.P50 || l.P99 < l.P90 || l.P999 < l.P99 || l.Max < l.P999 || l.Count != total.Requests() {
		t.Errorf("service time %+v for %d requests: want ordered percentiles over every request", l, total.Requests())
	}
	if total.Rate != 0 || total.Response != (Latency{}) {
		t.Errorf("closed loop: rate %v, response time %+v; want neither", total.Rate, total.Response)
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

// sameStats reports whether got is want, but for percentiles, which may be
// up to 0.1 % above (the top of the histogram's bucket).
func sameStats(got, want Stats) bool {
	near := func(g, w Latency) bool {
		for _, p := range [][2]time.Duration{{g.P50, w.P50}, {g.P90, w.P90}, {g.P99, w.P99}, {g.P999, w.P999}, {g.Max, w.Max}} {
			if p[0] < p[1] || p[0] > p[1]+p[1]/1000 {
				return false
			}
		}
		return g.Count == w.Count
	}
	if !near(got.Service, want.Service) || !near(got.Response, want.Response) {
		return false
	}
	got.Service, got.Response, want.Service, want.Response = Latency{}, Latency{}, Latency{}, Latency{}
	return got == want
}

// TestRecorderCountsAKnownSequence feeds the recorder a known sequence and
// checks every count and percentile, per interval and in total.
func TestRecorderCountsAKnownSequence(t *testing.T) {
	r := newRecorder(0)
	ms := time.Millisecond
	r.add(true, true, 1*ms, 0, nil)   // read, hit
	r.add(true, false, 2*ms, 0, nil)  // read, miss
	r.add(true, true, 3*ms, 0, nil)   // read, hit
	r.add(false, false, 4*ms, 0, nil) // write
	r.add(true, true, 0, 0, errors.New("x"))
	first := r.since(time.Second)
	// Four samples: the p50 is the second, p90 and above the fourth.
	want := Stats{Elapsed: time.Second, Reads: 3, Writes: 1, CacheHits: 2, Errors: 1,
		Service: Latency{Count: 4, P50: 2 * ms, P90: 4 * ms, P99: 4 * ms, P999: 4 * ms, Max: 4 * ms}}
	if !sameStats(first, want) {
		t.Errorf("first interval: %#v, want %#v", first, want)
	}
	if h := first.HitRate(); h != 2.0/3 {
		t.Errorf("hit rate %v, want 2/3", h)
	}
	if rate := first.Throughput(); rate != 4 {
		t.Errorf("throughput %v, want 4 req/s", rate)
	}
	r.add(true, false, 5*ms, 0, nil) // read, miss
	r.add(false, true, 6*ms, 0, nil) // write (a write is never a hit)
	second := r.since(2 * time.Second)
	want = Stats{Elapsed: 2 * time.Second, Reads: 1, Writes: 1, CacheHits: 0, Errors: 0,
		Service: Latency{Count: 2, P50: 5 * ms, P90: 6 * ms, P99: 6 * ms, P999: 6 * ms, Max: 6 * ms}}
	if !sameStats(second, want) {
		t.Errorf("second interval: %#v, want %#v", second, want)
	}
	// Six samples: the p50 is the third, the p90 the fifth.
	total := r.totals(4 * time.Second)
	want = Stats{Elapsed: 4 * time.Second, Reads: 4, Writes: 2, CacheHits: 2, Errors: 1,
		Service: Latency{Count: 6, P50: 3 * ms, P90: 5 * ms, P99: 6 * ms, P999: 6 * ms, Max: 6 * ms}}
	if !sameStats(total, want) {
		t.Errorf("total: %#v, want %#v", total, want)
	}
	if h := total.HitRate(); h != 0.5 {
		t.Errorf("total hit rate %v, want 0.5", h)
	}
	if s := (Stats{}); s.HitRate() != -1 || s.Throughput() != 0 {
		t.Errorf("empty stats: hit rate %v, throughput %v; want -1 and 0", s.HitRate(), s.Throughput())
	}
}

// TestRecorderPercentilesOfAKnownDistribution: 100,000 samples, 99 % of
// them spread evenly up to 100 ms and 1 % at 2 s; every percentile within
// 1 %, in the service and the response distribution alike.
func TestRecorderPercentilesOfAKnownDistribution(t *testing.T) {
	r := newRecorder(10)
	const n = 100_000
	step := 100 * time.Millisecond / (n * 99 / 100)
	fast := 0
	for i := range n {
		d := 2 * time.Second
		if i%100 != 0 {
			fast++
			d = time.Duration(fast) * step
		}
		r.add(true, false, d, d+time.Second, nil)
	}
	s := r.totals(time.Second)
	for _, tc := range []struct {
		name      string
		got, want time.Duration
	}{
		// The p50 is the 50,000th sample: 500 slow ones above it, so it
		// is the 50,000th of 99,000 fast ones, 50.5 ms; the p90 the
		// 90,000th, 90.9 ms; the p99 the last fast one, 100 ms.
		{"service p50", s.Service.P50, 50500 * time.Microsecond},
		{"service p90", s.Service.P90, 90900 * time.Microsecond},
		{"service p99", s.Service.P99, 100 * time.Millisecond},
		{"service p99.9", s.Service.P999, 2 * time.Second},
		{"service max", s.Service.Max, 2 * time.Second},
		{"response p50", s.Response.P50, 1050500 * time.Microsecond},
		{"response p90", s.Response.P90, 1090900 * time.Microsecond},
		{"response p99", s.Response.P99, 1100 * time.Millisecond},
		{"response max", s.Response.Max, 3 * time.Second},
	} {
		if diff := tc.got - tc.want; diff < -tc.want/100 || diff > tc.want/100 {
			t.Errorf("%s = %v, want %v within 1 %%", tc.name, tc.got, tc.want)
		}
	}
	if s.Service.Count != n || s.Response.Count != n {
		t.Errorf("counts %d and %d, want %d", s.Service.Count, s.Response.Count, n)
	}
}

// TestRecorderMemoryIsBounded: a million samples cost the recorder no
// memory beyond its histograms (keeping every sample would cost 16 MB).
func TestRecorderMemoryIsBounded(t *testing.T) {
	r := newRecorder(100)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for i := range 1_000_000 {
		d := time.Duration(i%5000) * time.Microsecond
		r.add(i%2 == 0, false, d, 2*d, nil)
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	if grew := int64(after.HeapAlloc) - int64(before.HeapAlloc); grew > 1<<20 {
		t.Errorf("heap grew by %d bytes over a million samples, want under 1 MB", grew)
	}
	if s := r.totals(time.Second); s.Service.Count != 1_000_000 {
		t.Errorf("%d samples counted, want 1,000,000", s.Service.Count)
	}
}

// TestPacerKeepsTheScheduleThroughAStall drives the pacer with a fake
// clock: at 10 req/s the n-th request is due at n × 100 ms; asked early, a
// worker waits for the due time; after a 1 s stall the ten requests due
// during it are handed out at once, each with its own due time in the past.
func TestPacerKeepsTheScheduleThroughAStall(t *testing.T) {
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	p := newPacer(10, start, time.Minute)
	now := start
	p.now = func() time.Time { return now }
	at := func(ms int) time.Time { return start.Add(time.Duration(ms) * time.Millisecond) }
	near := func(a, b time.Time) bool { return a.Sub(b).Abs() < time.Microsecond }
	check := func(what string, wantDue, wantSend time.Time) {
		t.Helper()
		due, send := p.next()
		if !near(due, wantDue) || !near(send, wantSend) {
			t.Errorf("%s: due %v, send %v; want due %v, send %v", what, due.Sub(start), send.Sub(start), wantDue.Sub(start), wantSend.Sub(start))
		}
	}
	// On time: asked at the start, the first three are due (and sent) at
	// 100, 200 and 300 ms.
	for n := 1; n <= 3; n++ {
		check(fmt.Sprintf("request %d asked at 0", n), at(100*n), at(100*n))
	}
	// A worker asking at 250 ms for the fourth waits until 400 ms.
	now = at(250)
	check("request 4 asked at 250 ms", at(400), at(400))
	// The workers stall until 1.45 s: requests 5 to 14 (500 to 1,400 ms)
	// are overdue, sent now, each measured from its own due time.
	now = at(1450)
	if n := p.overdue(now); n != 10 {
		t.Errorf("%d requests overdue after the stall, want 10", n)
	}
	for n := 5; n <= 14; n++ {
		check(fmt.Sprintf("overdue request %d", n), at(100*n), at(1450))
	}
	if n := p.overdue(now); n != 0 {
		t.Errorf("%d requests overdue once taken, want 0", n)
	}
	// Back on schedule.
	check("request 15", at(1500), at(1500))
}

// answer answers a load request as a frontend would: a small image, from
// source.
func answer(w http.ResponseWriter, source string) {
	w.Header().Set("X-Memcache-Source", source)
	io.WriteString(w, "\x89PNG\r\n\x1a\n")
}

// slowEvery serves the load's reads and writes and delays every nth
// request it serves by delay.
type slowEvery struct {
	n            int64
	delay        time.Duration
	served, slow atomic.Int64
}

func (s *slowEvery) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	io.Copy(io.Discard, r.Body)
	if s.served.Add(1)%s.n == 0 {
		s.slow.Add(1)
		select {
		case <-time.After(s.delay):
		case <-r.Context().Done():
			return
		}
	}
	answer(w, "cache")
}

// TestRunMeasuresKnownLatencies: a frontend that delays one request in 20
// by 250 ms and answers the rest at once. In a closed loop, 5 % of the
// samples are 250 ms: p50 and p90 are fast, p99, p99.9 and max are the
// delay (not below it, and not far above on a busy machine).
func TestRunMeasuresKnownLatencies(t *testing.T) {
	const delay = 250 * time.Millisecond
	srv := &slowEvery{n: 20, delay: delay}
	ts := httptest.NewServer(srv)
	t.Cleanup(ts.Close)
	total, err := Run(context.Background(), Config{Frontend: ts.URL, Keys: 5, ImageKB: 1, ReadRatio: 0.9, Concurrency: 2,
		Duration: 3 * time.Second}, nil)
	if err != nil {
		t.Fatal(err)
	}
	l := total.Service
	t.Logf("%d requests, %d slow; service time %v", total.Requests(), srv.slow.Load(), l)
	if total.Errors != 0 || srv.slow.Load() < 5 || l.Count < 100 {
		t.Fatalf("totals %+v, %d slow of %d served: want no errors, at least 5 slow and 100 answered", total, srv.slow.Load(), srv.served.Load())
	}
	if l.P50 >= delay/2 || l.P90 >= delay/2 {
		t.Errorf("p50 %v, p90 %v: want both under %v (95 %% of the answers are immediate)", l.P50, l.P90, delay/2)
	}
	for _, p := range []struct {
		name string
		d    time.Duration
	}{{"p99", l.P99}, {"p99.9", l.P999}, {"max", l.Max}} {
		if p.d < delay || p.d > delay+5*time.Second {
			t.Errorf("%s %v: want the delay, %v (5 %% of the answers), not below it nor seconds above", p.name, p.d, delay)
		}
	}
}

// stallOnce answers at once, but from its nth request on, every request
// that arrives in the next stall seconds is held until they are over: one
// stall of the whole frontend.
type stallOnce struct {
	n      int64
	stall  time.Duration
	served atomic.Int64

	mu    sync.Mutex
	until time.Time // end of the stall, once it began; guarded by mu
}

func (s *stallOnce) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	io.Copy(io.Discard, r.Body)
	s.mu.Lock()
	if s.served.Add(1) == s.n {
		s.until = time.Now().Add(s.stall)
	}
	until := s.until
	s.mu.Unlock()
	if wait := time.Until(until); wait > 0 {
		select {
		case <-time.After(wait):
		case <-r.Context().Done():
			return
		}
	}
	answer(w, "cache")
}

// TestRunCountsAStallForEveryRequestDueDuringIt: at 100 req/s with two
// workers, the frontend stalls for 1 s once. The two requests in flight
// wait 1 s; the hundred due during the stall go out after it, late by up to
// 1 s. The response time (from the due time) shows it: p90 and p99 are a
// good part of the stall, as it is for over 10 % of the requests. The
// service time does not (only two requests waited while in flight), and
// the run still sends every request the schedule held.
func TestRunCountsAStallForEveryRequestDueDuringIt(t *testing.T) {
	const (
		rate  = 100
		secs  = 5
		stall = time.Second
	)
	srv := &stallOnce{n: 100, stall: stall}
	ts := httptest.NewServer(srv)
	t.Cleanup(ts.Close)
	total, err := Run(context.Background(), Config{Frontend: ts.URL, Keys: 5, ImageKB: 1, ReadRatio: 0.9, Concurrency: 2,
		Rate: rate, Duration: secs * time.Second}, nil)
	if err != nil {
		t.Fatal(err)
	}
	srv.mu.Lock()
	stalled := !srv.until.IsZero() && time.Now().After(srv.until)
	srv.mu.Unlock()
	if !stalled || total.Errors != 0 {
		t.Fatalf("totals %+v: want a whole stall inside the run and no errors", total)
	}
	// A request due during the stall waits for the rest of it: the ~100 due
	// in it are late by 0 to 1 s, ~50 by over half of it: about 10 % of
	// the run's ~500.
	res, svc := total.Response, total.Service
	t.Logf("%d requests; response time %v; service time %v", total.Requests(), res, svc)
	if res.P90 < stall/5 || res.P99 < stall*3/4 || res.Max < stall*9/10 {
		t.Errorf("response time %v: want p90 ≥ %v, p99 ≥ %v, max ≥ %v (the stall, for the requests due during it)", res, stall/5, stall*3/4, stall*9/10)
	}
	if svc.P99 >= stall/2 || svc.Max < stall*9/10 {
		t.Errorf("service time %v: want p99 < %v (only the 2 requests in flight waited) and max ≥ %v", svc, stall/2, stall*9/10)
	}
	// The overdue requests were sent, not dropped: the schedule's 500
	// requests, but those cut off at the end.
	if n := total.Requests(); n < rate*secs*8/10 || n > rate*secs {
		t.Errorf("%d requests answered in %d s at %d req/s with a %v stall: want the schedule's %d (at least %d)", n, secs, rate, stall, rate*secs, rate*secs*8/10)
	}
	if res.Count != total.Requests() || svc.Count != total.Requests() {
		t.Errorf("%d response and %d service samples for %d requests, want one each", res.Count, svc.Count, total.Requests())
	}
}

// TestRunHoldsTheRate: at 50 req/s for 3 s against a frontend that answers
// at once, no request reaches the frontend before its slot (the k-th, from
// 1, no sooner than k/50 s after Run was called: the schedule is a ceiling
// at every moment, with no burst at the start), and the run keeps up (at
// least 80 % of the 150; on time the count is 150, less any cut off at the
// end).
func TestRunHoldsTheRate(t *testing.T) {
	const rate, secs = 50, 3
	var (
		mu       sync.Mutex
		arrivals []time.Time
	)
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		now := time.Now()
		io.Copy(io.Discard, r.Body)
		mu.Lock()
		arrivals = append(arrivals, now)
		mu.Unlock()
		answer(w, "store")
	}))
	t.Cleanup(ts.Close)
	called := time.Now()
	total, err := Run(context.Background(), Config{
		Frontend: ts.URL, Keys: 5, ImageKB: 1, ReadRatio: 1, Concurrency: 4, Rate: rate,
		Duration: secs * time.Second,
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	slices.SortFunc(arrivals, func(a, b time.Time) int { return a.Compare(b) })
	for i, a := range arrivals {
		slot := called.Add(time.Duration(i+1) * time.Second / rate)
		if a.Before(slot) {
			t.Fatalf("request %d arrived %v after Run was called, before its slot at %v", i+1, a.Sub(called), slot.Sub(called))
		}
	}
	if n := len(arrivals); n > rate*secs || n < rate*secs*8/10 {
		t.Errorf("%d requests in %d s at %d req/s, want %d (at least %d)", n, secs, rate, rate*secs, rate*secs*8/10)
	}
	if total.Errors != 0 || total.Requests() > int64(len(arrivals)) || total.Rate != rate || total.Response.Count != total.Requests() {
		t.Errorf("totals %+v, %d served: want no error and a response time for each request", total, len(arrivals))
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
