package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"math/rand"
	"net/http"
	"net/url"
	"sync"
	"time"
)

// Image is one uploaded key: what a read must answer.
type Image struct {
	Key  string
	Size int
	SHA  string // hex SHA-256 of the bytes; the frontend's ETag is it, quoted
}

// LoadConfig is an open-loop Zipf read load against a frontend.
type LoadConfig struct {
	Frontend string  // base URL
	Images   []Image // key i is read with probability ∝ (1+i)^-Skew
	Skew     float64 // > 1
	Rate     float64 // reads a second, on a fixed schedule
	Workers  int     // reads in flight at most; later due reads wait (and count as late)
	Seed     int64
	Client   *http.Client
}

// Load is a running load. Its reads are due every 1/Rate s from its start,
// whatever the answers (an open loop); each is recorded by its due time.
type Load struct {
	cfg    LoadConfig
	start  time.Time
	cancel context.CancelFunc
	done   chan struct{} // closed when the dispatcher and every worker have returned

	mu   sync.Mutex
	recs []Record // guarded by mu
}

type job struct {
	due time.Duration
	img int
}

// StartLoad starts the load; Stop ends it.
func StartLoad(ctx context.Context, cfg LoadConfig) *Load {
	ctx, cancel := context.WithCancel(ctx)
	l := &Load{cfg: cfg, start: time.Now(), cancel: cancel, done: make(chan struct{})}
	jobs := make(chan job, int(cfg.Rate*60)+1) // a minute's reads may queue behind a stall
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer close(jobs)
		l.dispatch(ctx, jobs)
	}()
	for range cfg.Workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range jobs {
				if ctx.Err() != nil {
					continue // stopping: drain without reading
				}
				rec := l.read(ctx, j)
				if ctx.Err() != nil {
					continue // cut off by Stop, not an answer
				}
				l.mu.Lock()
				l.recs = append(l.recs, rec)
				l.mu.Unlock()
			}
		}()
	}
	go func() {
		wg.Wait()
		close(l.done)
	}()
	return l
}

// dispatch puts the reads on the schedule until ctx ends.
func (l *Load) dispatch(ctx context.Context, jobs chan<- job) {
	r := rand.New(rand.NewSource(l.cfg.Seed))
	z := rand.NewZipf(r, l.cfg.Skew, 1, uint64(len(l.cfg.Images)-1))
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for n := 0; ; n++ {
		due := time.Duration(float64(n) / l.cfg.Rate * float64(time.Second))
		if wait := time.Until(l.start.Add(due)); wait > 0 {
			timer.Reset(wait)
			select {
			case <-ctx.Done():
				return
			case <-timer.C:
			}
		}
		select {
		case jobs <- job{due: due, img: int(z.Uint64())}:
		case <-ctx.Done():
			return
		}
	}
}

// read makes one read and checks its bytes against the upload.
func (l *Load) read(ctx context.Context, j job) Record {
	img := l.cfg.Images[j.img]
	rec := Record{Due: j.due}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, l.cfg.Frontend+"/images/"+url.PathEscape(img.Key), nil)
	if err != nil {
		return rec
	}
	resp, err := l.cfg.Client.Do(req)
	if err != nil {
		return rec
	}
	defer resp.Body.Close()
	h := sha256.New()
	n, err := io.Copy(h, resp.Body)
	if err != nil {
		return rec // a short body: no answer
	}
	rec.Status = resp.StatusCode
	rec.Response = l.Elapsed() - j.due
	if resp.StatusCode != http.StatusOK {
		return rec
	}
	sum := hex.EncodeToString(h.Sum(nil))
	rec.Bad = int(n) != img.Size || sum != img.SHA || resp.Header.Get("ETag") != `"`+img.SHA+`"`
	rec.Hit = resp.Header.Get("X-Memcache-Source") == "cache"
	return rec
}

// Elapsed returns the time since the load's start: the clock of its
// records' due times.
func (l *Load) Elapsed() time.Duration { return time.Since(l.start) }

// Records returns a copy of the records so far.
func (l *Load) Records() []Record {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]Record(nil), l.recs...)
}

// Stop ends the load and waits for its goroutines: reads in flight are
// cancelled and not recorded.
func (l *Load) Stop() {
	l.cancel()
	<-l.done
}
