// Command dip is the driver of bench/dip/run.sh: it measures the hit-rate
// dip when the cache pool is resized under a steady read load (issue 13).
//
// Against a running cluster (a frontend and the managers' admin API) it
// sets manual mode and the node capacity, uploads -keys images, and for
// each scenario FROM:TO resizes the pool to FROM, runs an open-loop Zipf
// read load until the 1-s hit rate is steady, records -before more, asks
// for TO, records -after more, and reports per scenario the hit rate
// before, the lowest 1-s hit rate and the means over the first 5 and 10 s
// after, the dip in points and the time to recover to within 2 points, as
// markdown. Every answer's bytes are checked against the upload.
//
//	dip -frontend URL -managers URL,URL,URL -token-file FILE [-pool URL -ca ... -cert ... -key ... -secret-file ...]
//	    [-keys 400 -image-kb 40 -skew 1.1 -rate 300 -cache-mb 16 -scenarios 1:4,2:4,4:2 -before 20s -after 30s]
package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/memcache/memcache/region"
)

// Scenario is one resize to measure.
type Scenario struct{ From, To int }

func parseScenarios(s string) ([]Scenario, error) {
	var out []Scenario
	for _, f := range strings.Split(s, ",") {
		a, b, ok := strings.Cut(strings.TrimSpace(f), ":")
		from, err1 := strconv.Atoi(a)
		to, err2 := strconv.Atoi(b)
		if !ok || err1 != nil || err2 != nil || from < 1 || to < 1 || from > 8 || to > 8 || from == to {
			return nil, fmt.Errorf("scenario %q: want FROM:TO, two different sizes in 1..8", f)
		}
		out = append(out, Scenario{from, to})
	}
	return out, nil
}

type options struct {
	frontend, managers, tokenFile string
	poolURL, ca, cert, key        string
	secretFile                    string
	keys, imageKB, cacheMB        int
	workers                       int
	skew, rate                    float64
	scenarios                     string
	before, after                 time.Duration
	warmMin, warmMax              time.Duration
	seriesFrom, seriesTo          int
}

func main() {
	var o options
	flag.StringVar(&o.frontend, "frontend", "", "the frontend's base URL (required)")
	flag.StringVar(&o.managers, "managers", "", "managers' HTTP base URLs, comma-separated: the admin API (required)")
	flag.StringVar(&o.tokenFile, "token-file", "", "file holding the admin token (required)")
	flag.StringVar(&o.poolURL, "pool", "", "a manager's pool view, https://HOST:PORT/v1/pool (optional: the regions moved)")
	flag.StringVar(&o.ca, "ca", "", "cluster CA (PEM), with -pool")
	flag.StringVar(&o.cert, "cert", "", "a client certificate of the cluster CA, with -pool")
	flag.StringVar(&o.key, "key", "", "its private key, with -pool")
	flag.StringVar(&o.secretFile, "secret-file", "", "file holding the cluster secret, with -pool")
	flag.IntVar(&o.keys, "keys", 400, "distinct keys")
	flag.IntVar(&o.imageKB, "image-kb", 40, "image size in KB")
	flag.IntVar(&o.cacheMB, "cache-mb", 16, "capacity of each cache node in MB")
	flag.IntVar(&o.workers, "workers", 64, "reads in flight at most")
	flag.Float64Var(&o.skew, "skew", 1.1, "Zipf skew of the reads (> 1)")
	flag.Float64Var(&o.rate, "rate", 300, "reads a second (open loop)")
	flag.StringVar(&o.scenarios, "scenarios", "1:4,2:4,4:2", "resizes to measure, FROM:TO, comma-separated")
	flag.DurationVar(&o.before, "before", 20*time.Second, "load recorded after the warm-up and before the resize (at least 10s)")
	flag.DurationVar(&o.after, "after", 30*time.Second, "load recorded after the resize request (at least 10s)")
	flag.DurationVar(&o.warmMin, "warm-min", 15*time.Second, "shortest warm-up")
	flag.DurationVar(&o.warmMax, "warm-max", 180*time.Second, "longest warm-up: the scenario is measured even if the hit rate is not steady by then")
	flag.IntVar(&o.seriesFrom, "series-from", -3, "first second of the per-second table")
	flag.IntVar(&o.seriesTo, "series-to", 15, "second after the last of the per-second table")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, o); err != nil {
		fmt.Fprintln(os.Stderr, "dip:", err)
		os.Exit(1)
	}
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "dip: "+format+"\n", args...)
}

func run(ctx context.Context, o options) error {
	switch {
	case o.frontend == "" || o.managers == "" || o.tokenFile == "":
		return errors.New("-frontend, -managers and -token-file are required")
	case o.keys < 2 || o.imageKB < 1 || o.skew <= 1 || o.rate <= 0 || o.workers < 1:
		return errors.New("want -keys ≥ 2, -image-kb ≥ 1, -skew > 1, -rate > 0, -workers ≥ 1")
	case o.before < BeforeWindow*time.Second || o.after < LongAfter*time.Second:
		return fmt.Errorf("-before and -after must be at least %ds and %ds", BeforeWindow, LongAfter)
	}
	scenarios, err := parseScenarios(o.scenarios)
	if err != nil {
		return err
	}
	token, err := os.ReadFile(o.tokenFile)
	if err != nil {
		return err
	}
	adm := &admin{managers: strings.Split(o.managers, ","), token: strings.TrimSpace(string(token)),
		hc: &http.Client{Timeout: 30 * time.Second}}
	var pv *poolView
	if o.poolURL != "" {
		if pv, err = newPoolView(o); err != nil {
			return err
		}
	}

	logf("manual mode, %d MB LRU nodes", o.cacheMB)
	if _, err := adm.configure(ctx, url.Values{"mode": {"manual"}, "cacheSize": {strconv.Itoa(o.cacheMB)}, "policy": {"LRU"}}); err != nil {
		return err
	}
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		MaxIdleConns: o.workers, MaxIdleConnsPerHost: o.workers, IdleConnTimeout: time.Minute}}
	logf("uploading %d images of %d KB to %s", o.keys, o.imageKB, o.frontend)
	images, err := upload(ctx, hc, o.frontend, o.keys, o.imageKB<<10)
	if err != nil {
		return err
	}
	keys := make([]string, len(images))
	for i, img := range images {
		keys[i] = img.Key
	}
	weights := ZipfWeights(len(images), o.skew)

	var results []Result
	for i, sc := range scenarios {
		logf("scenario %d → %d: pool to %d nodes", sc.From, sc.To, sc.From)
		if err := adm.resize(ctx, sc.From); err != nil {
			return err
		}
		if err := adm.waitNodes(ctx, sc.From, 2*time.Minute); err != nil {
			return err
		}
		l := StartLoad(ctx, LoadConfig{Frontend: o.frontend, Images: images, Skew: o.skew, Rate: o.rate,
			Workers: o.workers, Seed: int64(i + 1), Client: hc})
		res, err := measure(ctx, o, adm, pv, l, sc)
		l.Stop()
		if err != nil {
			return err
		}
		if res.MovedRegions >= 0 {
			res.MovedRegions, res.MovedShare = Moved(res.before, res.after, keys, weights)
		}
		s := res.Summary
		logf("%d → %d: before %s, min %s at +%d s, 0–5 s %s, 0–10 s %s, dip %.1f points, recovery %d s, errors %d/%d, bad %d; p99 response before %v, after %v",
			sc.From, sc.To, pct(s.Before), pct(s.MinAfter), s.MinAt, pct(s.After5), pct(s.After10), s.Dip, s.Recovery,
			s.ErrorsBefore, s.ErrorsAfter, s.Bad, res.p99Before, res.p99After)
		results = append(results, res.Result)
	}
	fmt.Print(Table(results))
	fmt.Printf("\n1-s hit rate (%%) by second from the resize request:\n\n%s", Series(results, o.seriesFrom, o.seriesTo))
	bad := 0
	for _, r := range results {
		bad += r.Summary.Bad
	}
	if bad > 0 {
		return fmt.Errorf("%d answers had wrong bytes: the figures above are not valid", bad)
	}
	return nil
}

type measured struct {
	Result
	before, after       region.Map
	p99Before, p99After time.Duration
}

// measure warms the pool with l, records o.before, resizes to sc.To and
// records o.after.
func measure(ctx context.Context, o options, adm *admin, pv *poolView, l *Load, sc Scenario) (measured, error) {
	m := measured{Result: Result{From: sc.From, To: sc.To, MovedRegions: -1}}
	// Warm: until the 1-s hit rate is steady. A second is read once it
	// ended 2 s ago (its reads answered, or timed out soon after).
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return m, ctx.Err()
		case <-tick.C:
		}
		done := int(l.Elapsed()/time.Second) - 2
		if done <= 0 {
			continue
		}
		secs := Seconds(l.Records(), 0, 0, done)
		if r, ok := secs[done-1].HitRate(); ok && done%5 == 0 {
			logf("warming: %d s, hit rate %s", done, pct(r))
		}
		if Steady(secs, int(o.warmMin/time.Second)) {
			break
		}
		if l.Elapsed() > o.warmMax {
			logf("warning: the hit rate is not steady after %v; measuring anyway", o.warmMax)
			break
		}
	}
	m.Warm = l.Elapsed()
	if err := sleep(ctx, o.before); err != nil {
		return m, err
	}
	if pv != nil {
		v, err := pv.get(ctx)
		if err != nil {
			return m, err
		}
		m.before, m.MovedRegions = v, 0
	}
	req := l.Elapsed()
	logf("resizing %d → %d", sc.From, sc.To)
	if err := adm.resize(ctx, sc.To); err != nil {
		return m, err
	}
	m.ResizeCall = l.Elapsed() - req
	if pv != nil {
		v, err := pv.get(ctx)
		if err != nil {
			return m, err
		}
		m.after = v
	}
	// The after window, and 2 s for its last reads to be answered.
	if err := sleep(ctx, req+o.after+2*time.Second-l.Elapsed()); err != nil {
		return m, err
	}
	recs := l.Records()
	before, after := int(o.before/time.Second), int(o.after/time.Second)
	m.Seconds = Seconds(recs, req, -before, after)
	m.Summary = Summarize(m.Seconds)
	m.p99Before = p99(recs, req-o.before, req)
	m.p99After = p99(recs, req, req+o.after)
	return m, nil
}

// p99 returns the 99th percentile response time of the answered reads due
// in [from, to).
func p99(recs []Record, from, to time.Duration) time.Duration {
	var ds []time.Duration
	for _, r := range recs {
		if r.Due >= from && r.Due < to && r.Status != 0 {
			ds = append(ds, r.Response)
		}
	}
	if len(ds) == 0 {
		return 0
	}
	slices.Sort(ds)
	return ds[len(ds)*99/100].Round(time.Millisecond)
}

func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// upload stores n random images of size bytes (PNG signature first) under
// keys dip-000, dip-001, ..., through the frontend's /api/upload.
func upload(ctx context.Context, hc *http.Client, frontend string, n, size int) ([]Image, error) {
	images := make([]Image, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	next := make(chan int)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				images[i], errs[i] = uploadOne(ctx, hc, frontend, fmt.Sprintf("dip-%03d", i), size)
			}
		}()
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
	return images, errors.Join(errs...)
}

func uploadOne(ctx context.Context, hc *http.Client, frontend, key string, size int) (Image, error) {
	data := make([]byte, size)
	rand.Read(data)
	copy(data, "\x89PNG\r\n\x1a\n")
	sum := sha256.Sum256(data)
	img := Image{Key: key, Size: size, SHA: hex.EncodeToString(sum[:])}
	var body bytes.Buffer
	mw := multipart.NewWriter(&body)
	mw.WriteField("key", key)
	fw, _ := mw.CreateFormFile("file", key+".png")
	fw.Write(data)
	mw.Close()
	var last error
	for attempt := range 5 {
		if attempt > 0 {
			if err := sleep(ctx, time.Duration(attempt)*time.Second); err != nil {
				return img, err
			}
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, frontend+"/api/upload", bytes.NewReader(body.Bytes()))
		if err != nil {
			return img, err
		}
		req.Header.Set("Content-Type", mw.FormDataContentType())
		resp, err := hc.Do(req)
		if err != nil {
			last = err
			continue
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			return img, nil
		}
		last = fmt.Errorf("upload %s: %s: %s", key, resp.Status, bytes.TrimSpace(b))
		if resp.StatusCode < 500 {
			break
		}
	}
	return img, last
}

// admin calls the managers' admin API (web/tester.go): any replica
// forwards to the leader; the next is tried when one cannot answer.
type admin struct {
	managers []string
	token    string
	hc       *http.Client
}

// call POSTs path?params to the managers in turn, for up to a minute, and
// decodes the JSON answer. A 4xx answer is returned at once.
func (a *admin) call(ctx context.Context, path string, params url.Values) (map[string]any, error) {
	var last error
	deadline := time.Now().Add(time.Minute)
	for attempt := 0; time.Now().Before(deadline); attempt++ {
		if attempt >= len(a.managers) {
			if err := sleep(ctx, 500*time.Millisecond); err != nil {
				return nil, err
			}
		}
		base := a.managers[attempt%len(a.managers)]
		u := base + path
		if len(params) > 0 {
			u += "?" + params.Encode()
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, nil)
		if err != nil {
			return nil, err
		}
		req.Header.Set("Authorization", "Bearer "+a.token)
		resp, err := a.hc.Do(req)
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			last = err
			continue
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			var out map[string]any
			if err := json.Unmarshal(b, &out); err != nil {
				return nil, fmt.Errorf("%s: %w", u, err)
			}
			return out, nil
		}
		last = fmt.Errorf("%s: %s: %s", u, resp.Status, bytes.TrimSpace(b))
		if resp.StatusCode < 500 {
			return nil, last
		}
	}
	return nil, last
}

func (a *admin) configure(ctx context.Context, params url.Values) (map[string]any, error) {
	return a.call(ctx, "/api/configure_cache", params)
}

// resize asks for an n-node pool; the answer comes once the new member
// list and region map are committed.
func (a *admin) resize(ctx context.Context, n int) error {
	out, err := a.configure(ctx, url.Values{"numNodes": {strconv.Itoa(n)}})
	if err != nil {
		return err
	}
	if got, _ := out["numNodes"].(float64); int(got) != n {
		return fmt.Errorf("resize to %d: the pool has %v nodes", n, out["numNodes"])
	}
	return nil
}

func (a *admin) numNodes(ctx context.Context) (int, error) {
	out, err := a.call(ctx, "/api/getNumNodes", nil)
	if err != nil {
		return 0, err
	}
	n, ok := out["numNodes"].(float64)
	if !ok {
		return 0, fmt.Errorf("getNumNodes: no numNodes in %v", out)
	}
	return int(n), nil
}

func (a *admin) waitNodes(ctx context.Context, n int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		got, err := a.numNodes(ctx)
		if err == nil && got == n {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the pool has %d nodes after %v, want %d (%v)", got, timeout, n, err)
		}
		if err := sleep(ctx, 200*time.Millisecond); err != nil {
			return err
		}
	}
}

// poolView reads the managers' pool view (GET /v1/pool on a manager's
// cluster listener: mutual TLS and the cluster secret).
type poolView struct {
	url, secret string
	hc          *http.Client
}

func newPoolView(o options) (*poolView, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: x509.NewCertPool()}
	pem, err := os.ReadFile(o.ca)
	if err != nil {
		return nil, err
	}
	if !tc.RootCAs.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s: no PEM certificate", o.ca)
	}
	pair, err := tls.LoadX509KeyPair(o.cert, o.key)
	if err != nil {
		return nil, err
	}
	tc.Certificates = []tls.Certificate{pair}
	secret, err := os.ReadFile(o.secretFile)
	if err != nil {
		return nil, err
	}
	return &poolView{url: o.poolURL, secret: strings.TrimSpace(string(secret)),
		hc: &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: tc}}}, nil
}

// get returns the leader's region map after a barrier (?consistent=1): a
// follower's own view may not hold a change committed a moment ago.
func (p *poolView) get(ctx context.Context) (region.Map, error) {
	var m region.Map
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.url+"?consistent=1", nil)
	if err != nil {
		return m, err
	}
	req.Header.Set("X-Memcache-Secret", p.secret)
	resp, err := p.hc.Do(req)
	if err != nil {
		return m, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		return m, fmt.Errorf("pool view %s: %s %s", p.url, resp.Status, bytes.TrimSpace(b))
	}
	var view struct {
		Regions region.Map `json:"regions"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&view); err != nil {
		return m, fmt.Errorf("pool view: %w", err)
	}
	return view.Regions, nil
}
