package node

import (
	"cmp"
	"errors"
	"fmt"
	"hash/maphash"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/memcache/memcache/internal/pool"
	"github.com/memcache/memcache/region"
)

// Errors returned by the cache. The HTTP layer maps each to a status code.
var (
	// ErrEmptyKey is returned for a zero-length key.
	ErrEmptyKey = errors.New("key must not be empty")
	// ErrTooLarge is returned by Put for a value larger than the whole capacity; it is not cached.
	ErrTooLarge = errors.New("value is larger than the cache capacity")
	// ErrNotOwner is returned when the key's region is not owned by this cache.
	ErrNotOwner = errors.New("region of key is not owned by this node")
	// ErrBadConfig is returned for a capacity outside 1..1024 MB or an unknown policy.
	ErrBadConfig = pool.ErrBadConfig
)

// Item is a cached value with the metadata the frontend serves beside it.
// Value is shared with the cache and must not be modified.
type Item struct {
	Value       []byte
	ContentType string
	ETag        string
	// Version is the key index version of the value (0: unversioned). A
	// versioned Put never replaces a newer version.
	Version uint64
	// LeaseEnd and Source are a frontend near-cache's (unused by nodes):
	// when the read lease on the copy ends, in nanoseconds on the
	// frontend's monotonic clock, and the node that granted it.
	LeaseEnd int64
	Source   string
}

// numShards is the number of independently locked parts of the key space.
// Eviction inspects one tail per shard, so it stays O(numShards) = O(1).
const numShards = 32

// entry is one cached item. Fields other than the immutable key/item/region
// are guarded by the owning shard's mutex.
type entry struct {
	key    string
	item   Item
	region uint8
	stamp  uint64 // global access order; larger is more recent
	prev   *entry // LRU list: towards most recent
	next   *entry // LRU list: towards least recent
	idx    int    // position in shard.all, for uniform random eviction
}

// shard is a slice of the key space with its own lock, its own exact LRU list
// (ordered by stamp, because stamps are taken under the shard lock) and a
// dense slice of its entries for O(1) random choice.
type shard struct {
	mu    sync.Mutex
	items map[string]*entry
	head  entry // sentinel: head.next is the most recent, head.prev the least recent
	all   []*entry
}

func (s *shard) init() {
	s.items = make(map[string]*entry)
	s.head.next, s.head.prev = &s.head, &s.head
}

func (s *shard) pushFront(e *entry) {
	e.prev, e.next = &s.head, s.head.next
	s.head.next.prev = e
	s.head.next = e
}

func (s *shard) unlink(e *entry) {
	e.prev.next = e.next
	e.next.prev = e.prev
	e.prev, e.next = nil, nil
}

// lru returns the least recently used entry of s, or nil. Caller holds s.mu.
func (s *shard) lru() *entry {
	if s.head.prev == &s.head {
		return nil
	}
	return s.head.prev
}

// add inserts e as the most recent entry. Caller holds s.mu.
func (s *shard) add(e *entry) {
	s.items[e.key] = e
	s.pushFront(e)
	e.idx = len(s.all)
	s.all = append(s.all, e)
}

// remove takes e out of every structure of s. Caller holds s.mu.
func (s *shard) remove(e *entry) {
	delete(s.items, e.key)
	s.unlink(e)
	last := s.all[len(s.all)-1]
	s.all[e.idx] = last
	last.idx = e.idx
	s.all[len(s.all)-1] = nil
	s.all = s.all[:len(s.all)-1]
}

// Cache is an in-memory cache of image bytes bounded by a byte capacity.
//
// Design: keys are spread over numShards shards, each with its own mutex, so
// GETs of different keys do not contend on one lock. Each access takes a
// stamp from a global atomic clock while holding the shard lock; each shard's
// list is therefore ordered by stamp, and the globally least recently used
// entry is the shard tail with the smallest stamp. Writers (Put, eviction,
// config and region changes) are serialised by writeMu, which is what makes
// the byte total never exceed the capacity: room is made before bytes are
// added, and only writers add bytes.
//
// The cache also knows which of the 16 regions it owns: it refuses keys of
// other regions and drops a region's entries when it loses the region.
type Cache struct {
	seed   maphash.Seed
	shards [numShards]shard
	clock  atomic.Uint64

	used     atomic.Int64  // bytes of values currently cached
	count    atomic.Int64  // entries currently cached
	capacity atomic.Int64  // bytes
	policy   atomic.Value  // Policy
	owned    atomic.Uint32 // bit r set: region r is owned

	hits      atomic.Uint64
	misses    atomic.Uint64
	evictions atomic.Uint64

	writeMu    sync.Mutex  // serialises every operation that adds bytes or evicts
	onCapacity func(int64) // called on every capacity change; guarded by writeMu
}

// NewCache returns an empty cache with configuration cfg that owns every region.
func NewCache(cfg pool.CacheConfig) (*Cache, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	c := &Cache{seed: maphash.MakeSeed()}
	for i := range c.shards {
		c.shards[i].init()
	}
	c.capacity.Store(int64(cfg.CapacityMB) << 20)
	c.policy.Store(cfg.Policy)
	c.owned.Store(1<<region.Count - 1)
	return c, nil
}

func (c *Cache) shardOf(key string) *shard {
	return &c.shards[maphash.String(c.seed, key)%numShards]
}

// Get returns the item cached under key and marks it most recently used.
// It counts a hit or a miss. The returned value is not copied.
// It returns ErrNotOwner (and counts nothing) if the key's region is not owned.
func (c *Cache) Get(key string) (Item, bool, error) { return c.get(key, true) }

// get is Get, counting the hit or miss only if count is set (the caller
// counts it once it knows the outcome: a miss may yet be served from a
// region's previous owner, see handoff.go).
func (c *Cache) get(key string, count bool) (Item, bool, error) {
	if key == "" {
		return Item{}, false, ErrEmptyKey
	}
	if !c.Owns(region.Of(key)) {
		return Item{}, false, ErrNotOwner
	}
	s := c.shardOf(key)
	s.mu.Lock()
	e, ok := s.items[key]
	if ok {
		s.unlink(e)
		s.pushFront(e)
		e.stamp = c.clock.Add(1)
	}
	s.mu.Unlock()
	if !ok {
		if count {
			c.misses.Add(1)
		}
		return Item{}, false, nil
	}
	if count {
		c.hits.Add(1)
	}
	return e.item, true, nil
}

// count counts a GET's outcome that get left uncounted.
func (c *Cache) countGet(hit bool) {
	if hit {
		c.hits.Add(1)
	} else {
		c.misses.Add(1)
	}
}

// peek returns the item cached under key, owned region or not, without
// counting or refreshing it: how a previous owner reads a region it hands
// off.
func (c *Cache) peek(key string) (Item, bool) {
	s := c.shardOf(key)
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.items[key]
	if !ok {
		return Item{}, false
	}
	return e.item, true
}

// handoffEntry is an entry as a region's previous owner hands it off.
type handoffEntry struct {
	Key  string
	Item Item
}

// export returns the entries of region r, most recently used first, as
// many as fit in budget bytes of values (an entry that does not fit is
// skipped for smaller, colder ones).
func (c *Cache) export(r int, budget int64) []handoffEntry {
	type ranked struct {
		stamp uint64
		handoffEntry
	}
	var all []ranked
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.Lock()
		for _, e := range s.all {
			if int(e.region) == r {
				all = append(all, ranked{e.stamp, handoffEntry{e.key, e.item}})
			}
		}
		s.mu.Unlock()
	}
	slices.SortFunc(all, func(a, b ranked) int { return cmp.Compare(b.stamp, a.stamp) })
	out := make([]handoffEntry, 0, len(all))
	for _, e := range all {
		if size := int64(len(e.Item.Value)); size <= budget {
			budget -= size
			out = append(out, e.handoffEntry)
		}
	}
	return out
}

// Put caches item under key, replacing any previous value (but a newer
// version, when item is versioned) and evicting entries by the current
// policy until it fits. The cache keeps item.Value
// without copying it; the caller must not modify it afterwards.
func (c *Cache) Put(key string, item Item) error {
	_, err := c.put(key, item, false)
	return err
}

// Add caches item under key only if key is not cached, and reports whether
// it did. It is how a read fills the cache: it never replaces a value that
// an upload stored meanwhile.
func (c *Cache) Add(key string, item Item) (bool, error) {
	return c.put(key, item, true)
}

func (c *Cache) put(key string, item Item, onlyIfAbsent bool) (bool, error) {
	if key == "" {
		return false, ErrEmptyKey
	}
	size := int64(len(item.Value))
	r := region.Of(key)
	c.writeMu.Lock()
	defer c.writeMu.Unlock()
	if size > c.capacity.Load() {
		return false, fmt.Errorf("%w: %d bytes > %d bytes", ErrTooLarge, size, c.capacity.Load())
	}
	if !c.Owns(r) {
		return false, ErrNotOwner
	}
	s := c.shardOf(key)
	s.mu.Lock()
	if old, ok := s.items[key]; ok && (onlyIfAbsent || (item.Version > 0 && old.item.Version > item.Version)) {
		s.mu.Unlock()
		return false, nil
	}
	if old, ok := s.items[key]; ok {
		s.remove(old)
		c.used.Add(-int64(len(old.item.Value)))
		c.count.Add(-1)
	}
	s.mu.Unlock()
	for c.used.Load()+size > c.capacity.Load() {
		if !c.evictOne() {
			break // nothing left to evict; size <= capacity, so it fits now
		}
	}
	e := &entry{key: key, item: item, region: uint8(r)}
	s.mu.Lock()
	e.stamp = c.clock.Add(1)
	s.add(e)
	c.used.Add(size)
	c.count.Add(1)
	s.mu.Unlock()
	return true, nil
}

// Delete removes key and reports whether it was cached.
func (c *Cache) Delete(key string) bool {
	s := c.shardOf(key)
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.items[key]
	if ok {
		s.remove(e)
		c.used.Add(-int64(len(e.item.Value)))
		c.count.Add(-1)
	}
	return ok
}

// DeleteOlder removes key if its cached version is older than version
// (or unversioned), and reports whether it did.
func (c *Cache) DeleteOlder(key string, version uint64) bool {
	s := c.shardOf(key)
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.items[key]
	if !ok || e.item.Version >= version {
		return false
	}
	s.remove(e)
	c.used.Add(-int64(len(e.item.Value)))
	c.count.Add(-1)
	return true
}

// Clear removes every entry.
func (c *Cache) Clear() {
	c.writeMu.Lock()
	defer c.writeMu.Unlock()
	c.dropWhere(func(*entry) bool { return true })
}

// evictOne removes one entry chosen by the current policy and reports whether
// it found one. Caller holds writeMu.
func (c *Cache) evictOne() bool {
	var ok bool
	if c.Policy() == pool.RR {
		ok = c.evictRandom()
	} else {
		ok = c.evictLRU()
	}
	if ok {
		c.evictions.Add(1)
	}
	return ok
}

// evictLRU removes the entry with the globally smallest stamp. A concurrent
// Get may refresh the chosen entry between the scan and the removal; the
// scan is then repeated, so the evicted entry is the least recently used
// one at the moment of removal.
func (c *Cache) evictLRU() bool {
	for {
		var (
			victim *entry
			vs     *shard
			stamp  uint64
		)
		for i := range c.shards {
			s := &c.shards[i]
			s.mu.Lock()
			if e := s.lru(); e != nil && (victim == nil || e.stamp < stamp) {
				victim, vs, stamp = e, s, e.stamp
			}
			s.mu.Unlock()
		}
		if victim == nil {
			return false
		}
		vs.mu.Lock()
		if vs.lru() == victim && victim.stamp == stamp {
			vs.remove(victim)
			c.used.Add(-int64(len(victim.item.Value)))
			c.count.Add(-1)
			vs.mu.Unlock()
			return true
		}
		vs.mu.Unlock()
	}
}

// evictRandom removes an entry chosen uniformly among all cached entries:
// it draws an index over the total and walks the shards to it. Shard sizes
// only shrink concurrently (writers are excluded), so a draw that lands past
// a shard that shrank is simply redrawn.
func (c *Cache) evictRandom() bool {
	for {
		var sizes [numShards]int
		total := 0
		for i := range c.shards {
			s := &c.shards[i]
			s.mu.Lock()
			sizes[i] = len(s.all)
			s.mu.Unlock()
			total += sizes[i]
		}
		if total == 0 {
			return false
		}
		n := rand.IntN(total)
		i := 0
		for n >= sizes[i] {
			n -= sizes[i]
			i++
		}
		s := &c.shards[i]
		s.mu.Lock()
		if len(s.all) == sizes[i] {
			e := s.all[n]
			s.remove(e)
			c.used.Add(-int64(len(e.item.Value)))
			c.count.Add(-1)
			s.mu.Unlock()
			return true
		}
		s.mu.Unlock()
	}
}

// dropWhere removes every entry for which drop returns true and returns how
// many it removed. Caller holds writeMu.
func (c *Cache) dropWhere(drop func(*entry) bool) int {
	n := 0
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.Lock()
		for j := len(s.all) - 1; j >= 0; j-- {
			if e := s.all[j]; drop(e) {
				s.remove(e)
				c.used.Add(-int64(len(e.item.Value)))
				c.count.Add(-1)
				n++
			}
		}
		s.mu.Unlock()
	}
	return n
}

// SetConfig applies cfg live: a policy change keeps every entry, a smaller
// capacity evicts by the new policy until the entries fit.
func (c *Cache) SetConfig(cfg pool.CacheConfig) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	c.writeMu.Lock()
	defer c.writeMu.Unlock()
	c.policy.Store(cfg.Policy)
	capacity := int64(cfg.CapacityMB) << 20
	grow := capacity > c.capacity.Load()
	if grow && c.onCapacity != nil {
		c.onCapacity(capacity) // before the cache may hold more
	}
	changed := capacity != c.capacity.Load()
	c.capacity.Store(capacity)
	for c.used.Load() > c.capacity.Load() && c.evictOne() {
	}
	if changed && !grow && c.onCapacity != nil {
		c.onCapacity(capacity) // once the cache holds less
	}
	return nil
}

// OnCapacity makes the cache call f with the capacity in bytes now and
// whenever SetConfig changes it: for a larger capacity before the cache may
// hold more, for a smaller one after it has evicted down to it. f runs
// under the lock that serialises writes, so it must be quick and must not
// call the cache. A later call replaces f; nil removes it. It is how the
// process's memory limit follows the capacity (see MemoryLimit).
func (c *Cache) OnCapacity(f func(capacity int64)) {
	c.writeMu.Lock()
	defer c.writeMu.Unlock()
	c.onCapacity = f
	if f != nil {
		f(c.capacity.Load())
	}
}

// Config returns the current configuration.
func (c *Cache) Config() pool.CacheConfig {
	return pool.CacheConfig{CapacityMB: int(c.capacity.Load() >> 20), Policy: c.Policy()}
}

// Policy returns the current replacement policy.
func (c *Cache) Policy() pool.Policy { return c.policy.Load().(pool.Policy) }

// Owns reports whether region r is owned.
func (c *Cache) Owns(r int) bool { return c.owned.Load()&(1<<r) != 0 }

// SetOwned makes the cache own exactly the regions set in mask and drops
// every entry of a region that is not owned or that is in reset (regions
// whose ownership was lost and regained since the caller last knew it).
// It returns the number of entries dropped.
func (c *Cache) SetOwned(mask, reset uint16) int { return c.setOwned(mask, reset, 0) }

// setOwned is SetOwned keeping the entries of the regions in keep that it
// no longer owns: a previous owner's, until it has handed them off. They
// stay out of reads and writes (the region is not owned), count against the
// capacity and may be evicted.
func (c *Cache) setOwned(mask, reset, keep uint16) int {
	c.writeMu.Lock()
	defer c.writeMu.Unlock()
	c.owned.Store(uint32(mask))
	drop := (^mask | reset) &^ (keep &^ mask)
	return c.dropWhere(func(e *entry) bool { return drop&(1<<e.region) != 0 })
}

// dropUnowned drops the entries of the regions in rs that the cache does
// not own (kept for a handoff that has ended) and returns how many.
func (c *Cache) dropUnowned(rs uint16) int {
	c.writeMu.Lock()
	defer c.writeMu.Unlock()
	drop := rs &^ uint16(c.owned.Load())
	if drop == 0 {
		return 0
	}
	return c.dropWhere(func(e *entry) bool { return drop&(1<<e.region) != 0 })
}

// Len returns the number of cached entries.
func (c *Cache) Len() int { return int(c.count.Load()) }

// Bytes returns the number of value bytes cached.
func (c *Cache) Bytes() int64 { return c.used.Load() }

// Capacity returns the capacity in bytes.
func (c *Cache) Capacity() int64 { return c.capacity.Load() }
