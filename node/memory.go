package node

// The memory limit of a node process.
//
// A full cache is a large live heap that the cache itself churns: once the
// cache is full, every upload evicts about as many bytes as it brings. With
// the Go default (GOGC=100) the heap grows to twice the live data between
// collections and the runtime keeps the freed pages for reuse, so under
// eviction churn a 128 MB node settles near 2.4 bytes of RSS per cached
// byte (BENCHMARKS.md, "Memory under eviction churn"). A soft memory limit
// (runtime/debug.SetMemoryLimit) a little above what a full cache holds
// makes the collector run before the heap grows past it, and the runtime's
// scavenger return to the OS what the collections free beyond it. GOGC is
// left alone: a cache far from full collects as it would anyway, and the
// limit only binds as the cache fills.
//
// The limit must stay clear of the live heap, or the collector runs back to
// back (the runtime then caps it at half the CPU and the limit is exceeded
// anyway). The runtime aims the heap at 97 % of the limit less its own
// non-heap memory, so the margin must cover that 3 % before any room for
// garbage. Measured with 100 KB values under churn: in a 128 MB cache (live
// heap 137 MiB) a limit of 145 MiB ran 120 collections a second and served
// a quarter of the GETs, 150 MiB ran 10 a second at full speed; in a 1 GB
// cache (live 1,071 MiB) 1,114 MiB ran 30–40 a second and served a third
// of the GETs, 1,130 MiB ran 2 a second at full speed. So the limit is
// derived from the capacity, and never less than a margin above the heap
// the last collection found live (values much smaller than 100 KB also
// cost more per byte than the capacity allows for: an entry is about 200
// bytes beside its value).

import (
	"context"
	"log/slog"
	"runtime/debug"
	rtmetrics "runtime/metrics"
	"sync"
	"time"
)

// MemoryLimit returns the soft memory limit for a process whose cache holds
// up to capacity bytes of values and whose heap held live bytes at the end
// of the last collection: capacity + capacity/16 + 16 MiB (Go rounds a
// large value up to whole 8 KiB pages, +4 % for 100 KB values; the runtime,
// connections and the garbage between collections take the rest), but
// never less than live + live/24 + 12 MiB (the runtime keeps 3 % of the
// limit spare, and the collector needs room to work in).
func MemoryLimit(capacity, live int64) int64 {
	return max(capacity+capacity/16+16<<20, live+live/24+12<<20)
}

// MemoryGovernorConfig configures a MemoryGovernor. The zero value governs
// the process's real limit.
type MemoryGovernorConfig struct {
	// Interval is how often the live heap is read again. If zero, 1 s.
	Interval time.Duration
	// SetLimit sets the limit and returns the previous one. If nil,
	// runtime/debug.SetMemoryLimit.
	SetLimit func(int64) int64
	// LiveHeap returns the heap the last collection found live, in bytes.
	// If nil, runtime/metrics' /gc/heap/live:bytes.
	LiveHeap func() int64
}

// MemoryGovernor keeps the process's soft memory limit at MemoryLimit of a
// cache's capacity and of the live heap: the cache tells it of every
// capacity change (Cache.OnCapacity) as it happens, and Run reads the live
// heap every Interval. The limit belongs to the process, so a process runs
// at most one governor, and only if the cache is most of what it holds
// (memcache node, not a test binary running several nodes).
type MemoryGovernor struct {
	cfg MemoryGovernorConfig
	log *slog.Logger

	mu       sync.Mutex // guards the fields below
	capacity int64      // bytes; 0 until Govern
	limit    int64      // the limit last set; 0 if none was
	prev     int64      // the limit before the first one set, which Run restores
}

// NewMemoryGovernor returns a governor that sets nothing until Govern.
func NewMemoryGovernor(cfg MemoryGovernorConfig, log *slog.Logger) *MemoryGovernor {
	if cfg.Interval <= 0 {
		cfg.Interval = time.Second
	}
	if cfg.SetLimit == nil {
		cfg.SetLimit = debug.SetMemoryLimit
	}
	if cfg.LiveHeap == nil {
		cfg.LiveHeap = liveHeap
	}
	return &MemoryGovernor{cfg: cfg, log: log}
}

// Govern sets the limit for c's capacity now and follows its changes.
func (g *MemoryGovernor) Govern(c *Cache) { c.OnCapacity(g.setCapacity) }

// Run re-reads the live heap every Interval until ctx is done, then stops
// following c and restores the limit the process had before.
func (g *MemoryGovernor) Run(ctx context.Context, c *Cache) {
	t := time.NewTicker(g.cfg.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			c.OnCapacity(nil)
			g.mu.Lock()
			defer g.mu.Unlock()
			if g.limit != 0 {
				g.cfg.SetLimit(g.prev)
				g.limit = 0
			}
			return
		case <-t.C:
			g.mu.Lock()
			if g.capacity > 0 {
				g.update()
			}
			g.mu.Unlock()
		}
	}
}

// Limit returns the limit the governor last set (0 if none).
func (g *MemoryGovernor) Limit() int64 {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.limit
}

func (g *MemoryGovernor) setCapacity(capacity int64) {
	g.mu.Lock()
	defer g.mu.Unlock()
	changed := capacity != g.capacity
	g.capacity = capacity
	g.update()
	if changed {
		g.log.Info("memory limit set", "capacity_mb", capacity>>20, "limit_mb", g.limit>>20)
	}
}

// update sets the limit for the capacity and the live heap. Caller holds mu.
func (g *MemoryGovernor) update() {
	l := MemoryLimit(g.capacity, g.cfg.LiveHeap())
	if l == g.limit {
		return
	}
	prev := g.cfg.SetLimit(l)
	if g.limit == 0 {
		g.prev = prev
	}
	g.limit = l
}

// liveHeap returns the heap the last collection found live, in bytes.
func liveHeap() int64 {
	s := []rtmetrics.Sample{{Name: "/gc/heap/live:bytes"}}
	rtmetrics.Read(s)
	if s[0].Value.Kind() != rtmetrics.KindUint64 {
		return 0
	}
	return int64(s[0].Value.Uint64())
}
