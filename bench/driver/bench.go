package main

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"net"
	"net/http/httputil"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Config is a run: the sizes measured (the table's columns, in order) and
// the targets (its rows, in order).
type Config struct {
	Sizes   []Size   `json:"sizes"`
	Targets []Target `json:"targets"`
	// CA, if set, is a PEM file trusted for every TLS target.
	CA string `json:"ca"`
}

// Size is one image: every target must answer its bytes exactly.
type Size struct {
	Name string `json:"name"` // the column's title, e.g. "100 KB"
	Slug string `json:"slug"` // replaces {size} in URLs and keys, e.g. "100k"
	File string `json:"file"` // the expected bytes
}

// Target is one server measured.
type Target struct {
	Name string `json:"name"` // the row's title
	// Kind is "http" (GET URL) or "memcached" (text protocol get Key on Addr).
	Kind string `json:"kind"`
	URL  string `json:"url"`  // http: {size} is replaced by the size's slug
	Addr string `json:"addr"` // memcached: host:port
	Key  string `json:"key"`  // memcached: {size} is replaced by the size's slug
	TLS  bool   `json:"tls"`  // memcached: over TLS (http: from the URL's scheme)
	// ClientCert and ClientKey, if set, are presented on TLS connections (mutual TLS).
	ClientCert string `json:"client_cert"`
	ClientKey  string `json:"client_key"`
	// Headers are sent with every request.
	Headers map[string]string `json:"headers"`
	// Echo names a response header whose value, in the first answer, is
	// sent with every later request (the node's X-Memcache-Epoch, as the
	// frontend sends it).
	Echo string `json:"echo"`
	// Miss marks answers that took another path than the one measured:
	// an answer with one of these header values is counted as a miss (the
	// frontend's X-Memcache-Source: store is a read from the stores, not
	// a cache hit). A miss with the right bytes is still an answer.
	Miss map[string]string `json:"miss"`
	// Baseline marks the target the others are compared with; if none
	// does, the first.
	Baseline bool `json:"baseline"`
}

// Options are a run's timings.
type Options struct {
	Round   time.Duration // one round
	Rounds  int           // rounds per target and size
	Clients int           // concurrent closed-loop clients
	Warmup  time.Duration // one unrecorded round per target and size first
	// Ready bounds the wait for each target's first correct answer. If zero, 30 s.
	Ready time.Duration
	Log   io.Writer // progress; nil is quiet
}

// Cell is what one target measured at one size.
type Cell struct {
	Rates  []float64 // req/s of each round, in order
	Count  int       // requests answered correctly, all rounds
	Misses int       // of Count, answers marked by Target.Miss
	Errors int       // errors and wrong answers, all rounds
	First  string    // the first error
	Hist   Hist      // latency of correct answers, all rounds
	TLS    string    // negotiated TLS version and cipher suite, if any
}

// Median returns the median of the rounds' rates (the mean of the middle
// two for an even count), 0 for none.
func (c *Cell) Median() float64 {
	if len(c.Rates) == 0 {
		return 0
	}
	r := slices.Clone(c.Rates)
	slices.Sort(r)
	n := len(r)
	if n%2 == 1 {
		return r[n/2]
	}
	return (r[n/2-1] + r[n/2]) / 2
}

// Results holds the cells of a run: Cells[target][size], as in Config.
type Results struct {
	Cells [][]Cell
}

// Errors is the number of errors over every cell.
func (r Results) Errors() int {
	n := 0
	for _, row := range r.Cells {
		for _, c := range row {
			n += c.Errors
		}
	}
	return n
}

// errMiss is a correct answer marked by Target.Miss.
var errMiss = errors.New("miss")

// worker does one request on its own connection and reports the answer's
// correctness: nil, errMiss, or what was wrong.
type worker interface {
	do(size int) error
	close()
}

// runner makes a target's workers.
type runner struct {
	t        Target
	expected [][]byte
	workers  []worker
}

func (r *runner) close() {
	for _, w := range r.workers {
		w.close()
	}
}

// Run measures every target at every size: after each target has answered
// every size correctly once and a warm-up round, Rounds rounds, each a
// round of every target at every size, the sizes in order and, within a
// size, the targets in an order rotated by one each round, so that a
// change in the machine's load falls on every target alike.
func Run(cfg Config, o Options) (Results, error) {
	if o.Ready <= 0 {
		o.Ready = 30 * time.Second
	}
	if o.Clients < 1 || o.Rounds < 1 || o.Round <= 0 {
		return Results{}, fmt.Errorf("want at least 1 client, 1 round and a round length, got %d, %d, %v", o.Clients, o.Rounds, o.Round)
	}
	if len(cfg.Sizes) == 0 || len(cfg.Targets) == 0 {
		return Results{}, fmt.Errorf("config has %d sizes and %d targets: want at least one of each", len(cfg.Sizes), len(cfg.Targets))
	}
	expected := make([][]byte, len(cfg.Sizes))
	for i, s := range cfg.Sizes {
		b, err := os.ReadFile(s.File)
		if err != nil {
			return Results{}, err
		}
		expected[i] = b
	}
	res := Results{Cells: make([][]Cell, len(cfg.Targets))}
	runners := make([]*runner, len(cfg.Targets))
	defer func() {
		for _, r := range runners {
			if r != nil {
				r.close()
			}
		}
	}()
	for i, t := range cfg.Targets {
		r, tlsInfo, err := newRunner(cfg, t, expected, o)
		if err != nil {
			return Results{}, fmt.Errorf("%s: %w", t.Name, err)
		}
		runners[i] = r
		res.Cells[i] = make([]Cell, len(cfg.Sizes))
		for s := range cfg.Sizes {
			res.Cells[i][s].TLS = tlsInfo
		}
	}
	logf := func(format string, a ...any) {
		if o.Log != nil {
			fmt.Fprintf(o.Log, format, a...)
		}
	}
	if o.Warmup > 0 {
		for s := range cfg.Sizes {
			for _, r := range runners {
				var scratch Cell
				r.round(s, o.Warmup, &scratch)
			}
		}
	}
	for round := range o.Rounds {
		for s, size := range cfg.Sizes {
			for k := range runners {
				i := (k + round) % len(runners)
				c := &res.Cells[i][s]
				rate := runners[i].round(s, o.Round, c)
				logf("round %d/%d  %-7s %-45s %10.0f req/s\n", round+1, o.Rounds, size.Name, cfg.Targets[i].Name, rate)
			}
		}
	}
	return res, nil
}

// round runs the workers at size s for d, adds the outcome to c and
// returns the round's rate of correct answers.
func (r *runner) round(s int, d time.Duration, c *Cell) float64 {
	type tally struct {
		n, misses, errs int
		first           string
		h               Hist
	}
	tallies := make([]tally, len(r.workers))
	start := time.Now()
	deadline := start.Add(d)
	var wg sync.WaitGroup
	for i, w := range r.workers {
		wg.Go(func() {
			t := &tallies[i]
			for {
				t0 := time.Now()
				if !t0.Before(deadline) {
					return
				}
				err := w.do(s)
				if err == errMiss {
					t.misses++
					err = nil
				}
				if err != nil {
					t.errs++
					if t.first == "" {
						t.first = err.Error()
					}
					continue
				}
				t.n++
				t.h.Add(time.Since(t0))
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	n := 0
	for _, t := range tallies {
		n += t.n
		c.Misses += t.misses
		c.Errors += t.errs
		if c.First == "" && t.first != "" {
			c.First = t.first
		}
		c.Hist.Merge(&t.h)
	}
	c.Count += n
	rate := float64(n) / elapsed.Seconds()
	c.Rates = append(c.Rates, rate)
	return rate
}

// newRunner connects a target's workers and waits (at most o.Ready) for
// its first correct answer at every size. It returns the negotiated TLS,
// if any, as text.
func newRunner(cfg Config, t Target, expected [][]byte, o Options) (*runner, string, error) {
	r := &runner{t: t, expected: expected}
	var tc *tls.Config
	if strings.HasPrefix(t.URL, "https:") || t.TLS {
		var err error
		if tc, err = tlsConfig(cfg.CA, t.ClientCert, t.ClientKey); err != nil {
			return nil, "", err
		}
	}
	var tlsInfo string
	switch t.Kind {
	case "http":
		headers := t.Headers
		probe, err := newHTTPWorker(t, cfg.Sizes, expected, tc, headers)
		if err != nil {
			return nil, "", err
		}
		// The first correct answer at every size: the frontend fills its
		// copy on the first reads, a node may still be joining.
		for s := range cfg.Sizes {
			deadline := time.Now().Add(o.Ready)
			for {
				a, err := probe.get(s)
				if err == nil && a.miss {
					err = fmt.Errorf("the answer is a miss (%s)", missText(t.Miss))
				}
				if err == nil {
					if a.echo != "" && headers[t.Echo] == "" {
						headers = with(headers, t.Echo, a.echo)
						if probe, err = newHTTPWorker(t, cfg.Sizes, expected, tc, headers); err != nil {
							return nil, "", err
						}
					}
					break
				}
				if time.Now().After(deadline) {
					probe.close()
					return nil, "", fmt.Errorf("no correct answer for %s within %v: %w", cfg.Sizes[s].Name, o.Ready, err)
				}
				time.Sleep(100 * time.Millisecond)
			}
		}
		tlsInfo = probe.tlsInfo
		probe.close()
		for range o.Clients {
			w, err := newHTTPWorker(t, cfg.Sizes, expected, tc, headers)
			if err != nil {
				return nil, "", err
			}
			r.workers = append(r.workers, w)
		}
	case "memcached":
		for range o.Clients {
			w := &mcWorker{addr: t.Addr, tc: tc, expected: expected}
			for s := range cfg.Sizes {
				w.keys = append(w.keys, strings.ReplaceAll(t.Key, "{size}", cfg.Sizes[s].Slug))
			}
			r.workers = append(r.workers, w)
		}
		for s := range cfg.Sizes {
			if err := r.workers[0].do(s); err != nil {
				r.close()
				return nil, "", fmt.Errorf("%s: %w", cfg.Sizes[s].Name, err)
			}
		}
		if mc := r.workers[0].(*mcWorker); mc.tlsInfo != "" {
			tlsInfo = mc.tlsInfo
		}
	default:
		return nil, "", fmt.Errorf("kind %q: want http or memcached", t.Kind)
	}
	return r, tlsInfo, nil
}

func with(h map[string]string, k, v string) map[string]string {
	out := map[string]string{k: v}
	for hk, hv := range h {
		if hk != k {
			out[hk] = hv
		}
	}
	return out
}

// httpWorker is one closed-loop HTTP/1.1 client on a kept-alive
// connection of its own, like wrk's: each request is written from bytes
// made once, and the answer is parsed just enough to check it (status,
// Content-Length, the headers of Target.Miss and Target.Echo), so the
// client costs the shared CPU as little as it can.
type httpWorker struct {
	t        Target
	addr     string // host:port to dial
	tc       *tls.Config
	reqs     [][]byte // per size
	expected [][]byte
	conn     net.Conn
	br       *bufio.Reader
	buf      []byte
	tlsInfo  string
}

// newHTTPWorker prepares the requests of t (headers sent with each).
func newHTTPWorker(t Target, sizes []Size, expected [][]byte, tc *tls.Config, headers map[string]string) (*httpWorker, error) {
	w := &httpWorker{t: t, expected: expected}
	for _, s := range sizes {
		u, err := url.Parse(strings.ReplaceAll(t.URL, "{size}", s.Slug))
		if err != nil {
			return nil, err
		}
		if u.Scheme != "http" && u.Scheme != "https" {
			return nil, fmt.Errorf("%s: want an http or https URL", u)
		}
		w.addr = u.Host
		if u.Port() == "" {
			w.addr = net.JoinHostPort(u.Hostname(), map[string]string{"http": "80", "https": "443"}[u.Scheme])
		}
		if u.Scheme == "https" {
			w.tc = tc.Clone()
			w.tc.ServerName = u.Hostname()
		}
		var b strings.Builder
		fmt.Fprintf(&b, "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: memcache-bench\r\n", u.RequestURI(), u.Host)
		keys := make([]string, 0, len(headers))
		for k := range headers {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			fmt.Fprintf(&b, "%s: %s\r\n", k, headers[k])
		}
		b.WriteString("\r\n")
		w.reqs = append(w.reqs, []byte(b.String()))
	}
	return w, nil
}

// answer is what get saw of a correct answer.
type answer struct {
	miss bool   // a header of Target.Miss
	echo string // the value of Target.Echo
}

func (w *httpWorker) dial() error {
	c, err := net.DialTimeout("tcp", w.addr, 10*time.Second)
	if err != nil {
		return err
	}
	if w.tc != nil {
		tc := tls.Client(c, w.tc)
		tc.SetDeadline(time.Now().Add(10 * time.Second))
		if err := tc.Handshake(); err != nil {
			c.Close()
			return err
		}
		st := tc.ConnectionState()
		w.tlsInfo = tls.VersionName(st.Version) + " " + tls.CipherSuiteName(st.CipherSuite)
		c = tc
	}
	w.conn = c
	w.br = bufio.NewReaderSize(c, 64<<10)
	return nil
}

// get makes one request and checks the answer: 200 and the expected bytes.
func (w *httpWorker) get(s int) (answer, error) {
	a, err := w.exchange(s)
	if err != nil {
		w.close()
	}
	return a, err
}

func (w *httpWorker) exchange(s int) (answer, error) {
	var a answer
	if w.conn == nil {
		if err := w.dial(); err != nil {
			return a, err
		}
	}
	w.conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := w.conn.Write(w.reqs[s]); err != nil {
		return a, err
	}
	line, err := w.br.ReadSlice('\n')
	if err != nil {
		return a, err
	}
	// HTTP/1.1 200 OK
	status := strings.TrimSpace(string(line))
	if len(status) < 12 || !strings.HasPrefix(status, "HTTP/1.") {
		return a, fmt.Errorf("not an HTTP/1.x status line: %q", status)
	}
	code := status[9:12]
	length, closeAfter, chunked := -1, false, false
	for {
		line, err := w.br.ReadSlice('\n')
		if err != nil {
			return a, err
		}
		if len(line) <= 2 {
			break
		}
		name, value, ok := strings.Cut(string(line), ":")
		if !ok {
			return a, fmt.Errorf("malformed header line %q", line)
		}
		value = strings.TrimSpace(value)
		switch {
		case strings.EqualFold(name, "Content-Length"):
			if length, err = strconv.Atoi(value); err != nil || length < 0 {
				return a, fmt.Errorf("Content-Length %q", value)
			}
		case strings.EqualFold(name, "Transfer-Encoding"):
			if !strings.EqualFold(value, "chunked") {
				return a, fmt.Errorf("Transfer-Encoding %q: want chunked or none", value)
			}
			chunked = true
		case strings.EqualFold(name, "Connection"):
			closeAfter = strings.EqualFold(value, "close")
		case w.t.Echo != "" && strings.EqualFold(name, w.t.Echo):
			a.echo = value
		}
		for k, v := range w.t.Miss {
			if strings.EqualFold(name, k) && value == v {
				a.miss = true
			}
		}
	}
	switch {
	case chunked:
		if err := w.readChunked(); err != nil {
			return a, err
		}
	case length >= 0:
		if cap(w.buf) < length {
			w.buf = make([]byte, length)
		}
		w.buf = w.buf[:length]
		if _, err := io.ReadFull(w.br, w.buf); err != nil {
			return a, err
		}
	default:
		return a, fmt.Errorf("%s: neither Content-Length nor chunked", status)
	}
	if closeAfter {
		w.close()
	}
	if code != "200" {
		return a, fmt.Errorf("%s: %.200s", status, bytes.TrimSpace(w.buf))
	}
	if !bytes.Equal(w.buf, w.expected[s]) {
		return a, fmt.Errorf("got %d bytes that differ from the %d expected", len(w.buf), len(w.expected[s]))
	}
	return a, nil
}

// readChunked reads a chunked body, and its trailer, into w.buf.
func (w *httpWorker) readChunked() error {
	b := bytes.NewBuffer(w.buf[:0])
	if _, err := b.ReadFrom(httputil.NewChunkedReader(w.br)); err != nil {
		return err
	}
	w.buf = b.Bytes()
	for {
		line, err := w.br.ReadSlice('\n')
		if err != nil {
			return err
		}
		if len(line) <= 2 {
			return nil
		}
	}
}

func (w *httpWorker) do(s int) error {
	a, err := w.get(s)
	if err == nil && a.miss {
		return errMiss
	}
	return err
}

func (w *httpWorker) close() {
	if w.conn != nil {
		w.conn.Close()
		w.conn = nil
	}
}

// mcWorker gets keys from memcached over the text protocol, on one
// connection of its own (reopened after an error).
type mcWorker struct {
	addr     string
	tc       *tls.Config
	keys     []string
	expected [][]byte
	conn     net.Conn
	rw       *bufio.ReadWriter
	buf      []byte
	tlsInfo  string
}

func (w *mcWorker) do(s int) error {
	if err := w.get(s); err != nil {
		w.close()
		return err
	}
	return nil
}

func (w *mcWorker) get(s int) error {
	if w.conn == nil {
		c, err := net.DialTimeout("tcp", w.addr, 10*time.Second)
		if err != nil {
			return err
		}
		if w.tc != nil {
			cfg := w.tc.Clone()
			cfg.ServerName, _, _ = net.SplitHostPort(w.addr)
			tc := tls.Client(c, cfg)
			if err := tc.Handshake(); err != nil {
				c.Close()
				return err
			}
			st := tc.ConnectionState()
			w.tlsInfo = tls.VersionName(st.Version) + " " + tls.CipherSuiteName(st.CipherSuite)
			c = tc
		}
		w.conn = c
		w.rw = bufio.NewReadWriter(bufio.NewReaderSize(c, 64<<10), bufio.NewWriter(c))
	}
	w.conn.SetDeadline(time.Now().Add(10 * time.Second))
	w.rw.WriteString("get ")
	w.rw.WriteString(w.keys[s])
	w.rw.WriteString("\r\n")
	if err := w.rw.Flush(); err != nil {
		return err
	}
	line, err := w.rw.ReadSlice('\n')
	if err != nil {
		return err
	}
	// VALUE <key> <flags> <bytes>\r\n
	f := strings.Fields(string(line))
	if len(f) != 4 || f[0] != "VALUE" || f[1] != w.keys[s] {
		return fmt.Errorf("memcached answered %q to get %s", strings.TrimSpace(string(line)), w.keys[s])
	}
	n, err := strconv.Atoi(f[3])
	if err != nil || n < 0 {
		return fmt.Errorf("memcached answered %q: bad length", strings.TrimSpace(string(line)))
	}
	if cap(w.buf) < n+2 {
		w.buf = make([]byte, n+2)
	}
	w.buf = w.buf[:n+2]
	if _, err := io.ReadFull(w.rw, w.buf); err != nil {
		return err
	}
	end, err := w.rw.ReadSlice('\n')
	if err != nil {
		return err
	}
	if string(end) != "END\r\n" {
		return fmt.Errorf("memcached answered %q after the value, want END", end)
	}
	if !bytes.Equal(w.buf[:n], w.expected[s]) || string(w.buf[n:]) != "\r\n" {
		return fmt.Errorf("got %d bytes that differ from the %d expected", n, len(w.expected[s]))
	}
	return nil
}

func (w *mcWorker) close() {
	if w.conn != nil {
		w.conn.Close()
		w.conn = nil
	}
}

// Hist is a latency histogram in microseconds with 32 linear buckets per
// power of two (each bucket within about 3 % of its values).
type Hist struct {
	counts [histBuckets]uint64
	n      uint64
}

const (
	histSub     = 32
	histBuckets = histSub * 40 // up to 2^40 µs
)

func histIndex(us uint64) int {
	if us < histSub {
		return int(us)
	}
	e := bits.Len64(us) - 6 // us>>e is in [32, 64)
	i := histSub*(e+1) + int(us>>e) - histSub
	return min(i, histBuckets-1)
}

// histMid returns the middle of bucket i, in microseconds.
func histMid(i int) float64 {
	if i < histSub {
		return float64(i)
	}
	e := i/histSub - 1
	low := uint64(i%histSub+histSub) << e
	return float64(low) + float64(uint64(1)<<e)/2
}

// Add records one latency.
func (h *Hist) Add(d time.Duration) {
	h.counts[histIndex(uint64(d.Microseconds()))]++
	h.n++
}

// Merge adds o's records to h.
func (h *Hist) Merge(o *Hist) {
	for i, c := range o.counts {
		h.counts[i] += c
	}
	h.n += o.n
}

// Quantile returns the latency below which a fraction q of the records
// fall (0 for none).
func (h *Hist) Quantile(q float64) time.Duration {
	if h.n == 0 {
		return 0
	}
	rank := uint64(q*float64(h.n) + 0.5)
	rank = max(rank, 1)
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if seen >= rank {
			return time.Duration(histMid(i) * float64(time.Microsecond))
		}
	}
	return time.Duration(histMid(histBuckets-1) * float64(time.Microsecond))
}

// Report is the run's outcome in markdown: the table of median rates with
// each ratio to the baseline, then each cell's spread and latency.
func Report(cfg Config, o Options, res Results) string {
	var b strings.Builder
	base := 0
	for i, t := range cfg.Targets {
		if t.Baseline {
			base = i
			break
		}
	}
	b.WriteString("| server |")
	for _, s := range cfg.Sizes {
		b.WriteString(" " + s.Name + " |")
	}
	b.WriteString("\n|---|")
	for range cfg.Sizes {
		b.WriteString("---|")
	}
	b.WriteString("\n")
	for i, t := range cfg.Targets {
		b.WriteString("| " + t.Name + " |")
		for s := range cfg.Sizes {
			c := &res.Cells[i][s]
			var notes []string
			if i != base {
				notes = append(notes, ratio(c.Median(), res.Cells[base][s].Median())+"×")
			}
			if c.Misses > 0 {
				notes = append(notes, fmt.Sprintf("%.1f %% misses", 100*float64(c.Misses)/float64(c.Count)))
			}
			if c.Errors > 0 {
				notes = append(notes, "**"+thousands(float64(c.Errors))+" errors**")
			}
			switch {
			case i == base && len(notes) == 0:
				fmt.Fprintf(&b, " %s req/s |", thousands(c.Median()))
			default:
				fmt.Fprintf(&b, " %s (%s) |", thousands(c.Median()), strings.Join(notes, ", "))
			}
		}
		b.WriteString("\n")
	}
	fmt.Fprintf(&b, "\n%d closed-loop clients, each on one kept-alive connection; %d rounds of %v per server and size after a %v warm-up, "+
		"interleaved (the servers in an order rotated each round); median of the rounds; ratio to %s; every answer checked byte for byte.\n\n",
		o.Clients, o.Rounds, o.Round, o.Warmup, cfg.Targets[base].Name)
	b.WriteString("| server | size | req/s median (min–max) | p50 | p99 | answers | misses | errors |\n|---|---|---|---|---|---|---|---|\n")
	for i, t := range cfg.Targets {
		for s, size := range cfg.Sizes {
			c := &res.Cells[i][s]
			lo, hi := 0.0, 0.0
			if len(c.Rates) > 0 {
				lo, hi = slices.Min(c.Rates), slices.Max(c.Rates)
			}
			misses := "-"
			if len(t.Miss) > 0 {
				misses = thousands(float64(c.Misses))
			}
			fmt.Fprintf(&b, "| %s | %s | %s (%s–%s) | %s | %s | %s | %s | %d |\n", t.Name, size.Name,
				thousands(c.Median()), thousands(lo), thousands(hi), ms(c.Hist.Quantile(0.5)), ms(c.Hist.Quantile(0.99)),
				thousands(float64(c.Count)), misses, c.Errors)
		}
	}
	var notes []string
	for i, t := range cfg.Targets {
		if tl := res.Cells[i][0].TLS; tl != "" {
			notes = append(notes, t.Name+": "+tl)
		}
	}
	if len(notes) > 0 {
		b.WriteString("\nTLS negotiated: " + strings.Join(notes, "; ") + ".\n")
	}
	for i, t := range cfg.Targets {
		for s, size := range cfg.Sizes {
			if c := &res.Cells[i][s]; c.Misses > 0 {
				fmt.Fprintf(&b, "\n%s, %s: %s of %s answers (%.1f %%) were misses (%s), counted in its rate.\n", t.Name, size.Name,
					thousands(float64(c.Misses)), thousands(float64(c.Count)), 100*float64(c.Misses)/float64(c.Count), missText(t.Miss))
			}
		}
	}
	if n := res.Errors(); n > 0 {
		fmt.Fprintf(&b, "\n**%s errors: this run is not valid.**\n", thousands(float64(n)))
		for i, t := range cfg.Targets {
			for s, size := range cfg.Sizes {
				if c := &res.Cells[i][s]; c.Errors > 0 {
					fmt.Fprintf(&b, "- %s, %s: %s errors, first: %s\n", t.Name, size.Name, thousands(float64(c.Errors)), c.First)
				}
			}
		}
	}
	return b.String()
}

// ratio formats a/b with two decimals ("-" when b is 0).
func ratio(a, b float64) string {
	if b == 0 {
		return "-"
	}
	return strconv.FormatFloat(a/b, 'f', 2, 64)
}

// thousands formats v rounded to an integer with comma separators.
func thousands(v float64) string {
	s := strconv.FormatInt(int64(v+0.5), 10)
	var b strings.Builder
	for i, r := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(r)
	}
	return b.String()
}

func ms(d time.Duration) string {
	return strconv.FormatFloat(float64(d)/float64(time.Millisecond), 'f', 2, 64) + " ms"
}

func missText(m map[string]string) string {
	var parts []string
	for k, v := range m {
		parts = append(parts, k+": "+v)
	}
	slices.Sort(parts)
	return strings.Join(parts, ", ")
}
