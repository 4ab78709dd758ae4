package metrics

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/memcache/memcache/auth"
	"github.com/memcache/memcache/fsm"
	"github.com/memcache/memcache/node"
)

const testSecret = "s3cret"

// clock is a settable time source.
type clock struct {
	mu sync.Mutex // guards t
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = t
}

// statsNode serves GET /stats from a fixed list of samples, in the node's
// own wire format (node.Stats), behind the cluster secret: the samples that
// ended after ?since and not after the clock, as a node that took them would.
type statsNode struct {
	id          string
	clk         *clock
	samples     []node.Sample
	ignoreSince bool // answer every sample up to the clock, like a careless node
	srv         *httptest.Server

	mu     sync.Mutex  // guards sinces
	sinces []time.Time // the since of every request
}

func newStatsNode(t *testing.T, id string, clk *clock, samples []node.Sample) *statsNode {
	t.Helper()
	n := &statsNode{id: id, clk: clk, samples: samples}
	n.srv = httptest.NewServer(auth.Require(testSecret)(http.HandlerFunc(n.serve)))
	t.Cleanup(n.srv.Close)
	return n
}

func (n *statsNode) serve(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/stats" {
		http.NotFound(w, r)
		return
	}
	since, err := time.Parse(time.RFC3339Nano, r.URL.Query().Get("since"))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	n.mu.Lock()
	n.sinces = append(n.sinces, since)
	n.mu.Unlock()
	now := n.clk.Now()
	out := []node.Sample{}
	for _, s := range n.samples {
		if (n.ignoreSince || s.End.After(since)) && !s.End.After(now) {
			out = append(out, s)
		}
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(node.Stats{ID: n.id, Samples: out, Time: now})
}

// since returns the since of the i-th request.
func (n *statsNode) since(t *testing.T, i int) time.Time {
	t.Helper()
	n.mu.Lock()
	defer n.mu.Unlock()
	if i >= len(n.sinces) {
		t.Fatalf("node %s: %d requests, want more than %d", n.id, len(n.sinces), i)
	}
	return n.sinces[i]
}

func (n *statsNode) requests() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return len(n.sinces)
}

func (n *statsNode) member() fsm.Member { return fsm.Member{ID: n.id, HTTP: n.srv.URL} }

// upTo returns the samples that ended after since and not after the clock
// (what a node's Samples(since) would give at that time).
func (n *statsNode) upTo(since time.Time) []node.Sample {
	now := n.clk.Now()
	var out []node.Sample
	for _, s := range n.samples {
		if s.End.After(since) && !s.End.After(now) {
			out = append(out, s)
		}
	}
	return out
}

func poolOf(members ...fsm.Member) func() fsm.State {
	return func() fsm.State {
		st := fsm.DefaultState()
		st.Members = append([]fsm.Member(nil), members...)
		return st
	}
}

func secretClient() *http.Client {
	return &http.Client{Transport: &auth.Transport{Secret: testSecret}}
}

// base is 12:00:00 UTC; the test data covers 12:00..12:04.
var base = time.Date(2025, 1, 1, 12, 0, 0, 0, time.UTC)

// at returns base + m minutes s seconds.
func at(m, s int) time.Time {
	return base.Add(time.Duration(m)*time.Minute + time.Duration(s)*time.Second)
}

// smp is a 5-s sample ending at end, with Gets = hits + misses.
func smp(end time.Time, hits, misses, requests uint64, items, bytes int64) node.Sample {
	return node.Sample{
		Start: end.Add(-5 * time.Second), End: end,
		Hits: hits, Misses: misses, Gets: hits + misses, Requests: requests,
		Items: items, Bytes: bytes,
	}
}

// The test pool. Minute 12:02 has no sample at all, minute 12:01 no GET and
// no sample of c, and b has not reported yet in the partial minute 12:04.
var (
	samplesA = []node.Sample{
		smp(at(0, 10), 3, 1, 5, 10, 100),
		smp(at(0, 50), 1, 1, 2, 12, 120),
		smp(at(1, 30), 0, 0, 1, 12, 120),
		smp(at(3, 10), 5, 5, 10, 20, 200),
		smp(at(4, 20), 2, 0, 3, 21, 210),
	}
	samplesB = []node.Sample{
		smp(at(0, 20), 2, 2, 4, 5, 50),
		smp(at(1, 40), 0, 0, 0, 5, 50),
		smp(at(3, 20), 1, 3, 6, 9, 90),
	}
	samplesC = []node.Sample{
		smp(at(0, 30), 0, 6, 6, 7, 70),
		smp(at(3, 30), 4, 0, 4, 8, 80),
		smp(at(4, 10), 1, 1, 2, 6, 60),
	}
	// scrapes are the times the embedded backend scrapes the pool; now is
	// the time of the question.
	scrapes = []time.Time{at(0, 55), at(1, 45), at(3, 35), at(4, 25), at(4, 25)}
	now     = at(4, 30)
)

func rate(num, den float64) *float64 { r := num / den; return &r }

// wantHistory is History(now, 5) computed by hand. Nodes is the pool size
// at the last scrape in the minute (no scrape in 12:02: carried forward).
func wantHistory() []Point {
	return []Point{
		// 12:00: rates from summed counts 10/16, not the mean of the node
		// rates (1/3, 1/2, 1).
		{Time: at(0, 0), Nodes: 3, Hits: 6, Misses: 10, Gets: 16, Requests: 17, Items: 12 + 5 + 7, Bytes: 120 + 50 + 70, MissRate: rate(10, 16), HitRate: rate(6, 16)},
		// 12:01: no GETs, no rates; c did not report: occupancy of a and b.
		{Time: at(1, 0), Nodes: 3, Requests: 1, Items: 12 + 5, Bytes: 120 + 50},
		// 12:02: nothing; occupancy carried forward.
		{Time: at(2, 0), Nodes: 3, Items: 17, Bytes: 170},
		{Time: at(3, 0), Nodes: 3, Hits: 10, Misses: 8, Gets: 18, Requests: 20, Items: 20 + 9 + 8, Bytes: 200 + 90 + 80, MissRate: rate(8, 18), HitRate: rate(10, 18)},
		// 12:04 (partial): b keeps its 12:03 occupancy.
		{Time: at(4, 0), Nodes: 3, Hits: 3, Misses: 1, Gets: 4, Requests: 5, Items: 21 + 9 + 6, Bytes: 210 + 90 + 60, MissRate: rate(1, 4), HitRate: rate(3, 4)},
	}
}

// wantTotals are Totals(now, window) computed by hand.
var wantTotals = []struct {
	window time.Duration
	want   Totals
}{
	{5 * time.Minute, Totals{Hits: 19, Misses: 19, Gets: 38, Requests: 43, Items: 21 + 9 + 6, Bytes: 360, Nodes: 3}},
	{150 * time.Second, Totals{Hits: 13, Misses: 9, Gets: 22, Requests: 25, Items: 36, Bytes: 360, Nodes: 3}},
	{90 * time.Second, Totals{Hits: 13, Misses: 9, Gets: 22, Requests: 25, Items: 36, Bytes: 360, Nodes: 3}},
}

type testPool struct {
	clk     *clock
	a, b, c *statsNode
	pool    func() fsm.State
}

func newTestPool(t *testing.T) *testPool {
	t.Helper()
	clk := &clock{}
	p := &testPool{clk: clk,
		a: newStatsNode(t, "a", clk, samplesA),
		b: newStatsNode(t, "b", clk, samplesB),
		c: newStatsNode(t, "c", clk, samplesC),
	}
	p.pool = poolOf(p.a.member(), p.b.member(), p.c.member())
	return p
}

func (p *testPool) embedded(cfg EmbeddedConfig) *Embedded {
	e := NewEmbedded(cfg, p.pool, secretClient(), nil)
	e.now = p.clk.Now
	return e
}

// diffPoints reports the first difference between got and want.
func diffPoints(got, want []Point) string {
	if len(got) != len(want) {
		return fmt.Sprintf("got %d points, want %d", len(got), len(want))
	}
	for i := range got {
		g, w := got[i], want[i]
		if !g.Time.Equal(w.Time) || g.Nodes != w.Nodes || g.Gets != w.Gets || g.Hits != w.Hits ||
			g.Misses != w.Misses || g.Requests != w.Requests || g.Items != w.Items || g.Bytes != w.Bytes ||
			!sameRate(g.MissRate, w.MissRate) || !sameRate(g.HitRate, w.HitRate) {
			return fmt.Sprintf("point %d: got %s, want %s", i, pointString(g), pointString(w))
		}
	}
	return ""
}

func sameRate(a, b *float64) bool {
	if a == nil || b == nil {
		return a == b
	}
	return *a == *b
}

func pointString(p Point) string {
	b, _ := json.Marshal(p)
	return string(b)
}
