// Package node provides a memcache cache node: an in-memory image cache with
// LRU and random replacement, its statistics, region ownership, and its HTTP API.
package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/bits"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/memcache/memcache/internal/pool"
	"github.com/memcache/memcache/region"
)

// Regions is the pool's region map as a node receives it: which member owns
// each region at Epoch, and the epoch since which each region has had its
// current owner.
type Regions struct {
	Epoch  uint64               `json:"epoch"`
	Owners region.Map           `json:"owners"`
	Since  [region.Count]uint64 `json:"since"`
	// From[r] is the member that owned region r until Since[r] and hands
	// it off (handoff.go); zero if none.
	From [region.Count]pool.Member `json:"from"`
}

// ErrStaleRegions is returned by SetRegions for a map older than the one held.
var ErrStaleRegions = errors.New("region map is older than the node's")

// Config configures a Node.
type Config struct {
	// ID is the node's id, as named in region maps. Required.
	ID string
	// Cache is the initial cache configuration. If zero, it defaults to 64 MB LRU.
	Cache pool.CacheConfig
	// SampleInterval is how often statistics are sampled. If zero, it defaults to 5 s.
	SampleInterval time.Duration
	// History is how many samples are kept. If zero, it defaults to 360 (30 minutes at 5 s).
	History int
	// Secret, if set, is the cluster secret every cache and control request
	// must carry (auth.Header); /healthz, /readyz and /metrics stay open.
	Secret string
	// ReadLease is the longest read lease the node grants a frontend's
	// near-cache (readlease.go), at most MaxReadLease; 0 grants none.
	ReadLease time.Duration
	// ReadLeaseGrace is how long after it starts the node makes no change
	// that revokes read leases: leases its previous run granted at the
	// same address may still be held. If zero, ReadLease; negative, none
	// (a node that certainly had no previous run).
	ReadLeaseGrace time.Duration
	// PollWait is how long a read lease holder's poll waits for a
	// revocation before it answers empty. If zero, 2 s.
	PollWait time.Duration
	// Peers makes the node's calls to other nodes: filling a region it
	// gains from the region's previous owner (handoff.go). It carries the
	// cluster's credentials. If nil, the node fills no region that way (it
	// still hands off the regions it loses).
	Peers *http.Client
	// HandoffTimeout bounds a warm handoff: how long a new owner fills a
	// region from its previous owner, and (plus 10 s) how long the
	// previous owner keeps it. If zero, DefaultHandoffTimeout; negative,
	// no handoff: moved regions start empty.
	HandoffTimeout time.Duration
}

// Node is a cache node: a cache, the regions it owns, and its statistics.
type Node struct {
	id       string
	secret   string
	log      *slog.Logger
	cache    *Cache
	sampler  *sampler
	requests atomic.Uint64
	epoch    atomic.Uint64 // epoch of regions, readable without mu

	mu        sync.Mutex // guards regions, clearGen and deleteGen
	regions   Regions
	clearGen  uint64 // the pool's clear-caches generation last acted on
	deleteGen uint64 // the pool's delete-all generation last acted on

	// genMu orders fills against clears: a PUT holds it shared from the
	// check of its generation to the store, a clear holds it exclusively
	// while it raises floor and empties the cache, so no fill checked
	// against the old floor lands after the clear.
	genMu  sync.RWMutex
	floor  uint64 // the newest cache generation cleared at; guarded by genMu
	clears uint64 // how many times the cache was cleared; guarded by genMu

	// The serving lease (lease.go): leaseUntil is in nanoseconds since
	// start, on the monotonic clock.
	start      time.Time
	leased     atomic.Bool
	leaseUntil atomic.Int64
	leaseTerm  atomic.Int64 // the last lease granted, a duration

	fences *fences // fence.go

	reads    *readLeases // readlease.go; nil when off
	pollWait time.Duration
	nearHits atomic.Uint64 // reads holders served from their copies, as they reported

	handoff *handoffs // handoff.go

	registry *prometheus.Registry
	latency  *prometheus.HistogramVec
}

// New returns a node that owns every region (epoch 0) until told otherwise.
func New(cfg Config, log *slog.Logger) (*Node, error) {
	if cfg.ID == "" {
		return nil, errors.New("node: ID is required")
	}
	if cfg.Cache == (pool.CacheConfig{}) {
		cfg.Cache = pool.CacheConfig{CapacityMB: 64, Policy: pool.LRU}
	}
	if cfg.SampleInterval <= 0 {
		cfg.SampleInterval = 5 * time.Second
	}
	if cfg.History <= 0 {
		cfg.History = 360
	}
	cache, err := NewCache(cfg.Cache)
	if err != nil {
		return nil, err
	}
	if cfg.PollWait <= 0 {
		cfg.PollWait = 2 * time.Second
	}
	if cfg.HandoffTimeout == 0 {
		cfg.HandoffTimeout = DefaultHandoffTimeout
	}
	n := &Node{id: cfg.ID, secret: cfg.Secret, log: log, cache: cache, start: time.Now(), fences: newFences(), pollWait: cfg.PollWait,
		handoff: newHandoffs(cfg.HandoffTimeout, cfg.Peers)}
	if cfg.ReadLease > 0 {
		grace := cfg.ReadLeaseGrace
		if grace == 0 {
			grace = cfg.ReadLease
		}
		n.reads = newReadLeases(cfg.ReadLease, max(grace, 0), n.leaseRemaining)
	}
	for r := range n.regions.Owners {
		n.regions.Owners[r] = cfg.ID
	}
	n.sampler = newSampler(n.Counters, cfg.SampleInterval, cfg.History, time.Now)
	n.registry = prometheus.NewRegistry()
	n.latency = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "memcache_node_request_duration_seconds",
		Help:    "Latency of cache node HTTP requests, by operation.",
		Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, 1},
	}, []string{"op"})
	n.registry.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		n.latency,
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "memcache_node_hits_total", Help: "Cache GETs that found the key, and reads frontends served from their near-caches under its read leases."},
			func() float64 { return float64(n.cache.hits.Load() + n.nearHits.Load()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "memcache_node_misses_total", Help: "Cache GETs that did not find the key."},
			func() float64 { return float64(n.cache.misses.Load()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "memcache_node_evictions_total", Help: "Entries evicted to make room."},
			func() float64 { return float64(n.cache.evictions.Load()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "memcache_node_requests_total", Help: "Cache requests served."},
			func() float64 { return float64(n.requests.Load()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "memcache_node_items", Help: "Entries cached."},
			func() float64 { return float64(n.cache.Len()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "memcache_node_bytes", Help: "Value bytes cached."},
			func() float64 { return float64(n.cache.Bytes()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "memcache_node_capacity_bytes", Help: "Cache capacity in bytes."},
			func() float64 { return float64(n.cache.Capacity()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "memcache_node_region_epoch", Help: "Epoch of the region map the node holds."},
			func() float64 { return float64(n.epoch.Load()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "memcache_node_handoff_receiving_regions", Help: "Regions the node is filling from their previous owners (warm handoff)."},
			func() float64 { return float64(bits.OnesCount32(n.handoff.recvMask.Load())) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "memcache_node_handoff_giving_regions", Help: "Regions the node has lost and keeps for their new owners."},
			func() float64 { return float64(len(n.Handoffs().Giving)) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "memcache_node_handoff_entries_total", Help: "Entries installed from regions' previous owners."},
			func() float64 { return float64(n.handoff.entries.Load()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "memcache_node_handoff_bytes_total", Help: "Value bytes installed from regions' previous owners."},
			func() float64 { return float64(n.handoff.bytes.Load()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "memcache_node_handoff_warm_reads_total", Help: "Cache GETs that missed and were served from the region's previous owner (counted as hits)."},
			func() float64 { return float64(n.handoff.reads.Load()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "memcache_node_handoff_refused_total", Help: "Copies from previous owners kept out: a newer write, a clear, a fence, or already cached."},
			func() float64 { return float64(n.handoff.refused.Load()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "memcache_node_lease_remaining_seconds", Help: "How long the serving lease still holds (negative: lapsed, reads refused); 0 if the node follows no managers."},
			func() float64 { left, _ := n.leaseRemaining(); return left.Seconds() }),
	)
	return n, nil
}

// ID returns the node's id.
func (n *Node) ID() string { return n.id }

// Cache returns the node's cache.
func (n *Node) Cache() *Cache { return n.cache }

// Run samples statistics and carries out warm handoffs until ctx is done.
func (n *Node) Run(ctx context.Context) {
	var wg sync.WaitGroup
	wg.Go(func() { n.runHandoffs(ctx) })
	n.sampler.run(ctx)
	wg.Wait()
}

// Counters returns the node's cumulative statistics.
func (n *Node) Counters() Counters {
	// A read a frontend served from its near-cache under a read lease is
	// a hit of this node's (reported on the holder's next poll).
	h, m := n.cache.hits.Load()+n.nearHits.Load(), n.cache.misses.Load()
	return Counters{
		Hits: h, Misses: m, Gets: h + m,
		Requests: n.requests.Load(),
		Items:    int64(n.cache.Len()),
		Bytes:    n.cache.Bytes(),
	}
}

// Samples returns the statistics samples that ended after since, oldest first.
func (n *Node) Samples(since time.Time) []Sample { return n.sampler.history(since) }

// Regions returns the region map the node holds.
func (n *Node) Regions() Regions {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.regions
}

// regionSince returns the epoch since which the node has owned region r.
func (n *Node) regionSince(r int) uint64 {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.regions.Since[r]
}

// Floor returns the newest cache generation (pool.View.Generation) the node
// has cleared at: it refuses fills stamped with an older one.
func (n *Node) Floor() uint64 {
	n.genMu.RLock()
	defer n.genMu.RUnlock()
	return n.floor
}

// ClearAt empties the cache and raises the node's floor to gen (if it is
// higher): from then on a fill stamped with a generation below the floor
// is refused, since it may carry what the clear removed.
//
// First it revokes every read lease it granted (readlease.go), waiting for
// each holder's acknowledgement or for its lease to end; if ctx ends
// before, nothing is cleared and the error wraps ErrRevocation.
func (n *Node) ClearAt(ctx context.Context, gen uint64) error {
	return n.reads.revokeAll(ctx, func() { n.clearAt(gen) })
}

// clearAt is ClearAt without the revocation.
func (n *Node) clearAt(gen uint64) {
	n.genMu.Lock()
	defer n.genMu.Unlock()
	n.floor = max(n.floor, gen)
	n.clears++
	n.cache.Clear()
	n.clearFences()
}

// fill runs store unless gen is below the floor, holding the floor steady
// meanwhile. It reports whether store ran, and the floor.
func (n *Node) fill(gen uint64, store func()) (bool, uint64) {
	n.genMu.RLock()
	defer n.genMu.RUnlock()
	if gen < n.floor {
		return false, n.floor
	}
	store()
	return true, n.floor
}

// Epoch returns the epoch of the region map the node holds.
func (n *Node) Epoch() uint64 { return n.epoch.Load() }

// SetRegions installs a newer region map. The node then serves exactly the
// regions the map gives it, and drops the entries of every region it does
// not own, and of every region whose current ownership began after the
// epoch the node held (it may have lost and regained it meanwhile, and
// entries from the earlier ownership may be stale). A map with an epoch not
// newer than the held one is refused with ErrStaleRegions, except an equal
// identical map, which is accepted as a no-op. It returns the entries dropped.
//
// Having applied the map, it revokes the read leases on the regions it
// lost or reset and waits until their holders acknowledge or the leases
// end, or ctx ends (then the error wraps ErrRevocation; the map stays).
func (n *Node) SetRegions(ctx context.Context, m Regions) (int, error) {
	dropped, revoke, err := n.setRegions(m)
	if err != nil {
		return 0, err
	}
	return dropped, n.reads.revokeRegions(ctx, revoke, nil)
}

// setRegions installs m (see SetRegions) and returns the entries dropped
// and the regions whose read leases must be revoked.
func (n *Node) setRegions(m Regions) (int, uint16, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if m.Epoch < n.regions.Epoch || (m.Epoch == n.regions.Epoch && m != n.regions) {
		return 0, 0, fmt.Errorf("%w: got epoch %d, hold %d", ErrStaleRegions, m.Epoch, n.regions.Epoch)
	}
	if m == n.regions {
		return 0, 0, nil
	}
	var mask, reset uint16
	for r, owner := range m.Owners {
		if owner != n.id {
			continue
		}
		mask |= 1 << r
		if m.Since[r] > n.regions.Epoch || n.regions.Owners[r] != n.id {
			reset |= 1 << r
		}
	}
	held := uint16(0)
	for r, owner := range n.regions.Owners {
		if owner == n.id {
			held |= 1 << r
		}
	}
	// Lost regions handed off to their new owners keep their entries
	// for them (handoff.go).
	keep := n.handoff.keepMask(n.id, m, held&^mask)
	// The handoff's gate and touched sets exist before the node owns the
	// regions they guard.
	n.handoff.update(n.id, m, mask, reset, keep, n.clearCount())
	dropped := n.cache.setOwned(mask, reset, keep)
	n.regions = m
	n.epoch.Store(m.Epoch)
	n.log.Info("region map applied", "epoch", m.Epoch, "owned", region.Map(m.Owners).Owned(n.id), "dropped", dropped, "kept", regionList(keep))
	return dropped, (held &^ mask) | reset, nil
}
