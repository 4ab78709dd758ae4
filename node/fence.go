package node

import (
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/memcache/memcache/internal/jsonhttp"
	"github.com/memcache/memcache/region"
)

// Fences keep a replaced image out of the cache. The key index gives every
// row a version, one more on each replacement, in commit order
// (keyindex.Entry.Version); cache writes carry it. An upload of key k:
//
//  1. fences k with a token before it commits its row (if k has a row to
//     replace): the node drops its copy and refuses every fill of k (a read
//     may have loaded the row the upload replaces) and every write but a
//     fencing upload's;
//  2. commits the row, getting version v;
//  3. writes its image with version v and the token: the node stores it
//     if no other fencing upload is still pending (one may be about to
//     commit a newer row) and it holds nothing newer, ends the token's
//     block, and refuses from then on anything older than v. Had the write
//     failed, the upload raises the fence to v instead (a fence with a
//     version and no token); its block then lapses with the fence.
//
// So a fill that read the row before the upload committed never lands after
// it, and of concurrent uploads the newest version stays cached: the cache
// never serves an image older than a replacement acknowledged before the
// read began. A fence lives FenceTTL after its last change, longer than any
// read's load may take (30 s), and a clear (clear-caches, delete-all) drops
// fences with the entries: fills from before it are fenced by generation.

// Fence headers on DELETE /cache/{key} and PUT /cache/{key}.
const (
	// HeaderFence carries an upload's fence token: on DELETE it blocks
	// fills and other uploads' writes of the key; on PUT it identifies the
	// holder, whose write lifts the block.
	HeaderFence = "X-Memcache-Fence"
	// HeaderVersion carries the key index version of a PUT's value; on
	// DELETE it raises the key's fence to that version.
	HeaderVersion = "X-Memcache-Version"
)

// FenceTTL is how long a fence lives after its last change: an upload
// writes its image within half of it, or not at all.
const FenceTTL = 2 * time.Minute

type fence struct {
	// tokens are the uploads that fenced the key and have not written
	// yet: while any is pending, fills are refused, and a pending upload's
	// write is stored only if it is the last one pending (another may be
	// about to commit a newer row; the cache must not serve this one's
	// meanwhile). A write ends its upload's token, stored or not.
	tokens  []string
	min     uint64 // writes of older versions are refused
	expires time.Time
}

// fences is the node's table of fences. Admission and the cache write it
// admits happen under mu, as do a fence and the removal of the copy, so
// neither interleaves with the other.
type fences struct {
	mu    sync.Mutex
	m     map[string]fence
	order []fenceExpiry // by expiry (FenceTTL is constant): pruned from the front
	now   func() time.Time
}

type fenceExpiry struct {
	key     string
	expires time.Time
}

func newFences() *fences { return &fences{m: map[string]fence{}, now: time.Now} }

// get returns key's live fence. Caller holds mu.
func (fs *fences) get(key string, now time.Time) (fence, bool) {
	f, ok := fs.m[key]
	if !ok || !now.Before(f.expires) {
		return fence{}, false
	}
	return f, true
}

// set stores f for key, expiring FenceTTL from now, and prunes expired
// fences. Caller holds mu.
func (fs *fences) set(key string, f fence, now time.Time) {
	f.expires = now.Add(FenceTTL)
	fs.m[key] = f
	fs.order = append(fs.order, fenceExpiry{key, f.expires})
	i := 0
	for ; i < len(fs.order) && !now.Before(fs.order[i].expires); i++ {
		e := fs.order[i]
		if cur, ok := fs.m[e.key]; ok && cur.expires.Equal(e.expires) {
			delete(fs.m, e.key)
		}
	}
	fs.order = fs.order[i:]
}

// block fences key for the upload holding token and drops the copy.
func (n *Node) block(key, token string) {
	fs := n.fences
	fs.mu.Lock()
	defer fs.mu.Unlock()
	now := fs.now()
	f, _ := fs.get(key, now)
	if !slices.Contains(f.tokens, token) {
		f.tokens = append(slices.Clip(f.tokens), token)
	}
	fs.set(key, f, now)
	n.cache.Delete(key)
}

// release ends token's block (its upload will not write) and raises the
// fence to version, dropping a cached copy older than it.
func (n *Node) release(key, token string, version uint64) {
	fs := n.fences
	fs.mu.Lock()
	f, _ := fs.get(key, fs.now())
	if i := slices.Index(f.tokens, token); i >= 0 {
		f.tokens = slices.Delete(slices.Clone(f.tokens), i, i+1)
		fs.set(key, f, fs.now())
	}
	fs.mu.Unlock()
	n.raise(key, version)
}

// raise refuses from now on writes of key older than version, and drops a
// cached copy older than it.
func (n *Node) raise(key string, version uint64) {
	fs := n.fences
	fs.mu.Lock()
	defer fs.mu.Unlock()
	now := fs.now()
	f, _ := fs.get(key, now)
	f.min = max(f.min, version)
	fs.set(key, f, now)
	n.cache.DeleteOlder(key, version)
}

// admit runs store (a cache write of key at version, by token's upload if
// token is set; a read's fill if fill) if the key's fence lets it, and
// reports whether it did: a pending upload's write only if it is the last
// upload pending, another write only if none is; either only if not older
// than the fence's version. Every version comes from a committed row, so a
// fence rises to any version it sees, admitted or not. An upload's stored
// write fences the key at its version even without a prior fence (a new
// key's upload fences nothing before it commits), so that once it is
// evicted a slow fill of an older row cannot take its place.
func (n *Node) admit(key string, version uint64, token string, fill bool, store func() bool) bool {
	fs := n.fences
	fs.mu.Lock()
	defer fs.mu.Unlock()
	now := fs.now()
	f, fenced := fs.get(key, now)
	pending := slices.Index(f.tokens, token)
	var refused bool
	switch {
	case !fenced:
	case version < f.min:
		refused = true
	case len(f.tokens) == 0:
	case fill || pending < 0:
		refused = true // an upload is pending: nothing but its write goes in
	default:
		refused = len(f.tokens) > 1 // another upload is pending too
	}
	stored := !refused && store()
	changed := false
	if fenced && pending >= 0 && !fill {
		f.tokens = slices.Delete(slices.Clone(f.tokens), pending, pending+1)
		changed = true
	}
	if version > 0 && (fenced || (stored && !fill)) && version > f.min {
		f.min = version
		changed = true
	}
	if changed || (!fenced && stored && !fill && version > 0) {
		fs.set(key, f, now)
	}
	return stored
}

// clearFences drops every fence (a clear fences older fills by generation).
func (n *Node) clearFences() {
	fs := n.fences
	fs.mu.Lock()
	fs.m, fs.order = map[string]fence{}, nil
	fs.mu.Unlock()
}

// refuseTooLarge answers 413 for a value over the cache's capacity. A
// versioned one raises the key's fence: the copy it replaces must not
// outlive it.
func (n *Node) refuseTooLarge(w http.ResponseWriter, key string, version uint64, format string, args ...any) {
	if version > 0 {
		n.raise(key, version)
	}
	jsonhttp.Error(w, http.StatusRequestEntityTooLarge, format, args...)
}

// fenceHeaders returns the HeaderVersion and HeaderFence of r.
func fenceHeaders(r *http.Request) (version uint64, token string, err error) {
	if v := r.Header.Get(HeaderVersion); v != "" {
		if version, err = strconv.ParseUint(v, 10, 64); err != nil {
			return 0, "", fmt.Errorf("%s header %q is not an unsigned integer", HeaderVersion, v)
		}
	}
	token = r.Header.Get(HeaderFence)
	if len(token) > 128 {
		return 0, "", fmt.Errorf("%s header is longer than 128 bytes", HeaderFence)
	}
	return version, token, nil
}

// fencesOf returns the live fences of region r's keys that refuse versions
// below a minimum, as handoffEntry values with no value whose Version is that
// minimum: what a region's previous owner hands its new owner (handoff.go).
func (n *Node) fencesOf(r int) []handoffEntry {
	fs := n.fences
	fs.mu.Lock()
	defer fs.mu.Unlock()
	now := fs.now()
	var out []handoffEntry
	for key, f := range fs.m {
		if f.min > 0 && now.Before(f.expires) && region.Of(key) == r {
			out = append(out, handoffEntry{Key: key, Item: Item{Version: f.min}})
		}
	}
	return out
}
