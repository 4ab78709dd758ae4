package frontend

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v5"

	"github.com/memcache/memcache/internal/pool"
	"github.com/memcache/memcache/node"
	"github.com/memcache/memcache/region"
)

// The near-cache: copies of popular images in the frontend's memory,
// served without a round trip to the owner node while the node's read lease
// on them holds (node/readlease.go). The frontend is one lease holder: it
// keeps a poll open to every pool member, on which the member sends the
// revocations it makes before a write, an invalidation, a clear, a
// delete-all or the loss of a region; the next poll acknowledges them,
// and only then does the node make the change. A copy is served only if
// its lease has not ended, measured from when the frontend sent the read
// (so it ends before the node's), and only if it came from the key's
// owner in the frontend's current view. Cut off from a node, the frontend
// asks it for no new lease and its copies from that node end with their
// leases. A copy whose lease ended is revalidated with the owner
// (If-None-Match, 304 with a new lease) on the next read.
//
// A revocation may overtake the answer to the read it revokes: each read
// that asks for a lease registers before it is sent, a revocation marks
// the reads it overtakes, and a marked read installs nothing.

// pollWait bounds a poll's wait for the node's answer beyond the node's own
// poll wait (node.Config.PollWait, 2 s by default).
const pollWait = 5 * time.Second

type near struct {
	holder string
	cache  *node.Cache
	nodes  *node.Client
	log    *slog.Logger
	start  time.Time // the monotonic clock of LeaseEnd

	mu       sync.Mutex // orders installs against revocations
	inflight map[string]*fetches
	allRev   uint64 // revocations of more than one key (all, regions)

	smu     sync.Mutex                         // guards ctx and changes to streams
	ctx     context.Context                    // streams run under it; nil until run
	streams atomic.Pointer[map[string]*stream] // by node base URL; replaced, never changed
	wg      sync.WaitGroup

	served atomic.Uint64 // reads answered from a copy under lease
}

// fetches counts a key's reads that asked for a lease and are in flight,
// and the key's revocations since the first of them began.
type fetches struct {
	n   int
	rev uint64
}

// stream is the frontend's poll of one node.
type stream struct {
	base   string
	up     atomic.Bool   // the last poll was answered: leases may be asked for
	hits   atomic.Uint64 // reads served from the node's copies, not yet reported
	cancel context.CancelFunc
}

func newNear(capacityMB int, nodes *node.Client, log *slog.Logger) *near {
	c, _ := node.NewCache(pool.CacheConfig{CapacityMB: min(capacityMB, pool.MaxCapacityMB), Policy: pool.LRU})
	b := make([]byte, 12)
	rand.Read(b)
	return &near{holder: "fe-" + hex.EncodeToString(b), cache: c, nodes: nodes, log: log, start: time.Now(),
		inflight: map[string]*fetches{}}
}

// stream returns the poll of the node at base, or nil.
func (n *near) stream(base string) *stream {
	if m := n.streams.Load(); m != nil {
		return (*m)[base]
	}
	return nil
}

func (n *near) now() int64 { return int64(time.Since(n.start)) }

// lookup returns the copy of key if it came from base (the key's owner in
// the current view), and whether its lease holds: then the read is
// answered from it (and counted), else the copy is revalidated.
func (n *near) lookup(key, base string) (item node.Item, held, leased bool) {
	item, ok, _ := n.cache.Get(key)
	if !ok || item.Source != base {
		return node.Item{}, false, false
	}
	if item.LeaseEnd <= n.now() {
		return item, true, false
	}
	n.served.Add(1)
	if s := n.stream(base); s != nil {
		s.hits.Add(1)
	}
	return item, true, true
}

// fetch is a read that asked for a lease.
type fetch struct {
	key         string
	rev, allRev uint64
	sent        int64
}

// begin registers a read of key about to ask base for a lease; it returns
// the holder to name, or "" (and a nil fetch) if base's poll is not up.
func (n *near) begin(key, base string) (string, *fetch) {
	s := n.stream(base)
	if s == nil || !s.up.Load() {
		return "", nil
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	fs := n.inflight[key]
	if fs == nil {
		fs = &fetches{}
		n.inflight[key] = fs
	}
	fs.n++
	return n.holder, &fetch{key: key, rev: fs.rev, allRev: n.allRev, sent: n.now()}
}

// end installs item (nil: nothing) as f's key's copy from base under a
// lease of lease from when f was sent, unless a revocation overtook f; and
// unregisters f.
func (n *near) end(f *fetch, base string, item *node.Item, lease time.Duration) {
	if f == nil {
		return
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	fs := n.inflight[f.key]
	if item != nil && lease > 0 && fs.rev == f.rev && n.allRev == f.allRev {
		it := *item
		// Ends a little before the node's lease, which began when the node
		// read the value (after f was sent).
		it.LeaseEnd = f.sent + int64(lease-lease/50-time.Millisecond)
		it.Source = base
		n.cache.Put(f.key, it)
	}
	if fs.n--; fs.n == 0 {
		delete(n.inflight, f.key)
	}
}

// keep stores a copy of key from base that has no lease: it is revalidated
// before use.
func (n *near) keep(key, base string, item node.Item) {
	n.mu.Lock()
	defer n.mu.Unlock()
	item.LeaseEnd, item.Source = 0, base
	n.cache.Put(key, item)
}

// drop removes key's copy (a read found it stale or missing at the node).
func (n *near) drop(key string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.cache.Delete(key)
}

// revoke applies one revocation from a node.
func (n *near) revoke(r node.Revocation) {
	n.mu.Lock()
	defer n.mu.Unlock()
	switch {
	case r.All:
		n.allRev++
		n.cache.Clear()
	case r.Regions != 0:
		n.allRev++
		n.cache.SetOwned(1<<region.Count-1, r.Regions)
	default:
		if fs := n.inflight[r.Key]; fs != nil {
			fs.rev++
		}
		n.cache.Delete(r.Key)
	}
}

// dropRegions removes the copies of the regions in mask (their owner
// changed in the frontend's view).
func (n *near) dropRegions(mask uint16) {
	if mask != 0 {
		n.revoke(node.Revocation{Regions: mask})
	}
}

// run lets streams start under ctx; it returns once ctx is done and every
// stream has stopped.
func (n *near) run(ctx context.Context) {
	n.smu.Lock()
	n.ctx = ctx
	n.smu.Unlock()
	<-ctx.Done()
	n.smu.Lock() // no stream starts after this
	n.ctx = nil
	n.smu.Unlock()
	n.wg.Wait()
}

// follow keeps a poll open to every member of the pool and none other.
func (n *near) follow(members []pool.Member) {
	n.smu.Lock()
	defer n.smu.Unlock()
	if n.ctx == nil {
		return
	}
	want := map[string]bool{}
	for _, m := range members {
		want[m.HTTP] = true
	}
	next := map[string]*stream{}
	if cur := n.streams.Load(); cur != nil {
		for base, s := range *cur {
			if want[base] {
				next[base] = s
			} else {
				s.cancel()
			}
		}
	}
	for base := range want {
		if next[base] != nil {
			continue
		}
		ctx, cancel := context.WithCancel(n.ctx)
		s := &stream{base: base, cancel: cancel}
		next[base] = s
		n.wg.Add(1)
		go func() {
			defer n.wg.Done()
			n.poll(ctx, s)
		}()
	}
	n.streams.Store(&next)
}

// poll polls s's node until ctx is done: it applies the revocations each
// answer carries and acknowledges them with the next poll, which also
// reports the reads served from the node's copies.
func (n *near) poll(ctx context.Context, s *stream) {
	defer s.up.Store(false)
	var ack uint64
	incarnation := ""
	b := &backoff.ExponentialBackOff{InitialInterval: 50 * time.Millisecond, RandomizationFactor: 0.5, Multiplier: 2, MaxInterval: 2 * time.Second}
	b.Reset()
	for ctx.Err() == nil {
		hits := s.hits.Swap(0)
		p, err := n.nodes.Poll(ctx, s.base, n.holder, ack, hits, pollWait)
		if err != nil {
			s.hits.Add(hits)
			if s.up.Swap(false) {
				n.log.Info("near-cache poll failed: no new leases from this node until it answers", "node", s.base, "err", err)
			}
			t := time.NewTimer(b.NextBackOff())
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
			continue
		}
		b.Reset()
		if p.Incarnation != incarnation {
			if incarnation != "" {
				n.revoke(node.Revocation{All: true}) // a new run of the node
			}
			incarnation, ack = p.Incarnation, 0
		}
		for _, r := range p.Revocations {
			n.revoke(r)
			ack = max(ack, r.Seq)
		}
		s.up.Store(true)
	}
}
