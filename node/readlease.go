package node

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/memcache/memcache/internal/jsonhttp"
	"github.com/memcache/memcache/region"
)

// Read leases let a frontend serve a copy of a cached image from its own
// memory (its near-cache) without asking the node on every read, and stay
// linearizable. They follow Gray and Cheriton's leases with invalidation,
// as Redis's client-side caching and memcache at Facebook do:
//
//   - A holder (one frontend process, named by a random id) keeps a poll
//     open to the node: GET /leases/{holder}. The poll returns the
//     revocations queued for the holder; the next poll acknowledges them.
//   - A GET that names a holder (HeaderReadLease) is granted a lease on
//     the key, recorded before the value is read, for at most the node's
//     term and never past its own serving lease (lease.go); the answer
//     says for how long (HeaderReadLeaseMs). Only a holder whose poll is
//     open is granted one.
//   - Before the node changes what a key's copy may be — an upload's write,
//     an invalidation, a fence, a clear, a delete-all — it revokes every
//     lease on the key (or, for a clear, every lease) and waits until each
//     holder has acknowledged or its lease has run out; only then does it
//     make the change and answer. While it waits it grants no lease on
//     what it revokes. When the node loses regions it revokes theirs.
//   - A holder cut off from the node stops serving when its leases end:
//     the node's wait for it is bounded by the same leases.
//   - A restarted node knows nothing of the leases its previous run
//     granted: it makes no change until a whole term has passed since it
//     started (Config.ReadLeaseGrace).
//
// A fill (a read's write of a missing key) revokes nothing: it stores only
// what a committed row says, never newer than what an acknowledged upload
// wrote (that upload revoked) and never older (fences refuse it).

// Read lease headers on GET /cache/{key}.
const (
	// HeaderReadLease names the holder asking for a read lease.
	HeaderReadLease = "X-Memcache-Read-Lease"
	// HeaderReadLeaseMs is the lease granted, in milliseconds from when the
	// node read the value; absent if none was.
	HeaderReadLeaseMs = "X-Memcache-Read-Lease-Ms"
)

// MaxReadLease is the longest read lease term a node may be configured with.
const MaxReadLease = 30 * time.Second

// Limits that keep a holder from growing the node's tables without bound.
const (
	maxHolders      = 256  // holders polling one node
	maxQueued       = 1024 // revocations queued for one holder before they collapse into one "all"
	maxHolderIDLen  = 64
	holderGraceIdle = time.Second // a holder not polling for longer is not granted leases
)

// Revocation is one entry of a poll's answer: a key, a set of regions, or
// every lease the holder has from the node.
type Revocation struct {
	Seq     uint64 `json:"seq"`
	Key     string `json:"key,omitempty"`
	Regions uint16 `json:"regions,omitempty"`
	All     bool   `json:"all,omitempty"`
}

// Poll is the answer to GET /leases/{holder}.
type Poll struct {
	// Incarnation names this run of the node: a holder that sees it change
	// drops every copy it had from the node.
	Incarnation string       `json:"incarnation"`
	Revocations []Revocation `json:"revocations"`
	TermMs      int64        `json:"term_ms"`
}

type holder struct {
	queue    []Revocation // not yet acknowledged, by Seq
	acked    uint64       // the newest Seq acknowledged
	until    int64        // the latest end of a lease granted to it (ns since start)
	polling  int          // polls open
	lastPoll int64        // when its last poll ended (ns since start)
	wake     chan struct{}
}

// readLeases is a node's table of read leases. Times are nanoseconds since
// start on the monotonic clock.
type readLeases struct {
	term        time.Duration
	grace       time.Duration // no change until grace after start (a previous run's leases)
	start       time.Time
	incarnation string
	serving     func() (time.Duration, bool) // the node's serving lease (leaseRemaining)

	mu      sync.Mutex
	seq     uint64
	holders map[string]*holder
	keys    map[string]map[string]int64 // key -> holder -> lease end
	order   []grantExpiry               // by lease end, pruned from the front
	// What is being revoked: no lease is granted on it meanwhile.
	revokingKeys    map[string]int
	revokingRegions [region.Count]int
	revokingAll     int
	changed         chan struct{} // closed and replaced on every acknowledgement
}

type grantExpiry struct {
	key, holder string
	end         int64
}

func newReadLeases(term, grace time.Duration, serving func() (time.Duration, bool)) *readLeases {
	b := make([]byte, 8)
	rand.Read(b)
	return &readLeases{term: min(term, MaxReadLease), grace: grace, start: time.Now(), incarnation: hex.EncodeToString(b), serving: serving,
		holders: map[string]*holder{}, keys: map[string]map[string]int64{}, revokingKeys: map[string]int{},
		changed: make(chan struct{})}
}

func (rl *readLeases) now() int64 { return int64(time.Since(rl.start)) }

// grant records a lease for holder on key (of region r) and returns its
// term, or 0 if none is granted: leases are off, the holder has no poll
// open, what the key belongs to is being revoked, or the node's serving
// lease is about to end. Call it before reading the value.
func (rl *readLeases) grant(id, key string, r int) time.Duration {
	if rl == nil || rl.term <= 0 {
		return 0
	}
	term := rl.term
	if left, ok := rl.serving(); ok {
		// Never past the serving lease: once it lapses the managers may
		// give the region to another node, whose writes this one would
		// not revoke.
		term = min(term, left-left/10)
		if term < 10*time.Millisecond {
			return 0
		}
	}
	rl.mu.Lock()
	defer rl.mu.Unlock()
	h, ok := rl.holders[id]
	now := rl.now()
	if !ok || (h.polling == 0 && now-h.lastPoll > int64(holderGraceIdle)) {
		return 0
	}
	if rl.revokingAll > 0 || rl.revokingRegions[r] > 0 || rl.revokingKeys[key] > 0 {
		return 0
	}
	end := now + int64(term)
	hs := rl.keys[key]
	if hs == nil {
		hs = map[string]int64{}
		rl.keys[key] = hs
	}
	hs[id] = end
	h.until = max(h.until, end)
	rl.order = append(rl.order, grantExpiry{key, id, end})
	rl.prune(now)
	return term
}

// prune forgets leases that have ended. Caller holds mu.
func (rl *readLeases) prune(now int64) {
	i := 0
	for ; i < len(rl.order) && rl.order[i].end <= now; i++ {
		g := rl.order[i]
		if hs, ok := rl.keys[g.key]; ok && hs[g.holder] == g.end {
			delete(hs, g.holder)
			if len(hs) == 0 {
				delete(rl.keys, g.key)
			}
		}
	}
	if i > 0 {
		rl.order = append(rl.order[:0:0], rl.order[i:]...)
	}
}

// waiter is one holder a revocation waits for: until it acknowledges seq
// or its lease ends.
type waiter struct {
	id  string
	seq uint64
	end int64
}

// revokeKey revokes every lease on key and waits (see revoke), then runs
// change (nil: nothing) while still granting none, so no lease is granted
// on the copy change replaces.
func (rl *readLeases) revokeKey(ctx context.Context, key string, change func()) error {
	return rl.revoke(ctx, func() { rl.revokingKeys[key]++ }, func() {
		if rl.revokingKeys[key]--; rl.revokingKeys[key] == 0 {
			delete(rl.revokingKeys, key)
		}
	}, func(now int64) []waiter {
		var ws []waiter
		for id, end := range rl.keys[key] {
			if end > now {
				ws = append(ws, rl.enqueue(id, Revocation{Key: key}, end))
			}
		}
		delete(rl.keys, key)
		return ws
	}, change)
}

// revokeRegions revokes every lease on keys of the regions in mask.
func (rl *readLeases) revokeRegions(ctx context.Context, mask uint16, change func()) error {
	if mask == 0 {
		if change != nil {
			change()
		}
		return nil
	}
	each := func(d int) {
		for r := range region.Count {
			if mask&(1<<r) != 0 {
				rl.revokingRegions[r] += d
			}
		}
	}
	return rl.revoke(ctx, func() { each(1) }, func() { each(-1) }, func(now int64) []waiter {
		return rl.enqueueAll(Revocation{Regions: mask}, now)
	}, change)
}

// revokeAll revokes every lease.
func (rl *readLeases) revokeAll(ctx context.Context, change func()) error {
	return rl.revoke(ctx, func() { rl.revokingAll++ }, func() { rl.revokingAll-- }, func(now int64) []waiter {
		rl.keys, rl.order = map[string]map[string]int64{}, nil
		return rl.enqueueAll(Revocation{All: true}, now)
	}, change)
}

// enqueueAll queues rev for every holder with a lease that has not ended.
// Caller holds mu.
func (rl *readLeases) enqueueAll(rev Revocation, now int64) []waiter {
	var ws []waiter
	for id, h := range rl.holders {
		if h.until > now {
			ws = append(ws, rl.enqueue(id, rev, h.until))
		}
	}
	return ws
}

// enqueue queues rev for holder id and wakes its poll; a holder with too
// many queued is sent one "all" instead. Caller holds mu.
func (rl *readLeases) enqueue(id string, rev Revocation, end int64) waiter {
	h, ok := rl.holders[id]
	if !ok {
		return waiter{id: id, end: end} // gone: wait for the lease to end
	}
	rl.seq++
	rev.Seq = rl.seq
	if len(h.queue) >= maxQueued {
		h.queue = append(h.queue[:0], Revocation{Seq: rev.Seq, All: true})
	} else {
		h.queue = append(h.queue, rev)
	}
	select {
	case h.wake <- struct{}{}:
	default:
	}
	return waiter{id: id, seq: rev.Seq, end: end}
}

// ErrRevocation is returned when a change was not made because the leases
// on what it changes could not be revoked before the caller gave up.
var ErrRevocation = errors.New("read leases not revoked")

// revoke is the shape of every revocation: under mu, mark what is revoked
// (mark) and queue revocations (queue); wait, without mu, until every
// holder queued for has acknowledged or its lease has ended, and a whole
// term has passed since the node started; run change; unmark. If ctx ends
// first, change does not run.
func (rl *readLeases) revoke(ctx context.Context, mark, unmark func(), queue func(now int64) []waiter, change func()) error {
	if rl == nil || rl.term <= 0 {
		if change != nil {
			change()
		}
		return nil
	}
	rl.mu.Lock()
	mark()
	ws := queue(rl.now())
	rl.mu.Unlock()
	defer func() {
		rl.mu.Lock()
		unmark()
		rl.mu.Unlock()
	}()
	startGrace := int64(rl.grace)
	for {
		rl.mu.Lock()
		now := rl.now()
		next := int64(0) // the earliest time something may be due
		if now < startGrace {
			next = startGrace
		}
		pending := ws[:0]
		for _, w := range ws {
			h, ok := rl.holders[w.id]
			if now >= w.end || (ok && w.seq > 0 && h.acked >= w.seq) {
				continue
			}
			pending = append(pending, w)
			if next == 0 || w.end < next {
				next = w.end
			}
		}
		ws = pending
		changed := rl.changed
		rl.mu.Unlock()
		if next == 0 {
			break
		}
		t := time.NewTimer(time.Duration(next - now))
		select {
		case <-changed:
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%w: %d holders had not acknowledged (%v)", ErrRevocation, len(ws), ctx.Err())
		}
		t.Stop()
	}
	if change != nil {
		change()
	}
	return nil
}

// poll serves one poll of holder id that acknowledges ack: it returns the
// revocations still queued, waiting up to wait for one if none is.
func (rl *readLeases) poll(ctx context.Context, id string, ack uint64, wait time.Duration) (Poll, error) {
	rl.mu.Lock()
	h, ok := rl.holders[id]
	if !ok {
		rl.pruneHolders()
		if len(rl.holders) >= maxHolders {
			rl.mu.Unlock()
			return Poll{}, errTooManyHolders
		}
		h = &holder{wake: make(chan struct{}, 1)}
		rl.holders[id] = h
	}
	if ack > h.acked {
		h.acked = min(ack, rl.seq)
		i := 0
		for i < len(h.queue) && h.queue[i].Seq <= h.acked {
			i++
		}
		h.queue = h.queue[i:]
		close(rl.changed)
		rl.changed = make(chan struct{})
	}
	h.polling++
	rl.mu.Unlock()
	defer func() {
		rl.mu.Lock()
		h.polling--
		h.lastPoll = rl.now()
		rl.mu.Unlock()
	}()
	t := time.NewTimer(wait)
	defer t.Stop()
	for {
		rl.mu.Lock()
		if len(h.queue) > 0 {
			revs := append([]Revocation(nil), h.queue...)
			rl.mu.Unlock()
			return rl.answer(revs), nil
		}
		rl.mu.Unlock()
		select {
		case <-h.wake:
		case <-t.C:
			return rl.answer(nil), nil
		case <-ctx.Done():
			return Poll{}, ctx.Err()
		}
	}
}

func (rl *readLeases) answer(revs []Revocation) Poll {
	if revs == nil {
		revs = []Revocation{}
	}
	return Poll{Incarnation: rl.incarnation, Revocations: revs, TermMs: rl.term.Milliseconds()}
}

var errTooManyHolders = fmt.Errorf("this node already serves %d read lease holders", maxHolders)

// pruneHolders forgets holders that poll no more and whose leases have all
// ended. Caller holds mu.
func (rl *readLeases) pruneHolders() {
	now := rl.now()
	for id, h := range rl.holders {
		if h.polling == 0 && h.until <= now && now-h.lastPoll > int64(2*holderGraceIdle) {
			delete(rl.holders, id)
		}
	}
}

// validHolder reports whether id is a holder id: 1..64 letters, digits or '-'.
func validHolder(id string) bool {
	if id == "" || len(id) > maxHolderIDLen {
		return false
	}
	return strings.IndexFunc(id, func(c rune) bool {
		return !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-')
	}) < 0
}

// handlePoll serves GET /leases/{holder}?ack=N&hits=H: the revocations
// queued for the holder, after dropping those up to ack. hits is how many
// reads the holder served from its copies since its last poll: the node
// counts them as hits, so its miss rate stays the pool's.
func (n *Node) handlePoll(w http.ResponseWriter, r *http.Request) {
	if n.reads == nil {
		jsonhttp.Error(w, http.StatusNotFound, "read leases are off on node %s", n.id)
		return
	}
	id := strings.TrimPrefix(r.URL.Path, "/leases/")
	if !validHolder(id) {
		jsonhttp.Error(w, http.StatusBadRequest, "holder id must be 1..%d letters, digits or '-'", maxHolderIDLen)
		return
	}
	q := r.URL.Query()
	var ack, hits uint64
	for name, p := range map[string]*uint64{"ack": &ack, "hits": &hits} {
		if v := q.Get(name); v != "" {
			x, err := strconv.ParseUint(v, 10, 64)
			if err != nil {
				jsonhttp.Error(w, http.StatusBadRequest, "%s %q is not an unsigned integer", name, v)
				return
			}
			*p = x
		}
	}
	if hits > 1<<32 {
		jsonhttp.Error(w, http.StatusBadRequest, "hits %d is implausibly many for one poll", hits)
		return
	}
	n.nearHits.Add(hits)
	p, err := n.reads.poll(r.Context(), id, ack, n.pollWait)
	switch {
	case errors.Is(err, errTooManyHolders):
		w.Header().Set("Retry-After", "5")
		jsonhttp.Error(w, http.StatusTooManyRequests, "%v", err)
		return
	case err != nil:
		return // the caller left
	}
	jsonhttp.Write(w, http.StatusOK, p)
}
