package node

// Warm handoff. When a resize moves region r from a running node G (the
// giver) to N (the receiver), the pool view names G in From[r], and N
// fills r from G instead of starting it empty:
//
//   - G, on applying the map that takes r away, stops owning r (no read or
//     write of r is served from then on) but keeps r's entries, evictable,
//     for HandoffTimeout plus a slack, or until N says it is done, or a
//     clear empties the cache.
//   - N, on applying the map that gives it r, asks G for r's entries, most
//     recently used first, up to its share of its capacity in bytes
//     (GET /handoff/{r}), for at most HandoffTimeout; then it tells G it is
//     done (DELETE /handoff/{r}). A read that misses r on N meanwhile is
//     looked up at G (GET /handoff/{r}?key=), installed and answered as a
//     hit: one GET, counted once, at N.
//
// Until G holds the map that moved r, N neither serves r nor takes writes
// or fences of it (503; an invalidation is taken): G may still serve r to
// frontends on the old map, and a write N took meanwhile would leave G's copy
// stale for them. N learns it from G's answer to a probe
// (GET /handoff/{r}?fences=1), which also carries G's fences of r: N raises
// them before it serves r, so a fill of a row read before an upload that
// went through G is refused here too, and a copy it installs replaces an
// older fill. If G refuses the connection, nothing listens at its address
// and r is served at once; if G does not answer, once a serving-lease term
// has passed since N applied the map: by then G has either applied it (a
// lease renewal brings the current map) or stopped serving (its lease has
// lapsed). This closes the window in which a region had two servers.
//
// What N installs is a fill: it never replaces a newer value. G answers
// only once it holds a map at least as new as the one that moved r (from
// then on it refuses every write of r, so its copies can only age by
// writes that reach N) and only once it has cleared at least as far as N
// (the cache generation): older copies are what a clear removed. N
// installs a copy only if, since it began receiving r, no write, fence or
// invalidation of that key has reached it (the touched set), no clear has
// (a clear or delete-all during a handoff wins), and the key's fence lets a
// fill in. A giver that stops answering ends the handoff: the region
// stays as filled so far, and reads load the rest from the stores.

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/cenkalti/backoff/v5"
	"github.com/memcache/memcache/internal/jsonhttp"
	"github.com/memcache/memcache/internal/pool"
	"github.com/memcache/memcache/region"
)

// DefaultHandoffTimeout is Config.HandoffTimeout's default.
const DefaultHandoffTimeout = 30 * time.Second

const (
	// giveSlack is how much longer than the handoff timeout a giver keeps
	// a region: the receiver may apply the map after it did.
	giveSlack = 10 * time.Second
	// warmReadTimeout bounds a read's lookup at the previous owner.
	warmReadTimeout = 250 * time.Millisecond
	// handoffMediaType is the body of GET /handoff/{r}: frames of
	// uvarint-prefixed key, content type, ETag, then the version as a
	// uvarint and the uvarint-prefixed value.
	handoffMediaType = "application/x-memcache-handoff"
	// maxFrameKey bounds a frame's key, content type and ETag.
	maxFrameKey = 64 << 10
)

// HandoffStatus is a node's handoffs in progress (GET /handoff, and in
// its statistics).
type HandoffStatus struct {
	// Receiving are the regions the node is filling from their previous
	// owners.
	Receiving []HandoffRegion `json:"receiving"`
	// Giving are the regions the node keeps for their new owners.
	Giving []HandoffRegion `json:"giving"`
	// Waiting are the regions the node owns but does not serve yet: their
	// previous owner has not been seen holding the map that moved them.
	Waiting []int `json:"waiting"`
	// Entries and Bytes the node has installed from previous owners,
	// WarmReads the reads it answered from them, Refused the copies it
	// kept out (a newer write, a clear, a fence), since it started.
	Entries   uint64 `json:"entries"`
	Bytes     uint64 `json:"bytes"`
	WarmReads uint64 `json:"warm_reads"`
	Refused   uint64 `json:"refused"`
}

// HandoffRegion is one region being handed off.
type HandoffRegion struct {
	Region int    `json:"region"`
	Peer   string `json:"peer"`  // the other node's id
	Epoch  uint64 `json:"epoch"` // the map that moved the region
	// State is the receiver's: "waiting" (for the giver to hold the map),
	// "copying"; the giver's: "kept".
	State   string    `json:"state"`
	Entries uint64    `json:"entries,omitempty"`
	Bytes   uint64    `json:"bytes,omitempty"`
	Until   time.Time `json:"until"`
}

// Pending reports whether any handoff is in progress.
func (s HandoffStatus) Pending() bool { return len(s.Receiving)+len(s.Giving) > 0 }

type giving struct {
	to    string
	epoch uint64
	until time.Time
}

type receiving struct {
	from    pool.Member
	epoch   uint64 // Since[r]: the giver must hold at least this map
	clears  uint64 // the node's clears when it began
	until   time.Time
	touched map[string]struct{}
	started bool
	copying bool
	entries uint64
	bytes   uint64
}

type pendingRegion struct {
	from    string
	epoch   uint64
	applied time.Time
}

// handoffs is a node's handoff state. Lock order: Node.genMu, fences.mu,
// handoffs.mu, Cache.writeMu.
type handoffs struct {
	timeout time.Duration // 0: off
	client  *http.Client  // nil: the node receives nothing
	wake    chan struct{}

	mu        sync.Mutex
	giving    [region.Count]*giving
	receiving [region.Count]*receiving
	recvMask  atomic.Uint32 // regions in receiving, for the read path
	// pending[r] is set from the map that gives the node region r from a
	// running previous owner until that owner is known to hold it (see
	// the design note); pendMask mirrors it for the request path.
	pending  [region.Count]*pendingRegion
	pendMask atomic.Uint32

	entries, bytes, reads, refused atomic.Uint64
}

func newHandoffs(timeout time.Duration, client *http.Client) *handoffs {
	if timeout < 0 {
		timeout, client = 0, nil
	}
	return &handoffs{timeout: timeout, client: client, wake: make(chan struct{}, 1)}
}

// keepMask returns the regions of lost that the node keeps for their new
// owners under m.
func (h *handoffs) keepMask(self string, m Regions, lost uint16) uint16 {
	if h.timeout == 0 {
		return 0
	}
	var keep uint16
	for r := range region.Count {
		if lost&(1<<r) != 0 && m.From[r].ID == self {
			keep |= 1 << r
		}
	}
	return keep
}

// update records the handoffs m starts: mask is what the node owns under
// it, reset the regions whose ownership is new, keep what it keeps for new
// owners. A region the node no longer owns, or owns anew, ends what it was
// receiving; a region it owns again ends what it was giving.
func (h *handoffs) update(self string, m Regions, mask, reset, keep uint16, clears uint64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	now := time.Now()
	for r := range region.Count {
		bit := uint16(1) << r
		if mask&bit != 0 {
			h.giving[r] = nil
		}
		if keep&bit != 0 {
			h.giving[r] = &giving{to: m.Owners[r], epoch: m.Since[r], until: now.Add(h.timeout + giveSlack)}
		}
		if mask&bit == 0 || reset&bit != 0 {
			h.receiving[r] = nil
			h.pending[r] = nil
		}
		if from := m.From[r]; mask&bit != 0 && reset&bit != 0 && h.client != nil && from.ID != "" && from.ID != self {
			h.receiving[r] = &receiving{from: from, epoch: m.Since[r], clears: clears, until: now.Add(h.timeout), touched: map[string]struct{}{}}
			h.pending[r] = &pendingRegion{from: from.ID, epoch: m.Since[r], applied: now}
		}
	}
	h.storeMask()
	select {
	case h.wake <- struct{}{}:
	default:
	}
}

// storeMask publishes which regions are receiving. Caller holds mu.
func (h *handoffs) storeMask() {
	var m uint32
	for r, rc := range h.receiving {
		if rc != nil {
			m |= 1 << r
		}
	}
	h.recvMask.Store(m)
	var p uint32
	for r, pr := range h.pending {
		if pr != nil {
			p |= 1 << r
		}
	}
	h.pendMask.Store(p)
}

// confirm lets the node serve region r, which it receives as rc: the
// previous owner holds the map that moved it (see the design note).
func (h *handoffs) confirm(r int, rc *receiving) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if pr := h.pending[r]; pr != nil && pr.epoch == rc.epoch && pr.from == rc.from.ID {
		h.pending[r] = nil
		h.storeMask()
	}
}

// pendingRegion reports whether region r may not be served yet, and from
// whom it is moving: its previous owner has not been seen holding the map
// that moved it, and less than term has passed since the node applied it
// (a serving-lease term; see Node.pendingTerm).
func (h *handoffs) pendingFrom(r int, term time.Duration) (string, bool) {
	if h.pendMask.Load()&(1<<r) == 0 {
		return "", false
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	pr := h.pending[r]
	if pr == nil {
		return "", false
	}
	if time.Since(pr.applied) >= term {
		h.pending[r] = nil
		h.storeMask()
		return "", false
	}
	return pr.from, true
}

// receivingRegion reports whether region r is being received.
func (h *handoffs) receivingRegion(r int) bool { return h.recvMask.Load()&(1<<r) != 0 }

// touch records a write, fence or invalidation of key: a copy from the
// previous owner must not take its place.
func (h *handoffs) touch(key string) {
	r := region.Of(key)
	if !h.receivingRegion(r) {
		return
	}
	h.mu.Lock()
	if rc := h.receiving[r]; rc != nil {
		rc.touched[key] = struct{}{}
	}
	h.mu.Unlock()
}

// finish ends the receive rc of region r, if it is still the current one.
func (h *handoffs) finish(r int, rc *receiving) {
	h.mu.Lock()
	if h.receiving[r] == rc {
		h.receiving[r] = nil
		h.storeMask()
	}
	h.mu.Unlock()
}

// current returns the receive of region r, nil if none.
func (h *handoffs) current(r int) *receiving {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.receiving[r]
}

// Handoffs returns the node's handoffs in progress.
func (n *Node) Handoffs() HandoffStatus {
	h := n.handoff
	h.mu.Lock()
	defer h.mu.Unlock()
	st := HandoffStatus{Receiving: []HandoffRegion{}, Giving: []HandoffRegion{}, Waiting: []int{},
		Entries: h.entries.Load(), Bytes: h.bytes.Load(), WarmReads: h.reads.Load(), Refused: h.refused.Load()}
	for r, rc := range h.receiving {
		if rc == nil {
			continue
		}
		state := "waiting"
		if rc.copying {
			state = "copying"
		}
		st.Receiving = append(st.Receiving, HandoffRegion{Region: r, Peer: rc.from.ID, Epoch: rc.epoch, State: state, Entries: rc.entries, Bytes: rc.bytes, Until: rc.until})
	}
	for r, g := range h.giving {
		if g != nil {
			st.Giving = append(st.Giving, HandoffRegion{Region: r, Peer: g.to, Epoch: g.epoch, State: "kept", Until: g.until})
		}
	}
	term := n.pendingTerm()
	for r, pr := range h.pending {
		if pr != nil && time.Since(pr.applied) < term {
			st.Waiting = append(st.Waiting, r)
		}
	}
	return st
}

// clears returns how many times the node has cleared its cache.
func (n *Node) clearCount() uint64 {
	n.genMu.RLock()
	defer n.genMu.RUnlock()
	return n.clears
}

// runHandoffs starts the receives update records and drops kept regions
// whose time is up, until ctx is done; then it waits for the receives.
func (n *Node) runHandoffs(ctx context.Context) {
	h := n.handoff
	var wg sync.WaitGroup
	defer wg.Wait()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-h.wake:
		case <-tick.C:
		}
		now := time.Now()
		var expired uint16
		byGiver := map[pool.Member][]int{}
		h.mu.Lock()
		for r, g := range h.giving {
			if g != nil && now.After(g.until) {
				h.giving[r] = nil
				expired |= 1 << r
			}
		}
		for r, rc := range h.receiving {
			if rc != nil && !rc.started {
				rc.started = true
				byGiver[rc.from] = append(byGiver[rc.from], r)
			}
		}
		h.mu.Unlock()
		if expired != 0 {
			dropped := n.cache.dropUnowned(expired)
			n.log.Info("handoff: dropped regions kept for their new owners", "regions", regionList(expired), "entries", dropped, "why", "timeout")
		}
		for from, rs := range byGiver {
			wg.Go(func() { n.receiveFrom(ctx, from, rs) })
		}
	}
}

// receiveFrom fills the regions rs from their previous owner, one after
// the other. A giver that cannot be reached ends them all.
func (n *Node) receiveFrom(ctx context.Context, from pool.Member, rs []int) {
	h := n.handoff
	dead := false
	// First every region's probe: the previous owner's fences of it, and
	// whether it holds the map (the region is served here from then on).
	for _, r := range rs {
		rc := h.current(r)
		if rc == nil || rc.from != from || dead {
			continue
		}
		if err := n.probe(ctx, r, rc); err != nil {
			if errors.Is(err, syscall.ECONNREFUSED) {
				n.log.Info("handoff: the previous owner is not listening; the region is served at once", "region", r, "from", from.ID)
				continue // the next probes are refused as fast
			}
			n.log.Warn("handoff: the previous owner did not answer the probe; the region is served after a lease term", "region", r, "from", from.ID, "err", err)
			dead = ctx.Err() == nil
		}
	}
	for _, r := range rs {
		rc := h.current(r)
		if rc == nil || rc.from != from {
			continue
		}
		if dead {
			h.finish(r, rc)
			continue
		}
		start := time.Now()
		err := n.receive(ctx, r, rc)
		h.finish(r, rc)
		h.mu.Lock()
		entries, bytes := rc.entries, rc.bytes
		h.mu.Unlock()
		log := n.log.With("region", r, "from", from.ID, "epoch", rc.epoch, "entries", entries, "bytes", bytes, "took", time.Since(start).Round(time.Millisecond))
		switch {
		case err == nil:
			log.Info("handoff: region received")
		case errors.Is(err, errNothingKept):
			log.Info("handoff: the previous owner kept nothing of the region")
		default:
			log.Warn("handoff: region not (fully) received; the rest loads from the stores", "err", err)
			var se *handoffStatusError
			dead = !errors.As(err, &se) && ctx.Err() == nil
		}
		if ctx.Err() != nil {
			return
		}
		if !dead {
			n.handoffDone(ctx, from, r, rc.epoch)
		}
	}
}

var errNothingKept = errors.New("nothing kept")

type handoffStatusError struct {
	code int
	msg  string
}

func (e *handoffStatusError) Error() string { return fmt.Sprintf("%d %s", e.code, e.msg) }

// receive copies region r from rc.from until done, rc's time is up, the
// receive ends (the region moved again) or ctx is done.
func (n *Node) receive(ctx context.Context, r int, rc *receiving) error {
	err := untilCaughtUp(ctx, rc.until, 50*time.Millisecond, time.Second, func(ctx context.Context) error {
		owned := bits.OnesCount32(n.cache.owned.Load())
		return n.pull(ctx, r, rc, n.cache.Capacity()/int64(max(owned, 1)))
	})
	if se := (*handoffStatusError)(nil); errors.As(err, &se) && se.code == http.StatusNotFound {
		return errNothingKept
	}
	return err
}

// probe asks region r's previous owner for its fences of r once it holds
// the map that moved r (until rc's time is up), raises them here, and then
// lets the node serve r: no fill read before an upload that went through
// the previous owner can then be stored here (the fence refuses it, or
// drops it if it came first). A previous owner that refuses the connection
// serves nobody at that address: r is served at once.
func (n *Node) probe(ctx context.Context, r int, rc *receiving) error {
	// Short pauses: the region is not served meanwhile, and the previous
	// owner usually applies the map within milliseconds.
	err := untilCaughtUp(ctx, rc.until, 10*time.Millisecond, 100*time.Millisecond, func(ctx context.Context) error {
		return n.fetchFences(ctx, r, rc)
	})
	if err == nil || errors.Is(err, syscall.ECONNREFUSED) {
		n.handoff.confirm(r, rc)
	}
	return err
}

// untilCaughtUp calls attempt until it returns anything but the previous
// owner's 409 (it does not hold the map, or has not cleared as far, yet),
// pausing with jittered exponential backoff from first up to most, until
// the deadline.
func untilCaughtUp(ctx context.Context, deadline time.Time, first, most time.Duration, attempt func(context.Context) error) error {
	ctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	b := &backoff.ExponentialBackOff{InitialInterval: first, RandomizationFactor: 0.5, Multiplier: 2, MaxInterval: most}
	_, err := backoff.Retry(ctx, func() (struct{}, error) {
		err := attempt(ctx)
		if se := (*handoffStatusError)(nil); err != nil && !(errors.As(err, &se) && se.code == http.StatusConflict) {
			return struct{}{}, backoff.Permanent(err)
		}
		return struct{}{}, err
	}, backoff.WithBackOff(b), backoff.WithMaxElapsedTime(0))
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("the previous owner did not catch up in time: %w", err)
	}
	return err
}

// fetchFences makes one GET /handoff/{r}?fences=1 and raises the fences it
// streams.
func (n *Node) fetchFences(ctx context.Context, r int, rc *receiving) error {
	body, err := n.openHandoff(ctx, r, rc, url.Values{"fences": {"1"}})
	if err != nil {
		return err
	}
	defer body.Close()
	br := bufio.NewReader(body)
	for {
		key, it, err := readFrame(br, 0)
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("reading the fences of region %d: %w", r, err)
		}
		if region.Of(key) == r && it.Version > 0 {
			n.raise(key, it.Version)
		}
	}
}

// pendingTerm is how long a region moving here from a running previous
// owner waits for it at most (handoffs.pendingFrom): a serving-lease term
// if the node follows the managers, else the handoff timeout.
func (n *Node) pendingTerm() time.Duration {
	if t := time.Duration(n.leaseTerm.Load()); t > 0 {
		return t
	}
	return n.handoff.timeout
}

// refusePending answers 503 for region r while it is moving here and its
// previous owner may still serve it (see the design note), and reports
// whether it did.
func (n *Node) refusePending(w http.ResponseWriter, r int) bool {
	from, ok := n.handoff.pendingFrom(r, n.pendingTerm())
	if !ok {
		return false
	}
	w.Header().Set("Retry-After", "1")
	jsonhttp.Error(w, http.StatusServiceUnavailable, "region %d is moving to node %s from %s, which may still serve it: not served until %s holds the new map", r, n.id, from, from)
	return true
}

// handoffURL is the URL of region r's handoff at the node at base.
func (n *Node) handoffURL(base string, r int, epoch uint64, q url.Values) string {
	if q == nil {
		q = url.Values{}
	}
	q.Set("epoch", strconv.FormatUint(epoch, 10))
	q.Set("gen", strconv.FormatUint(n.Floor(), 10))
	return base + "/handoff/" + strconv.Itoa(r) + "?" + q.Encode()
}

// openHandoff makes one GET /handoff/{r} with query q at region r's
// previous owner and returns the stream it answers, or a
// *handoffStatusError for any answer but 200.
func (n *Node) openHandoff(ctx context.Context, r int, rc *receiving, q url.Values) (io.ReadCloser, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, n.handoffURL(rc.from.HTTP, r, rc.epoch, q), nil)
	if err != nil {
		return nil, err
	}
	resp, err := n.handoff.client.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		resp.Body.Close()
		return nil, &handoffStatusError{resp.StatusCode, strings.TrimSpace(string(msg))}
	}
	return resp.Body, nil
}

// pull makes one GET /handoff/{r} and installs what it streams.
func (n *Node) pull(ctx context.Context, r int, rc *receiving, budget int64) error {
	body, err := n.openHandoff(ctx, r, rc, url.Values{"budget": {strconv.FormatInt(budget, 10)}})
	if err != nil {
		return err
	}
	defer body.Close()
	h := n.handoff
	h.mu.Lock()
	rc.copying = true
	h.mu.Unlock()
	br := bufio.NewReaderSize(body, 64<<10)
	for {
		key, it, err := readFrame(br, n.cache.Capacity())
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("reading the handoff of region %d: %w", r, err)
		}
		if h.current(r) != rc {
			return errors.New("the region moved again")
		}
		n.install(r, rc, key, it)
	}
}

// install puts a copy of key from region r's previous owner in the cache
// if nothing newer may be there (see the design note), and reports whether
// it did.
func (n *Node) install(r int, rc *receiving, key string, it Item) bool {
	h := n.handoff
	ok := region.Of(key) == r && func() bool {
		n.genMu.RLock()
		defer n.genMu.RUnlock()
		if n.clears != rc.clears {
			return false
		}
		return n.admit(key, it.Version, "", true, func() bool {
			h.mu.Lock()
			defer h.mu.Unlock()
			if h.receiving[r] != rc {
				return false
			}
			if _, t := rc.touched[key]; t {
				return false
			}
			// An older version here came from a fill (writes are
			// touched): the copy, newer, replaces it.
			stored, _ := n.cache.put(key, it, it.Version == 0)
			if stored {
				rc.entries++
				rc.bytes += uint64(len(it.Value))
			}
			return stored
		})
	}()
	if ok {
		if it.Version > 0 {
			n.raise(key, it.Version) // no slower fill of an older row goes in after it
		}
		h.entries.Add(1)
		h.bytes.Add(uint64(len(it.Value)))
	} else {
		h.refused.Add(1)
	}
	return ok
}

// warmRead looks key (of region r, which the node is receiving and does
// not hold) up at r's previous owner and installs it. It reports the item
// if it installed it.
func (n *Node) warmRead(ctx context.Context, r int, key string) (Item, bool) {
	h := n.handoff
	rc := h.current(r)
	if rc == nil {
		return Item{}, false
	}
	ctx, cancel := context.WithTimeout(ctx, warmReadTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, n.handoffURL(rc.from.HTTP, r, rc.epoch, url.Values{"key": {key}}), nil)
	if err != nil {
		return Item{}, false
	}
	resp, err := h.client.Do(req)
	if err != nil {
		return Item{}, false
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		io.Copy(io.Discard, io.LimitReader(resp.Body, 512))
		return Item{}, false
	}
	k, it, err := readFrame(bufio.NewReader(resp.Body), n.cache.Capacity())
	if err != nil || k != key || !n.install(r, rc, key, it) {
		return Item{}, false
	}
	h.reads.Add(1)
	return it, true
}

// handoffDone tells region r's previous owner it may drop what it kept.
func (n *Node) handoffDone(ctx context.Context, from pool.Member, r int, epoch uint64) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodDelete, n.handoffURL(from.HTTP, r, epoch, nil), nil)
	if err != nil {
		return
	}
	resp, err := n.handoff.client.Do(req)
	if err != nil {
		n.log.Debug("handoff: telling the previous owner it is done", "region", r, "from", from.ID, "err", err)
		return
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, 512))
	resp.Body.Close()
}

// handoffParams parses /handoff/{r}?epoch=E&gen=G.
func handoffParams(r *http.Request) (rg int, epoch, gen uint64, err error) {
	rg, err = strconv.Atoi(strings.TrimPrefix(r.URL.Path, "/handoff/"))
	if err != nil || rg < 0 || rg >= region.Count {
		return 0, 0, 0, fmt.Errorf("region %q is not a number in 0..%d", strings.TrimPrefix(r.URL.Path, "/handoff/"), region.Count-1)
	}
	q := r.URL.Query()
	if epoch, err = strconv.ParseUint(q.Get("epoch"), 10, 64); err != nil {
		return 0, 0, 0, fmt.Errorf("epoch %q is not an unsigned integer", q.Get("epoch"))
	}
	if v := q.Get("gen"); v != "" {
		if gen, err = strconv.ParseUint(v, 10, 64); err != nil {
			return 0, 0, 0, fmt.Errorf("gen %q is not an unsigned integer", v)
		}
	}
	return rg, epoch, gen, nil
}

// kept checks that the node keeps region rg for a receiver at epoch with
// floor gen, answering the error if not.
func (n *Node) kept(w http.ResponseWriter, rg int, epoch, gen uint64) bool {
	held := n.epoch.Load()
	w.Header().Set(HeaderEpoch, strconv.FormatUint(held, 10))
	if held < epoch {
		jsonhttp.Error(w, http.StatusConflict, "node holds region map epoch %d, older than the handoff's %d: retry", held, epoch)
		return false
	}
	if floor := n.Floor(); floor < gen {
		jsonhttp.Error(w, http.StatusConflict, "node has cleared up to generation %d, not yet %d: retry", floor, gen)
		return false
	}
	h := n.handoff
	h.mu.Lock()
	g := h.giving[rg]
	h.mu.Unlock()
	if g == nil || g.epoch > epoch {
		jsonhttp.Error(w, http.StatusNotFound, "node keeps nothing of region %d for a handoff at epoch %d", rg, epoch)
		return false
	}
	return true
}

// handleHandoffGet serves GET /handoff/{r}: the region's kept entries,
// most recently used first, up to budget bytes (default: all), or with
// key= that one entry.
func (n *Node) handleHandoffGet(w http.ResponseWriter, r *http.Request) {
	rg, epoch, gen, err := handoffParams(r)
	if err != nil {
		jsonhttp.Error(w, http.StatusBadRequest, "%v", err)
		return
	}
	q := r.URL.Query()
	budget := n.cache.Capacity()
	if v := q.Get("budget"); v != "" {
		if budget, err = strconv.ParseInt(v, 10, 64); err != nil || budget < 0 {
			jsonhttp.Error(w, http.StatusBadRequest, "budget %q is not a byte count", v)
			return
		}
	}
	if q.Get("fences") == "1" {
		// The probe: only the map matters (from then on the node refuses
		// every write of the region, so its fences of it are final).
		held := n.epoch.Load()
		w.Header().Set(HeaderEpoch, strconv.FormatUint(held, 10))
		if held < epoch {
			jsonhttp.Error(w, http.StatusConflict, "node holds region map epoch %d, older than the handoff's %d: retry", held, epoch)
			return
		}
		w.Header().Set("Content-Type", handoffMediaType)
		bw := bufio.NewWriter(w)
		for _, f := range n.fencesOf(rg) {
			if err := writeFrame(bw, f.Key, f.Item); err != nil {
				return
			}
		}
		bw.Flush()
		return
	}
	key, one := q.Get("key"), q.Has("key")
	if one && (key == "" || region.Of(key) != rg) {
		jsonhttp.Error(w, http.StatusBadRequest, "key %q is not of region %d", key, rg)
		return
	}
	if !n.kept(w, rg, epoch, gen) {
		return
	}
	var entries []handoffEntry
	if one {
		it, ok := n.cache.peek(key)
		if !ok || n.cache.Owns(rg) {
			jsonhttp.Error(w, http.StatusNotFound, "key is not kept")
			return
		}
		entries = []handoffEntry{{key, it}}
	} else {
		entries = n.cache.export(rg, budget)
	}
	w.Header().Set("Content-Type", handoffMediaType)
	bw := bufio.NewWriterSize(w, 64<<10)
	for _, e := range entries {
		if err := writeFrame(bw, e.Key, e.Item); err != nil {
			return
		}
	}
	bw.Flush()
}

// handleHandoffDone serves DELETE /handoff/{r}: the receiver is done, and
// the node drops what it kept of the region.
func (n *Node) handleHandoffDone(w http.ResponseWriter, r *http.Request) {
	rg, epoch, _, err := handoffParams(r)
	if err != nil {
		jsonhttp.Error(w, http.StatusBadRequest, "%v", err)
		return
	}
	h := n.handoff
	h.mu.Lock()
	g := h.giving[rg]
	done := g != nil && g.epoch <= epoch
	if done {
		h.giving[rg] = nil
	}
	h.mu.Unlock()
	if done {
		dropped := n.cache.dropUnowned(1 << rg)
		n.log.Info("handoff: region handed off", "region", rg, "to", g.to, "epoch", g.epoch, "dropped", dropped)
	}
	w.WriteHeader(http.StatusNoContent)
}

// handleHandoffStatus serves GET /handoff.
func (n *Node) handleHandoffStatus(w http.ResponseWriter, _ *http.Request) {
	jsonhttp.Write(w, http.StatusOK, n.Handoffs())
}

func writeFrame(w *bufio.Writer, key string, it Item) error {
	var b [binary.MaxVarintLen64]byte
	for _, s := range []string{key, it.ContentType, it.ETag} {
		w.Write(binary.AppendUvarint(b[:0], uint64(len(s))))
		w.WriteString(s)
	}
	w.Write(binary.AppendUvarint(b[:0], it.Version))
	w.Write(binary.AppendUvarint(b[:0], uint64(len(it.Value))))
	_, err := w.Write(it.Value)
	return err
}

// readFrame reads one frame; io.EOF at a frame boundary ends the stream.
func readFrame(r *bufio.Reader, maxValue int64) (string, Item, error) {
	var strs [3]string
	for i := range strs {
		l, err := binary.ReadUvarint(r)
		if err != nil {
			if i == 0 && errors.Is(err, io.EOF) {
				return "", Item{}, io.EOF
			}
			return "", Item{}, noEOF(err)
		}
		if l > maxFrameKey {
			return "", Item{}, fmt.Errorf("frame field of %d bytes", l)
		}
		b := make([]byte, l)
		if _, err := io.ReadFull(r, b); err != nil {
			return "", Item{}, noEOF(err)
		}
		strs[i] = string(b)
	}
	version, err := binary.ReadUvarint(r)
	if err != nil {
		return "", Item{}, noEOF(err)
	}
	l, err := binary.ReadUvarint(r)
	if err != nil {
		return "", Item{}, noEOF(err)
	}
	if int64(l) > maxValue || strs[0] == "" {
		return "", Item{}, fmt.Errorf("frame of key %q with a value of %d bytes", strs[0], l)
	}
	v := make([]byte, l)
	if _, err := io.ReadFull(r, v); err != nil {
		return "", Item{}, noEOF(err)
	}
	return strs[0], Item{Value: v, ContentType: strs[1], ETag: strs[2], Version: version}, nil
}

func noEOF(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

// regionList lists the regions set in mask.
func regionList(mask uint16) []int {
	var rs []int
	for r := range region.Count {
		if mask&(1<<r) != 0 {
			rs = append(rs, r)
		}
	}
	return rs
}

// String is the status as JSON, for logs and tests.
func (s HandoffStatus) String() string {
	b, _ := json.Marshal(s)
	return string(b)
}
