package metrics

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/memcache/memcache/auth"
	"github.com/memcache/memcache/fsm"
	"github.com/memcache/memcache/internal/waitfor"
	"github.com/memcache/memcache/node"
)

// scrapeAll runs e's scrapes at the fixture's times and leaves the clock at now.
func scrapeAll(t *testing.T, p *testPool, e *Embedded) {
	t.Helper()
	for _, s := range scrapes {
		p.clk.Set(s)
		if err := e.Scrape(context.Background()); err != nil {
			t.Fatalf("Scrape at %s: %v", s.Format(time.TimeOnly), err)
		}
	}
	p.clk.Set(now)
}

func TestEmbeddedAggregation(t *testing.T) {
	p := newTestPool(t)
	p.a.ignoreSince = true // a answers everything each time: the store must dedupe by End
	e := p.embedded(EmbeddedConfig{})
	scrapeAll(t, p, e)

	got, err := e.History(context.Background(), now, 5)
	if err != nil {
		t.Fatal(err)
	}
	if d := diffPoints(got, wantHistory()); d != "" {
		t.Error("History:", d)
	}
	for _, tc := range wantTotals {
		got, err := e.Totals(context.Background(), now, tc.window)
		if err != nil {
			t.Fatal(err)
		}
		if got != tc.want {
			t.Errorf("Totals(%s): got %+v, want %+v", tc.window, got, tc.want)
		}
	}
	// A window of one minute, (12:03:30, 12:04:30]: c's sample ending at
	// 12:03:30 is out, and b has none in it.
	got1, _ := e.Totals(context.Background(), now, time.Minute)
	if want := (Totals{Hits: 3, Misses: 1, Gets: 4, Requests: 5, Items: 21 + 6, Bytes: 210 + 60, Nodes: 2}); got1 != want {
		t.Errorf("Totals(1m): got %+v, want %+v", got1, want)
	}
	if r, ok := got1.MissRate(); !ok || r != 0.25 {
		t.Errorf("MissRate() = %v, %v; want 0.25, true", r, ok)
	}

	// The first scrape asks from now-Keep, the next from the newest End held.
	if got, want := p.b.since(t, 0), at(0, 55).Add(-35*time.Minute); !got.Equal(want) {
		t.Errorf("first since: got %s, want %s", got, want)
	}
	if got, want := p.b.since(t, 1), at(0, 20); !got.Equal(want) {
		t.Errorf("second since: got %s, want %s", got, want)
	}
	e.mu.Lock()
	if n := len(e.nodes["a"]); n != len(samplesA) {
		t.Errorf("node a: %d samples held after repeated answers, want %d", n, len(samplesA))
	}
	e.mu.Unlock()

	// More history than data: leading minutes are empty with Nodes 0.
	long, _ := e.History(context.Background(), now, 7)
	if len(long) != 7 || long[0].Nodes != 0 || long[0].Items != 0 || long[0].MissRate != nil || !long[0].Time.Equal(at(-2, 0)) {
		t.Errorf("History(7)[0] = %s, want an empty minute at 11:58", pointString(long[0]))
	}
	if d := diffPoints(long[2:], wantHistory()); d != "" {
		t.Error("History(7)[2:]:", d)
	}

	// A minute without GETs has no rate on the wire.
	b, _ := json.Marshal(got[1])
	if !bytes.Contains(b, []byte(`"miss_rate":null`)) || !bytes.Contains(b, []byte(`"hit_rate":null`)) {
		t.Errorf("JSON of a minute without GETs: %s, want null rates", b)
	}
}

func TestEmbeddedKeep(t *testing.T) {
	p := newTestPool(t)
	e := p.embedded(EmbeddedConfig{Keep: 3 * time.Minute})
	p.clk.Set(now)
	if err := e.Scrape(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got, want := p.b.since(t, 0), now.Add(-3*time.Minute); !got.Equal(want) {
		t.Errorf("first since: got %s, want now-Keep %s", got, want)
	}
	// Held: what ended after 12:01:30.
	got, _ := e.Totals(context.Background(), now, time.Hour)
	if want := (Totals{Hits: 13, Misses: 9, Gets: 22, Requests: 25, Items: 36, Bytes: 360, Nodes: 3}); got != want {
		t.Errorf("Totals after one scrape: got %+v, want %+v", got, want)
	}

	// Two minutes later the floor is 12:03:30: b's samples are all gone.
	later := at(6, 30)
	p.clk.Set(later)
	if err := e.Scrape(context.Background()); err != nil {
		t.Fatal(err)
	}
	got, _ = e.Totals(context.Background(), later, time.Hour)
	if want := (Totals{Hits: 3, Misses: 1, Gets: 4, Requests: 5, Items: 27, Bytes: 270, Nodes: 2}); got != want {
		t.Errorf("Totals after eviction: got %+v, want %+v", got, want)
	}
	e.mu.Lock()
	if _, ok := e.nodes["b"]; ok {
		t.Error("node b is still held after all its samples expired")
	}
	if len(e.sizes) != 2 || !e.sizes[0].at.Equal(now) || !e.sizes[1].at.Equal(later) {
		t.Errorf("pool sizes held: %+v, want those of %s and %s", e.sizes, now, later)
	}
	e.mu.Unlock()
	p.clk.Set(at(10, 0))
	e.Scrape(context.Background())
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(e.sizes) != 1 || len(e.nodes) != 0 {
		t.Errorf("held %d pool sizes and %d nodes at 12:10, want 1 and 0", len(e.sizes), len(e.nodes))
	}
}

func TestEmbeddedNodeDown(t *testing.T) {
	clk := &clock{t: now}
	good := newStatsNode(t, "good", clk, samplesA)
	down := httptest.NewServer(http.NotFoundHandler())
	down.Close() // connection refused
	broken := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "boom", http.StatusInternalServerError)
	}))
	defer broken.Close()
	hang := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-r.Context().Done() // never answers
	}))
	defer hang.Close()
	otherSecret := httptest.NewServer(auth.Require("another")(http.NotFoundHandler()))
	defer otherSecret.Close()

	pool := poolOf(good.member(),
		fsm.Member{ID: "down", HTTP: down.URL},
		fsm.Member{ID: "broken", HTTP: broken.URL},
		fsm.Member{ID: "hang", HTTP: hang.URL},
		fsm.Member{ID: "unauthorized", HTTP: otherSecret.URL})
	e := NewEmbedded(EmbeddedConfig{Interval: time.Second}, pool, secretClient(), nil)
	e.now = clk.Now

	err := e.Scrape(context.Background())
	for _, id := range []string{"down", "broken", "hang", "unauthorized"} {
		if err == nil || !strings.Contains(err.Error(), id+":") {
			t.Errorf("Scrape error %v does not name %s", err, id)
		}
	}
	if err != nil && strings.Contains(err.Error(), "good:") {
		t.Errorf("Scrape error %v names the node that answered", err)
	}
	got, _ := e.Totals(context.Background(), now, 5*time.Minute)
	var want Totals
	want.Add(samplesA)
	want.Nodes = 1
	if got != want {
		t.Errorf("Totals: got %+v, want node good's %+v", got, want)
	}
	h, _ := e.History(context.Background(), now, 1)
	if h[0].Nodes != 5 {
		t.Errorf("History Nodes = %d, want the pool size 5 (answering or not)", h[0].Nodes)
	}
}

func TestEmbeddedBadRange(t *testing.T) {
	e := NewEmbedded(EmbeddedConfig{}, poolOf(), nil, nil)
	if _, err := e.History(context.Background(), now, 0); !errors.Is(err, ErrBadRange) {
		t.Errorf("History(0): got %v, want ErrBadRange", err)
	}
	if _, err := e.History(context.Background(), now, MaxMinutes+1); !errors.Is(err, ErrBadRange) {
		t.Errorf("History(MaxMinutes+1): got %v, want ErrBadRange", err)
	}
	if _, err := e.Totals(context.Background(), now, 0); !errors.Is(err, ErrBadRange) {
		t.Errorf("Totals(0): got %v, want ErrBadRange", err)
	}
}

// poll waits up to 10 s for cond.
func poll(t *testing.T, what string, cond func() bool) {
	t.Helper()
	waitfor.True(t, 10*time.Second, what, cond)
}

// waitDone fails the test if done is not closed soon.
func waitDone(t *testing.T, what string, done <-chan struct{}) {
	t.Helper()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatalf("%s did not return after its context was cancelled", what)
	}
}

func TestEmbeddedRunStops(t *testing.T) {
	clk := &clock{t: now}
	n := newStatsNode(t, "a", clk, samplesA)
	e := NewEmbedded(EmbeddedConfig{Interval: 10 * time.Millisecond}, poolOf(n.member()), secretClient(), nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		e.Run(ctx)
	}()
	poll(t, "three scrapes", func() bool { return n.requests() >= 3 })
	cancel()
	waitDone(t, "Embedded.Run", done)
}

// startNode runs a real cache node with a short sampling interval until the
// test ends.
func startNode(t *testing.T, id string) (*node.Node, fsm.Member) {
	t.Helper()
	n, err := node.New(node.Config{ID: id, SampleInterval: 20 * time.Millisecond, Secret: testSecret}, nil)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(n.Handler())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		n.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		srv.Close()
	})
	return n, fsm.Member{ID: id, HTTP: srv.URL}
}

// drive sends one PUT and three GETs (one hit, two misses) to a node.
func drive(t *testing.T, m fsm.Member, value string) {
	t.Helper()
	c := node.NewClient(node.ClientConfig{HTTPClient: secretClient()})
	ctx := context.Background()
	if err := c.Put(ctx, m.HTTP, "k", []byte(value), node.PutOptions{}); err != nil {
		t.Fatalf("PUT k: %v", err)
	}
	e, err := c.Get(ctx, m.HTTP, "k", 0, node.GetOptions{})
	if err != nil {
		t.Fatalf("GET k: %v", err)
	}
	e.Body.Close()
	for _, k := range []string{"x", "y"} {
		if _, err := c.Get(ctx, m.HTTP, k, 0, node.GetOptions{}); !errors.Is(err, node.ErrMiss) {
			t.Fatalf("GET %s: %v, want a miss", k, err)
		}
	}
}

func TestEmbeddedWithRealNodes(t *testing.T) {
	_, m1 := startNode(t, "n1")
	_, m2 := startNode(t, "n2")
	drive(t, m1, "hello")
	drive(t, m2, "bonjour!")
	e := NewEmbedded(EmbeddedConfig{}, poolOf(m1, m2), secretClient(), nil)
	want := Totals{Hits: 2, Misses: 4, Gets: 6, Requests: 8, Items: 2, Bytes: 5 + 8, Nodes: 2}
	var got Totals
	poll(t, "the nodes' samples", func() bool {
		if err := e.Scrape(context.Background()); err != nil {
			t.Fatal(err)
		}
		got, _ = e.Totals(context.Background(), time.Now(), 5*time.Minute)
		return got == want
	})
	h, _ := e.History(context.Background(), time.Now(), 2)
	if g := h[0].Gets + h[1].Gets; g != 6 {
		t.Errorf("History gets = %d, want 6", g)
	}
	if h[1].Nodes != 2 || h[1].Items != 2 || h[1].Bytes != 13 {
		t.Errorf("History newest point %s, want 2 nodes, 2 items, 13 bytes", pointString(h[1]))
	}
}
