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
	mrand "math/rand"
	"mime/multipart"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// Config describes a load run.
type Config struct {
	Frontend    string        // base URL of the frontend
	Keys        int           // distinct keys; if zero, 100
	Prefix      string        // key prefix; if blank, "load-"
	ImageKB     int           // image size in KB; if zero, 50
	Skew        float64       // Zipf s parameter (> 1 skews reads to few keys); <= 1 means uniform
	ReadRatio   float64       // fraction of requests that are reads, 0..1
	Rate        float64       // target requests per second over all workers; 0 = as fast as possible
	Concurrency int           // workers; if zero, 8
	Duration    time.Duration // how long to run after seeding; if zero, 1 min
	Seed        bool          // upload every key before the run
	Client      *http.Client  // if nil, a client with a 30 s timeout that keeps a connection per worker

	// newTicker, if set (by tests), replaces time.NewTicker for the pacer:
	// it returns the channel of ticks and a stop function.
	newTicker func(d time.Duration) (<-chan time.Time, func())
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

// Stats are the counts of a run or of one progress interval.
type Stats struct {
	Elapsed   time.Duration
	Reads     int64
	Writes    int64
	CacheHits int64 // reads the frontend answered from a cache node
	Errors    int64
	P50, P99  time.Duration
}

// Rate is requests per second over Elapsed.
func (s Stats) Rate() float64 {
	if s.Elapsed <= 0 {
		return 0
	}
	return float64(s.Reads+s.Writes) / s.Elapsed.Seconds()
}

// HitRate is the fraction of successful reads served from the cache, as the
// frontend reported them (X-Memcache-Source); -1 with no reads.
func (s Stats) HitRate() float64 {
	if s.Reads == 0 {
		return -1
	}
	return float64(s.CacheHits) / float64(s.Reads)
}

// String formats s for the terminal.
func (s Stats) String() string {
	hit := "   -"
	if h := s.HitRate(); h >= 0 {
		hit = fmt.Sprintf("%4.0f%%", 100*h)
	}
	return fmt.Sprintf("%7.0f req/s  reads %-7d writes %-6d hit %s  p50 %-8v p99 %-8v errors %d",
		s.Rate(), s.Reads, s.Writes, hit, s.P50.Round(10*time.Microsecond), s.P99.Round(10*time.Microsecond), s.Errors)
}

// recorder accumulates results; its mutex guards every field.
type recorder struct {
	mu                                 sync.Mutex
	reads, writes, hits, errors        int64
	lat                                []time.Duration
	totalReads, totalWrites, totalHits int64
	totalErrors                        int64
	allLat                             []time.Duration
}

func (r *recorder) add(read, hit bool, d time.Duration, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err != nil {
		r.errors++
		r.totalErrors++
		return
	}
	if read {
		r.reads++
		r.totalReads++
		if hit {
			r.hits++
			r.totalHits++
		}
	} else {
		r.writes++
		r.totalWrites++
	}
	r.lat = append(r.lat, d)
	r.allLat = append(r.allLat, d)
}

func percentiles(lat []time.Duration) (p50, p99 time.Duration) {
	if len(lat) == 0 {
		return 0, 0
	}
	s := slices.Clone(lat)
	slices.Sort(s)
	return s[len(s)/2], s[len(s)*99/100]
}

// interval returns the stats since the previous call and resets them.
func (r *recorder) interval(elapsed time.Duration) Stats {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := Stats{Elapsed: elapsed, Reads: r.reads, Writes: r.writes, CacheHits: r.hits, Errors: r.errors}
	s.P50, s.P99 = percentiles(r.lat)
	r.reads, r.writes, r.hits, r.errors, r.lat = 0, 0, 0, 0, r.lat[:0]
	return s
}

func (r *recorder) total(elapsed time.Duration) Stats {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := Stats{Elapsed: elapsed, Reads: r.totalReads, Writes: r.totalWrites, CacheHits: r.totalHits, Errors: r.totalErrors}
	s.P50, s.P99 = percentiles(r.allLat)
	return s
}

// image returns n bytes that the frontend sniffs as a PNG.
func image(n int) []byte {
	b := make([]byte, max(n, 16))
	rand.Read(b)
	copy(b, "\x89PNG\r\n\x1a\n")
	return b
}

// ticker returns a ticker's channel and stop function (see newTicker).
func (c *Config) ticker(d time.Duration) (<-chan time.Time, func()) {
	if c.newTicker != nil {
		return c.newTicker(d)
	}
	t := time.NewTicker(d)
	return t.C, t.Stop
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
		rec    recorder
		wg     sync.WaitGroup
		tokens chan struct{}
	)
	if cfg.Rate > 0 {
		tokens = make(chan struct{}, cfg.Concurrency)
		wg.Add(1)
		go func() { // pacer: one token per 1/Rate
			defer wg.Done()
			ticks, stop := cfg.ticker(time.Duration(float64(time.Second) / cfg.Rate))
			defer stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-ticks:
					select {
					case tokens <- struct{}{}:
					default: // workers are behind: drop, the rate is a ceiling
					}
				}
			}
		}()
	}
	start := time.Now()
	for w := range cfg.Concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := mrand.New(mrand.NewSource(int64(w) + start.UnixNano()))
			var zipf *mrand.Zipf
			if cfg.Skew > 1 {
				zipf = mrand.NewZipf(r, cfg.Skew, 1, uint64(cfg.Keys-1))
			}
			for ctx.Err() == nil {
				if tokens != nil {
					select {
					case <-ctx.Done():
						return
					case <-tokens:
					}
				}
				i := r.Intn(cfg.Keys)
				if zipf != nil {
					i = int(zipf.Uint64())
				}
				t0 := time.Now()
				if r.Float64() < cfg.ReadRatio {
					hit, err := cfg.read(ctx, cfg.key(i))
					if ctx.Err() == nil {
						rec.add(true, hit, time.Since(t0), err)
					}
				} else {
					err := cfg.upload(ctx, cfg.key(i))
					if ctx.Err() == nil {
						rec.add(false, false, time.Since(t0), err)
					}
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
				progress(rec.interval(now.Sub(last)))
			}
			last = now
		}
	}
	tick.Stop()
	wg.Wait()
	return rec.total(time.Since(start)), nil
}
