package main

import (
	"bytes"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/memcache/memcache/internal/waitfor"
)

func TestMedian(t *testing.T) {
	for _, tc := range []struct {
		rates []float64
		want  float64
	}{
		{nil, 0},
		{[]float64{5}, 5},
		{[]float64{9, 1, 5}, 5},
		{[]float64{4, 1, 3, 2}, 2.5},
	} {
		c := Cell{Rates: tc.rates}
		if got := c.Median(); got != tc.want {
			t.Errorf("Median(%v) = %v, want %v", tc.rates, got, tc.want)
		}
	}
}

func TestThousands(t *testing.T) {
	for v, want := range map[float64]string{0: "0", 999.4: "999", 999.5: "1,000", 23490: "23,490", 1234567: "1,234,567"} {
		if got := thousands(v); got != want {
			t.Errorf("thousands(%v) = %q, want %q", v, got, want)
		}
	}
}

func TestHistQuantile(t *testing.T) {
	var h Hist
	// 1..1000 µs, once each: p50 is 500 µs, p99 990 µs.
	for us := 1; us <= 1000; us++ {
		h.Add(time.Duration(us) * time.Microsecond)
	}
	var o Hist
	o.Merge(&h)
	for q, want := range map[float64]float64{0.5: 500, 0.99: 990, 0.001: 1} {
		got := float64(o.Quantile(q)) / float64(time.Microsecond)
		if got < want*0.97 || got > want*1.03+1 {
			t.Errorf("Quantile(%v) = %.1f µs, want %.0f µs within 3 %%", q, got, want)
		}
	}
	// Every value lands in a bucket whose middle is within 3 % of it.
	for us := uint64(0); us < 1<<30; us = us*9/8 + 1 {
		if mid := histMid(histIndex(us)); mid < float64(us)*0.97 || mid > float64(us)*1.03+1 {
			t.Errorf("histMid(histIndex(%d)) = %.1f, want within 3 %%", us, mid)
		}
	}
	if (&Hist{}).Quantile(0.5) != 0 {
		t.Error("Quantile of an empty histogram is not 0")
	}
}

// TestReport checks the table: the baseline is the target marked so (not
// the first), every other cell shows its ratio to it, and misses and
// errors are shown where they happened.
func TestReport(t *testing.T) {
	cfg := Config{
		Sizes: []Size{{Name: "100 KB"}, {Name: "1 KB"}},
		Targets: []Target{
			{Name: "frontend", Miss: map[string]string{"X-Memcache-Source": "store"}},
			{Name: "nginx", Baseline: true},
			{Name: "memcached"},
		},
	}
	res := Results{Cells: [][]Cell{
		{{Rates: []float64{4000, 4200, 4100}, Count: 1000, Misses: 50}, {Rates: []float64{4749}, Count: 10}},
		{{Rates: []float64{10000, 10500, 9000}, Count: 10}, {Rates: []float64{23490}, Count: 10}},
		{{Rates: []float64{29301}, Count: 10, Errors: 3, First: "boom"}, {Rates: []float64{46980}, Count: 10}},
	}}
	got := Report(cfg, Options{Clients: 16, Rounds: 3, Round: 3 * time.Second, Warmup: time.Second}, res)
	for _, want := range []string{
		"| server | 100 KB | 1 KB |\n|---|---|---|\n",
		"| frontend | 4,100 (0.41×, 5.0 % misses) | 4,749 (0.20×) |\n",
		"| nginx | 10,000 req/s | 23,490 req/s |\n",
		"| memcached | 29,301 (2.93×, **3 errors**) | 46,980 (2.00×) |\n",
		"ratio to nginx;",
		"| frontend | 100 KB | 4,100 (4,000–4,200) |",
		"| nginx | 1 KB | 23,490 (23,490–23,490) | 0.00 ms | 0.00 ms | 10 | - | 0 |",
		"frontend, 100 KB: 50 of 1,000 answers (5.0 %) were misses (X-Memcache-Source: store)",
		"**3 errors: this run is not valid.**",
		"- memcached, 100 KB: 3 errors, first: boom",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("report lacks %q; got:\n%s", want, got)
		}
	}
	if res.Errors() != 3 {
		t.Errorf("Errors() = %d, want 3", res.Errors())
	}
}

// writeSizes writes two images and returns the sizes naming them.
func writeSizes(t *testing.T) ([]Size, [][]byte) {
	t.Helper()
	dir := t.TempDir()
	var sizes []Size
	var data [][]byte
	for _, n := range []int{100 << 10, 1 << 10} {
		b := make([]byte, n)
		copy(b, "\x89PNG\r\n\x1a\n")
		for i := 8; i < n; i++ {
			b[i] = byte(i * 7)
		}
		slug := strconv.Itoa(n>>10) + "k"
		f := filepath.Join(dir, slug+".png")
		if err := os.WriteFile(f, b, 0o644); err != nil {
			t.Fatal(err)
		}
		sizes = append(sizes, Size{Name: strconv.Itoa(n>>10) + " KB", Slug: slug, File: f})
		data = append(data, b)
	}
	return sizes, data
}

// TestRunHTTP runs the driver against real HTTP servers: one that answers
// right, one whose 1 KB answer is a byte off, one that marks every other
// answer a miss and insists on the echoed header.
func TestRunHTTP(t *testing.T) {
	sizes, data := writeSizes(t)
	byPath := map[string][]byte{"/img-100k": data[0], "/img-1k": data[1]}
	good := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write(byPath[r.URL.Path])
	}))
	defer good.Close()
	bad := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b := bytes.Clone(byPath[r.URL.Path])
		if r.URL.Path == "/img-1k" {
			b[len(b)-1]++
		}
		w.Write(b)
	}))
	defer bad.Close()
	var served, echoed, missed atomic.Int64
	picky := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-Secret") != "s" {
			http.Error(w, "no secret", http.StatusUnauthorized)
			return
		}
		if served.Add(1) > 1 {
			if r.Header.Get("X-Epoch") != "7" {
				http.Error(w, "epoch not echoed", http.StatusConflict)
				return
			}
			echoed.Add(1)
		}
		w.Header().Set("X-Epoch", "7")
		if served.Load()%2 == 0 {
			missed.Add(1)
			w.Header().Set("X-Source", "store")
		}
		w.Write(byPath[r.URL.Path])
	}))
	defer picky.Close()
	cfg := Config{Sizes: sizes, Targets: []Target{
		{Name: "good", Kind: "http", URL: good.URL + "/img-{size}", Baseline: true},
		{Name: "bad", Kind: "http", URL: bad.URL + "/img-{size}"},
		{Name: "picky", Kind: "http", URL: picky.URL + "/img-{size}", Headers: map[string]string{"X-Secret": "s"},
			Echo: "X-Epoch", Miss: map[string]string{"X-Source": "store"}},
	}}
	// bad never answers 1 KB right, so it fails to start: that is its
	// test. Run it on its own, with the probe's wait cut short.
	o := Options{Round: 150 * time.Millisecond, Rounds: 2, Clients: 3, Ready: 300 * time.Millisecond}
	if _, err := Run(Config{Sizes: sizes, Targets: cfg.Targets[1:2]}, o); err == nil || !strings.Contains(err.Error(), "differ") {
		t.Errorf("Run against a server with wrong bytes: err = %v, want bytes that differ", err)
	}
	// The right bytes with another status than 200 are not an answer.
	failing := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusServiceUnavailable)
		w.Write(byPath[r.URL.Path])
	}))
	defer failing.Close()
	if _, err := Run(Config{Sizes: sizes, Targets: []Target{{Name: "failing", Kind: "http", URL: failing.URL + "/img-{size}"}}}, o); err == nil || !strings.Contains(err.Error(), "503") {
		t.Errorf("Run against a server answering 503: err = %v, want 503", err)
	}
	cfg.Targets = []Target{cfg.Targets[0], cfg.Targets[2]}
	res, err := Run(cfg, o)
	if err != nil {
		t.Fatal(err)
	}
	for i, row := range res.Cells {
		for s, c := range row {
			if len(c.Rates) != 2 || c.Count == 0 || c.Errors != 0 {
				t.Errorf("%s %s: %d rates, %d answers, %d errors (%s); want 2 rates, answers, no errors",
					cfg.Targets[i].Name, sizes[s].Name, len(c.Rates), c.Count, c.Errors, c.First)
			}
		}
	}
	misses := res.Cells[1][0].Misses + res.Cells[1][1].Misses
	if misses == 0 || int64(misses) > missed.Load() {
		t.Errorf("picky: %d misses counted, server marked %d", misses, missed.Load())
	}
	if res.Cells[0][0].Misses != 0 {
		t.Errorf("good: %d misses, want 0", res.Cells[0][0].Misses)
	}
	if echoed.Load() == 0 {
		t.Error("the echoed header was never sent")
	}
	report := Report(cfg, o, res)
	if !strings.Contains(report, "| picky |") || !strings.Contains(report, "×") {
		t.Errorf("report has no ratio for picky:\n%s", report)
	}

	// A server that goes wrong after the start counts errors.
	var n atomic.Int64
	flaky := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b := bytes.Clone(byPath[r.URL.Path])
		if n.Add(1) > 10 {
			b[0] = 'X'
		}
		w.Write(b)
	}))
	defer flaky.Close()
	res, err = Run(Config{Sizes: sizes[1:], Targets: []Target{{Name: "flaky", Kind: "http", URL: flaky.URL + "/img-{size}"}}}, o)
	if err != nil {
		t.Fatal(err)
	}
	if c := res.Cells[0][0]; c.Errors == 0 || !strings.Contains(c.First, "differ") {
		t.Errorf("flaky: %d errors, first %q; want errors for bytes that differ", c.Errors, c.First)
	}
}

// TestRunMemcached runs the driver against a real memcached, if one is
// installed.
func TestRunMemcached(t *testing.T) {
	bin, err := exec.LookPath("memcached")
	if err != nil {
		t.Skip("memcached is not installed (bench/run.sh installs it)")
	}
	ports, err := freePorts(1)
	if err != nil {
		t.Fatal(err)
	}
	addr := "127.0.0.1:" + strconv.Itoa(ports[0])
	args := []string{"-l", "127.0.0.1", "-p", strconv.Itoa(ports[0]), "-U", "0", "-m", "16"}
	if os.Geteuid() == 0 {
		args = append(args, "-u", "root")
	}
	cmd := exec.Command(bin, args...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cmd.Process.Kill()
		cmd.Wait()
	}()
	waitfor.True(t, 10*time.Second, "memcached to listen", func() bool {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	sizes, data := writeSizes(t)
	set := func(key string, b []byte) {
		t.Helper()
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if err := mcSet(c, key, b); err != nil {
			t.Fatal(err)
		}
	}
	for i, s := range sizes {
		set("bench-"+s.Slug, data[i])
	}
	cfg := Config{Sizes: sizes, Targets: []Target{{Name: "memcached", Kind: "memcached", Addr: addr, Key: "bench-{size}"}}}
	o := Options{Round: 150 * time.Millisecond, Rounds: 2, Clients: 2}
	res, err := Run(cfg, o)
	if err != nil {
		t.Fatal(err)
	}
	for s, c := range res.Cells[0] {
		if c.Count == 0 || c.Errors != 0 {
			t.Errorf("%s: %d answers, %d errors (%s); want answers and no errors", sizes[s].Name, c.Count, c.Errors, c.First)
		}
	}
	// Other bytes under a key are wrong answers.
	set("bench-1k", bytes.Repeat([]byte{'x'}, len(data[1])))
	if _, err := Run(cfg, o); err == nil || !strings.Contains(err.Error(), "differ") {
		t.Errorf("Run with other bytes in memcached: err = %v, want bytes that differ", err)
	}
}
