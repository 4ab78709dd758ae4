// Package load generates read and write traffic against a memcache
// frontend's API and reports what it saw, so a user can move the pool's miss
// rate and watch the auto-scaler act.
package load

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"math"
	mrand "math/rand"
	"mime/multipart"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
	"golang.org/x/time/rate"
)

// Config describes a load run.
type Config struct {
	Frontend    string        // base URL of the frontend
	Keys        int           // distinct keys; if zero, 100
	Prefix      string        // key prefix; if blank, "load-"
	ImageKB     int           // image size in KB; if zero, 50
	Skew        float64       // Zipf s parameter (> 1 skews reads to few keys); <= 1 means uniform
	ReadRatio   float64       // fraction of requests that are reads, 0..1
	Rate        float64       // requests per second on a fixed schedule (see Run); 0 = a closed loop, as fast as the workers go
	Concurrency int           // workers; if zero, 8
	Duration    time.Duration // how long to run after seeding; if zero, 1 min
	Seed        bool          // upload every key before the run
	Client      *http.Client  // if nil, a client with a 30 s timeout that keeps a connection per worker
}

// Validate reports what is wrong with c.
func (c Config) Validate() error {
	switch {
	case c.Frontend == "":
		return errors.New("the frontend URL is required")
	case c.Keys < 0 || c.ImageKB < 0 || c.Concurrency < 0 || c.Duration < 0 || c.Rate < 0:
		return errors.New("keys, image size, concurrency, duration and rate must not be negative")
	case c.ReadRatio < 0 || c.ReadRatio > 1:
		return fmt.Errorf("read ratio %v is outside 0..1", c.ReadRatio)
	case c.Rate > 1e6:
		return fmt.Errorf("rate %v is over 1,000,000 requests per second", c.Rate)
	case c.ImageKB > 10*1024:
		return fmt.Errorf("image size %d KB is over the frontend's default 10 MB limit", c.ImageKB)
	}
	if _, err := url.Parse(c.Frontend); err != nil {
		return fmt.Errorf("frontend URL: %w", err)
	}
	return nil
}

func (c *Config) defaults() {
	if c.Keys == 0 {
		c.Keys = 100
	}
	if c.Prefix == "" {
		c.Prefix = "load-"
	}
	if c.ImageKB == 0 {
		c.ImageKB = 50
	}
	if c.Concurrency == 0 {
		c.Concurrency = 8
	}
	if c.Duration == 0 {
		c.Duration = time.Minute
	}
	if c.Client == nil {
		// Keep one idle connection per worker: with the default two per
		// host, every other request opens a new connection, and at a few
		// hundred workers the closed ones (TIME_WAIT) can use up the
		// ephemeral ports.
		t := http.DefaultTransport.(*http.Transport).Clone()
		t.MaxIdleConns, t.MaxIdleConnsPerHost = c.Concurrency, c.Concurrency
		c.Client = &http.Client{Timeout: 30 * time.Second, Transport: t}
	}
}

// Latency is a latency distribution's percentiles. They come from an
// HdrHistogram of microseconds with three significant digits: each is
// within 0.1 % of the true value (1 µs below 2 ms).
type Latency struct {
	Count                    int64 // samples
	P50, P90, P99, P999, Max time.Duration
}

// String formats l for the terminal.
func (l Latency) String() string {
	if l.Count == 0 {
		return fmt.Sprintf("p50 %-8s p90 %-8s p99 %-8s p99.9 %-8s max %-8s", "-", "-", "-", "-", "-")
	}
	return fmt.Sprintf("p50 %-8s p90 %-8s p99 %-8s p99.9 %-8s max %-8s",
		short(l.P50), short(l.P90), short(l.P99), short(l.P999), short(l.Max))
}

// short rounds d to about three significant digits.
func short(d time.Duration) string {
	switch {
	case d >= time.Second:
		d = d.Round(time.Millisecond)
	case d >= time.Millisecond:
		d = d.Round(10 * time.Microsecond)
	default:
		d = d.Round(time.Microsecond)
	}
	return d.String()
}

// Stats are the counts of a run or of one progress interval. Latencies are
// of the requests that succeeded; a request still in flight when the run
// ends is not counted.
type Stats struct {
	Elapsed   time.Duration
	Reads     int64
	Writes    int64
	CacheHits int64 // reads the frontend answered from a cache node
	Errors    int64

	// Rate is the run's target rate (Config.Rate); 0 for a closed loop.
	Rate float64
	// Service is the service time: from sending a request to its answer.
	Service Latency
	// Response, under a target rate, is the response time: from the time
	// the schedule said the request was due to its answer. When the
	// frontend stalls, the workers wait with it and the requests due in
	// the meantime go out late; Response counts that wait, Service does
	// not (it would hide the stall: coordinated omission). Zero for a
	// closed loop, whose requests have no schedule.
	Response Latency
	// Overdue, under a target rate, is how many requests were due by the
	// end of the interval (or of the run) but not yet sent, because every
	// worker was waiting for an answer; their latency is in neither
	// distribution until they are answered, and never if the run ends
	// first.
	Overdue int64
}

// Requests is the number of requests answered successfully.
func (s Stats) Requests() int64 { return s.Reads + s.Writes }

// Throughput is successful requests per second over Elapsed.
func (s Stats) Throughput() float64 {
	if s.Elapsed <= 0 {
		return 0
	}
	return float64(s.Requests()) / s.Elapsed.Seconds()
}

// HitRate is the fraction of successful reads served from the cache, as the
// frontend reported them (X-Memcache-Source); -1 with no reads.
func (s Stats) HitRate() float64 {
	if s.Reads == 0 {
		return -1
	}
	return float64(s.CacheHits) / float64(s.Reads)
}

// String formats s on one line for the terminal: under a target rate the
// response time, with the service time's p99 and max beside it.
func (s Stats) String() string {
	hit := "   -"
	if h := s.HitRate(); h >= 0 {
		hit = fmt.Sprintf("%4.0f%%", 100*h)
	}
	line := fmt.Sprintf("%7.0f req/s  reads %-7d writes %-6d hit %s  ", s.Throughput(), s.Reads, s.Writes, hit)
	if s.Rate > 0 {
		svc := "-"
		if s.Service.Count > 0 {
			svc = fmt.Sprintf("p99 %s max %s", short(s.Service.P99), short(s.Service.Max))
		}
		line += fmt.Sprintf("response %v (service %s)  overdue %d", s.Response, svc, s.Overdue)
	} else {
		line += fmt.Sprintf("latency %v", s.Service)
	}
	return line + fmt.Sprintf("  errors %d", s.Errors)
}

// Summary formats a run's totals over several lines: the counts, then each
// latency distribution named for what it measures.
func (s Stats) Summary() string {
	var b strings.Builder
	hit := "-"
	if h := s.HitRate(); h >= 0 {
		hit = fmt.Sprintf("%.1f%%", 100*h)
	}
	fmt.Fprintf(&b, "%d requests in %v: %.0f req/s", s.Requests(), s.Elapsed.Round(time.Millisecond), s.Throughput())
	if s.Rate > 0 {
		fmt.Fprintf(&b, " (target %g req/s)", s.Rate)
	}
	fmt.Fprintf(&b, "; reads %d, writes %d, hit rate %s, errors %d\n", s.Reads, s.Writes, hit, s.Errors)
	if s.Rate > 0 {
		fmt.Fprintf(&b, "response time, from each request's scheduled send time: %v\n", s.Response)
		fmt.Fprintf(&b, "service time, from its actual send (hides stalls):       %v\n", s.Service)
		if s.Overdue > 0 {
			fmt.Fprintf(&b, "%d requests were due before the end but never sent, every worker waiting for an answer (the frontend stalled, or --concurrency is too low for --rate); they are in neither time\n", s.Overdue)
		}
	} else {
		fmt.Fprintf(&b, "service time (closed loop: a worker sends when its last answer is in): %v\n", s.Service)
	}
	return b.String()
}

// Latencies are recorded in microseconds, from 1 µs to a day (longer ones
// are recorded as a day), to three significant digits: about 230 KB a
// histogram, whatever the run's length.
const (
	histLowest  = 1
	histHighest = int64(24 * time.Hour / time.Microsecond)
	histDigits  = 3
)

// window is the counts and distributions of a stretch of the run.
type window struct {
	reads, writes, hits, errors int64
	service, response           *hdrhistogram.Histogram // response is nil in a closed loop
}

func newWindow(paced bool) window {
	w := window{service: hdrhistogram.New(histLowest, histHighest, histDigits)}
	if paced {
		w.response = hdrhistogram.New(histLowest, histHighest, histDigits)
	}
	return w
}

func record(h *hdrhistogram.Histogram, d time.Duration) {
	h.RecordValue(min(max(d.Microseconds(), 0), histHighest)) // in range: cannot fail
}

func percentiles(h *hdrhistogram.Histogram) Latency {
	if h == nil || h.TotalCount() == 0 {
		return Latency{}
	}
	at := func(q float64) time.Duration { return time.Duration(h.ValueAtQuantile(q)) * time.Microsecond }
	return Latency{Count: h.TotalCount(), P50: at(50), P90: at(90), P99: at(99), P999: at(99.9),
		Max: time.Duration(h.Max()) * time.Microsecond}
}

func (w *window) add(read, hit bool, service, response time.Duration, err error) {
	if err != nil {
		w.errors++
		return
	}
	if read {
		w.reads++
		if hit {
			w.hits++
		}
	} else {
		w.writes++
	}
	record(w.service, service)
	if w.response != nil {
		record(w.response, response)
	}
}

func (w *window) stats(elapsed time.Duration, rate float64) Stats {
	return Stats{Elapsed: elapsed, Reads: w.reads, Writes: w.writes, CacheHits: w.hits, Errors: w.errors,
		Rate: rate, Service: percentiles(w.service), Response: percentiles(w.response)}
}

func (w *window) reset() {
	w.reads, w.writes, w.hits, w.errors = 0, 0, 0, 0
	w.service.Reset()
	if w.response != nil {
		w.response.Reset()
	}
}

// recorder accumulates results in fixed-size histograms; its mutex guards
// both windows.
type recorder struct {
	rate     float64
	mu       sync.Mutex
	interval window // since the last progress report
	total    window // the whole run
}

// newRecorder returns a recorder for a run at rate requests per second (0:
// a closed loop, with no response times).
func newRecorder(rate float64) *recorder {
	return &recorder{rate: rate, interval: newWindow(rate > 0), total: newWindow(rate > 0)}
}

// add records one request: its service time (send to answer) and response
// time (due to answer; ignored in a closed loop). A failed request counts
// as an error only.
func (r *recorder) add(read, hit bool, service, response time.Duration, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.interval.add(read, hit, service, response, err)
	r.total.add(read, hit, service, response, err)
}

// since returns the stats since the previous call and starts a new interval.
func (r *recorder) since(elapsed time.Duration) Stats {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.interval.stats(elapsed, r.rate)
	r.interval.reset()
	return s
}

func (r *recorder) totals(elapsed time.Duration) Stats {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.total.stats(elapsed, r.rate)
}

// pacer is a run's send schedule at a fixed rate: the n-th request (from 1)
// is due n/rate after the start, whatever happened before. It is a
// rate.Limiter whose bucket is emptied at the start and may hold the whole
// run's tokens, so the token count at time t is the number of requests due
// by t and not yet taken. A limiter with a small burst would instead drop
// the tokens of a stall (it caps the bucket), and the requests due during
// the stall would never be sent nor measured: coordinated omission.
type pacer struct {
	rate float64
	now  func() time.Time // time.Now; tests set it

	mu  sync.Mutex // serializes next, so that a request's token and due time agree
	lim *rate.Limiter
}

// newPacer starts a schedule of r requests a second at start for a run of
// length d.
func newPacer(r float64, start time.Time, d time.Duration) *pacer {
	burst := int(math.Ceil(r*d.Seconds())) + 1
	p := &pacer{rate: r, now: time.Now, lim: rate.NewLimiter(rate.Limit(r), burst)}
	p.lim.ReserveN(start, burst) // a limiter starts full; empty it
	return p
}

// next takes the next request off the schedule: it returns when it was or
// will be due and when it may be sent (no earlier than now). When the run
// is behind, the request is overdue: due is in the past and send is now.
func (p *pacer) next() (due, send time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.now()
	// With t tokens in the bucket the request taking the next one was due
	// when the bucket last held 1: (t-1)/rate ago, or in (1-t)/rate.
	t := p.lim.TokensAt(now)
	res := p.lim.ReserveN(now, 1)
	due = now.Add(time.Duration((1 - t) / p.rate * float64(time.Second)))
	return due, now.Add(res.DelayFrom(now))
}

// overdue returns the number of requests due by t that nobody has taken.
func (p *pacer) overdue(t time.Time) int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return max(int64(p.lim.TokensAt(t)), 0)
}

// image returns n bytes that the frontend sniffs as a PNG.
func image(n int) []byte {
	b := make([]byte, max(n, 16))
	rand.Read(b)
	copy(b, "\x89PNG\r\n\x1a\n")
	return b
}

func (c *Config) key(i int) string { return c.Prefix + strconv.Itoa(i) }

func (c *Config) upload(ctx context.Context, key string) error {
	var body bytes.Buffer
	mw := multipart.NewWriter(&body)
	mw.WriteField("key", key)
	fw, _ := mw.CreateFormFile("file", "load.png")
	fw.Write(image(c.ImageKB << 10))
	mw.Close()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.Frontend+"/api/upload", &body)
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", mw.FormDataContentType())
	resp, err := c.Client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 256))
		return fmt.Errorf("upload %s: %s: %s", key, resp.Status, b)
	}
	io.Copy(io.Discard, resp.Body) // read to the end, so the connection is reused
	return nil
}

// read fetches key and reports whether it came from the cache.
func (c *Config) read(ctx context.Context, key string) (bool, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.Frontend+"/images/"+url.PathEscape(key), nil)
	if err != nil {
		return false, err
	}
	resp, err := c.Client.Do(req)
	if err != nil {
		return false, err
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != http.StatusOK {
		return false, fmt.Errorf("read %s: %s", key, resp.Status)
	}
	return resp.Header.Get("X-Memcache-Source") == "cache", nil
}

// Run seeds the keys (if asked), then runs the load for Duration, calling
// progress with the stats of every second; it returns the totals.
//
// With a Rate, requests follow a fixed schedule over all workers (an open
// loop): the n-th is due n/Rate after the start whether or not the earlier
// ones were answered, and its response time is measured from then. When the
// workers fall behind (the frontend stalls, or Concurrency is too low for
// the rate), they send the overdue requests as soon as they are free, and
// the wait shows in the response time. Without a Rate, each worker sends
// its next request when the last is answered (a closed loop), and only
// service time is measured.
func Run(ctx context.Context, cfg Config, progress func(Stats)) (Stats, error) {
	if err := cfg.Validate(); err != nil {
		return Stats{}, err
	}
	cfg.defaults()
	if cfg.Seed {
		var failed atomic.Int64
		var wg sync.WaitGroup
		next := atomic.Int64{}
		for range cfg.Concurrency {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := int(next.Add(1) - 1); i < cfg.Keys && ctx.Err() == nil; i = int(next.Add(1) - 1) {
					if err := cfg.upload(ctx, cfg.key(i)); err != nil {
						failed.Add(1)
					}
				}
			}()
		}
		wg.Wait()
		if n := failed.Load(); n > 0 {
			return Stats{}, fmt.Errorf("seeding: %d of %d uploads failed", n, cfg.Keys)
		}
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.Duration)
	defer cancel()
	var (
		rec   = newRecorder(cfg.Rate)
		wg    sync.WaitGroup
		pace  *pacer
		start = time.Now()
	)
	if cfg.Rate > 0 {
		pace = newPacer(cfg.Rate, start, cfg.Duration)
	}
	for w := range cfg.Concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := mrand.New(mrand.NewSource(int64(w) + start.UnixNano()))
			var zipf *mrand.Zipf
			if cfg.Skew > 1 {
				zipf = mrand.NewZipf(r, cfg.Skew, 1, uint64(cfg.Keys-1))
			}
			timer := time.NewTimer(time.Hour)
			timer.Stop()
			for ctx.Err() == nil {
				var due time.Time
				if pace != nil {
					var send time.Time
					due, send = pace.next()
					if wait := time.Until(send); wait > 0 {
						timer.Reset(wait)
						select {
						case <-ctx.Done():
							timer.Stop()
							return
						case <-timer.C:
						}
					}
				}
				i := r.Intn(cfg.Keys)
				if zipf != nil {
					i = int(zipf.Uint64())
				}
				t0 := time.Now()
				if due.IsZero() {
					due = t0
				}
				read := r.Float64() < cfg.ReadRatio
				var hit bool
				var err error
				if read {
					hit, err = cfg.read(ctx, cfg.key(i))
				} else {
					err = cfg.upload(ctx, cfg.key(i))
				}
				t1 := time.Now()
				if ctx.Err() == nil { // not cut off by the end of the run
					rec.add(read, hit, t1.Sub(t0), t1.Sub(due), err)
				}
			}
		}()
	}
	tick := time.NewTicker(time.Second)
	last := start
	for done := false; !done; {
		select {
		case <-ctx.Done():
			done = true
		case now := <-tick.C:
			if progress != nil {
				s := rec.since(now.Sub(last))
				if pace != nil {
					s.Overdue = pace.overdue(now)
				}
				progress(s)
			}
			last = now
		}
	}
	tick.Stop()
	end := time.Now()
	if dl, ok := ctx.Deadline(); ok && end.After(dl) {
		end = dl // only answers by the deadline count
	}
	var overdue int64
	if pace != nil {
		overdue = pace.overdue(end)
	}
	wg.Wait()
	total := rec.totals(end.Sub(start))
	total.Overdue = overdue
	return total, nil
}
