package metrics

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/memcache/memcache/fsm"
	"github.com/memcache/memcache/node"
)

// EmbeddedConfig configures an Embedded backend.
type EmbeddedConfig struct {
	// Interval is the scrape period, and each node's time to answer a
	// scrape. If zero, it defaults to 5 s (the nodes' sampling period).
	Interval time.Duration
	// Keep is how long samples are kept. If zero, it defaults to 35 minutes
	// (the UI's 30 minutes and a margin).
	Keep time.Duration
}

// Embedded is the default metrics backend: it scrapes the pool's nodes and
// keeps their recent samples in memory. Every manager replica runs one.
type Embedded struct {
	cfg    EmbeddedConfig
	pool   func() fsm.State
	client *node.Client // to the pool's nodes, with the cluster secret
	log    *slog.Logger
	now    func() time.Time // the clock; tests replace it

	mu    sync.Mutex               // guards nodes and sizes
	nodes map[string][]node.Sample // per node id, oldest first, strictly increasing End
	sizes []poolSize               // the pool size at each scrape, oldest first
}

// poolSize is the number of members the pool had at a scrape.
type poolSize struct {
	at    time.Time
	nodes int
}

// NewEmbedded returns an Embedded backend that scrapes the members of pool()
// with client, which must carry the cluster secret (an *http.Client whose
// Transport is an auth.Transport). Call Run to start scraping.
func NewEmbedded(cfg EmbeddedConfig, pool func() fsm.State, client *http.Client, log *slog.Logger) *Embedded {
	if cfg.Interval <= 0 {
		cfg.Interval = 5 * time.Second
	}
	if cfg.Keep <= 0 {
		cfg.Keep = 35 * time.Minute
	}
	if client == nil {
		client = http.DefaultClient
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Embedded{
		// A node gets at least 2 s to answer, even with a shorter interval:
		// on a busy machine a scrape that must first complete a TLS
		// handshake would otherwise time out, drop its connection and
		// start over every time. A scrape that outlasts its interval
		// makes the ticker drop a tick; none overlap.
		cfg: cfg, pool: pool, client: node.NewClient(node.ClientConfig{HTTPClient: client, Timeout: max(cfg.Interval, 2*time.Second)}), log: log, now: time.Now,
		nodes: make(map[string][]node.Sample),
	}
}

// Run scrapes the pool now and then every Interval until ctx is done. It
// returns once no scrape is in flight; the caller's goroutine owning Run
// signals its own done.
func (e *Embedded) Run(ctx context.Context) {
	t := time.NewTicker(e.cfg.Interval)
	defer t.Stop()
	for {
		if err := e.Scrape(ctx); err != nil && ctx.Err() == nil {
			e.log.Warn("metrics scrape incomplete", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Scrape runs one round: it asks every current member, concurrently, for its
// samples since the newest one held for it (or now-Keep), stores them,
// records the pool size and drops data older than Keep. A member that does
// not answer within Interval is left out and reported in the error, which is
// informational: the others' samples are stored.
func (e *Embedded) Scrape(ctx context.Context) error {
	now := e.now()
	floor := now.Add(-e.cfg.Keep)
	members := e.pool().Members

	since := make([]time.Time, len(members))
	e.mu.Lock()
	for i, m := range members {
		since[i] = floor
		if ss := e.nodes[m.ID]; len(ss) > 0 && ss[len(ss)-1].End.After(floor) {
			since[i] = ss[len(ss)-1].End
		}
	}
	e.mu.Unlock()

	got := make([][]node.Sample, len(members))
	errs := make([]error, len(members))
	var wg sync.WaitGroup
	for i, m := range members {
		wg.Go(func() {
			st, err := e.client.Stats(ctx, m.HTTP, since[i])
			if err != nil {
				errs[i] = fmt.Errorf("%s: %w", m.ID, err)
				return
			}
			got[i] = st.Samples
		})
	}
	wg.Wait()

	e.mu.Lock()
	defer e.mu.Unlock()
	for i, m := range members {
		if errs[i] == nil {
			e.store(m.ID, got[i], floor)
		}
	}
	e.sizes = append(e.sizes, poolSize{at: now, nodes: len(members)})
	if n := len(e.sizes); n > 1 && e.sizes[n-1].at.Before(e.sizes[n-2].at) {
		slices.SortStableFunc(e.sizes, func(a, b poolSize) int { return a.at.Compare(b.at) })
	}
	e.evict(floor)

	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("metrics: scrape: %w", err)
	}
	return nil
}

// store appends the samples of node id that are newer than those it holds
// and than floor. Callers hold e.mu.
func (e *Embedded) store(id string, samples []node.Sample, floor time.Time) {
	ss := e.nodes[id]
	for _, s := range samples {
		if !s.End.After(floor) || (len(ss) > 0 && !s.End.After(ss[len(ss)-1].End)) {
			continue // too old, or already held (dedupe by End)
		}
		ss = append(ss, s)
	}
	if len(ss) > 0 {
		e.nodes[id] = ss
	}
}

// evict drops samples and pool sizes at or before floor. Callers hold e.mu.
func (e *Embedded) evict(floor time.Time) {
	for id, ss := range e.nodes {
		i := 0
		for i < len(ss) && !ss[i].End.After(floor) {
			i++
		}
		switch {
		case i == len(ss):
			delete(e.nodes, id)
		case i > 0:
			e.nodes[id] = slices.Clone(ss[i:])
		}
	}
	i := 0
	for i < len(e.sizes) && !e.sizes[i].at.After(floor) {
		i++
	}
	if i > 0 {
		e.sizes = slices.Clone(e.sizes[i:])
	}
}

// History implements Reader.
func (e *Embedded) History(_ context.Context, now time.Time, n int) ([]Point, error) {
	if err := checkMinutes(n); err != nil {
		return nil, err
	}
	current := memberSet(e.pool())
	m := newMinutes(now, n)
	e.mu.Lock()
	for id, ss := range e.nodes {
		for _, s := range ss {
			i, ok := m.index(s.End)
			if !ok {
				continue
			}
			c := &m.counts[i]
			c.Hits += s.Hits
			c.Misses += s.Misses
			c.Gets += s.Gets
			c.Requests += s.Requests
			m.setOccupancy(i, id, occupancy{s.Items, s.Bytes}) // samples are in order: the last wins
		}
	}
	for _, r := range e.sizes {
		if i, ok := m.index(r.at); ok {
			m.nodes[i], m.known[i] = r.nodes, true
		}
	}
	e.mu.Unlock()
	m.nodesFromPresence()
	return m.points(current), nil
}

// Totals implements Reader. Its Nodes is the number of current members with
// samples in the window.
func (e *Embedded) Totals(_ context.Context, now time.Time, window time.Duration) (Totals, error) {
	if err := checkWindow(window); err != nil {
		return Totals{}, err
	}
	from := now.Add(-window)
	current := memberSet(e.pool())
	var t Totals
	e.mu.Lock()
	defer e.mu.Unlock()
	for id, ss := range e.nodes {
		var last *node.Sample
		for i := range ss {
			s := &ss[i]
			if !s.End.After(from) || s.End.After(now) {
				continue
			}
			t.Hits += s.Hits
			t.Misses += s.Misses
			t.Gets += s.Gets
			t.Requests += s.Requests
			last = s
		}
		if last != nil && current[id] {
			t.Items += last.Items
			t.Bytes += last.Bytes
			t.Nodes++
		}
	}
	return t, nil
}

// memberSet is the set of the ids of st's members.
func memberSet(st fsm.State) map[string]bool {
	set := make(map[string]bool, len(st.Members))
	for _, m := range st.Members {
		set[m.ID] = true
	}
	return set
}
