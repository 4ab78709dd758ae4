// Package frontend serves the public image store: upload, retrieve and list
// pages, the image path, and the data API; it keeps images in a blob store
// and keys in an index, and reads through the cache-node pool.
package frontend

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"html/template"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/cenkalti/backoff/v5"

	"github.com/memcache/memcache/auth"
	"github.com/memcache/memcache/blob"
	"github.com/memcache/memcache/internal/pool"
	"github.com/memcache/memcache/keyindex"
	"github.com/memcache/memcache/node"
	"github.com/memcache/memcache/pki"
	"github.com/memcache/memcache/region"
)

// MaxKeyBytes is the longest key accepted.
const MaxKeyBytes = 250

// Errors of the read and write paths; the HTTP layer maps each to a status.
var (
	// ErrBadKey is returned for an empty, over-long or non-printable key.
	ErrBadKey = errors.New("invalid key")
	// ErrNotImage is returned for an upload whose bytes are not an image.
	ErrNotImage = errors.New("file is not an image")
	// ErrTooLarge is returned for an upload over the configured limit.
	ErrTooLarge = errors.New("file is too large")
	// ErrNotFound is returned for a key that is not stored.
	ErrNotFound = errors.New("key not found")
	// ErrUnavailable is returned for an upload the frontend cannot make
	// safely now: it holds no pool view yet, or it could not invalidate
	// the cached copy of the image an upload replaced. The HTTP layer
	// answers 503 with Retry-After.
	ErrUnavailable = errors.New("temporarily unavailable")
)

// Blobs stores image bytes (implemented by the blob package's stores).
type Blobs interface {
	Put(ctx context.Context, name string, data []byte, contentType string) error
	Get(ctx context.Context, name string) ([]byte, error)
	Delete(ctx context.Context, name string) error
	DeleteAll(ctx context.Context) (int, error)
	Kind() string
}

// Index maps keys to stored objects (implemented by *keyindex.Index).
type Index interface {
	// Put returns the object replaced ("" if none) and the row's version.
	Put(ctx context.Context, e keyindex.Entry) (string, int64, error)
	Get(ctx context.Context, key string) (keyindex.Entry, error)
	List(ctx context.Context) ([]keyindex.Entry, error)
	Count(ctx context.Context) (int, error)
	// DeleteAllAt deletes every row and records gen, unless a generation
	// >= gen was already recorded (then done is true and nothing changes).
	DeleteAllAt(ctx context.Context, gen uint64) (objects []string, done bool, err error)
	// Orphans lists the objects whose rows a delete-all removed and that
	// are not yet known deleted from the blob store; ForgetOrphan records
	// one deleted.
	Orphans(ctx context.Context) ([]string, error)
	ForgetOrphan(ctx context.Context, object string) error
	Kind() string
}

// Config configures a frontend.
type Config struct {
	// MaxUpload is the largest image accepted, in bytes. If zero, 10 MB.
	MaxUpload int64
	// Secret is the cluster secret sent to cache nodes and managers.
	Secret string
	// TLS, if set, is the frontend's certificate of the cluster CA,
	// presented to cache nodes and managers (mutual TLS).
	TLS *pki.TLS
	// Managers returns the manager replicas' base URLs (from gossip or a
	// flag). Required for routing through the pool and the admin API. If
	// nil, the frontend runs alone: from the stores only, with no pool, and
	// ready at once. Otherwise it is not ready, reads only from the stores
	// and accepts no upload until Run has received its first pool view.
	Managers func() []string
	// NodeTimeout bounds the wait for a cache node's answer (the headers of
	// a read; the whole of a fill or invalidation). Reading a cached image's
	// body, which may be streamed to a slow client, is bounded by
	// node.DefaultBodyTimeout instead. If zero, node.DefaultTimeout (2 s).
	NodeTimeout time.Duration
	// ViewWait is how long an upload waits for the first pool view before
	// it is refused with 503. If zero, 5 s.
	ViewWait time.Duration
	// InvalidateTimeout is how long an upload keeps trying (jittered
	// backoff, each try against the newest view) to fence the key at its
	// owner — before it commits its row, and after if its own cache write
	// failed — before it answers 503. If zero, 10 s.
	InvalidateTimeout time.Duration
	// WatchWait is how long one pool-state watch blocks. If zero, pool.DefaultWait.
	WatchWait time.Duration
	// NearCacheMB is the size of the frontend's near-cache (near.go):
	// copies of popular images served under the owner node's read leases,
	// and revalidated with it once a lease has ended. 0 turns it off.
	NearCacheMB int
}

// Frontend is the public side of memcache.
type Frontend struct {
	cfg    Config
	blobs  Blobs
	index  Index
	log    *slog.Logger
	client *http.Client // to managers, with the cluster secret
	nodes  *node.Client // to cache nodes, with the cluster secret
	loads  flights
	pool   atomic.Pointer[pool.View] // nil until the first view (see Config.Managers)
	pages  map[string]*template.Template

	viewOnce  sync.Once
	viewReady chan struct{} // closed once pool holds a view

	deleteMu   sync.Mutex    // serialises delete-all runs
	pendingMu  sync.Mutex    // guards pendingGen
	pendingGen uint64        // the newest delete-all generation handed to the delete worker
	deleteWake chan struct{} // wakes the delete worker; capacity 1
	copyBufs   sync.Pool     // *[]byte buffers for streaming images
	readBufs   sync.Pool     // *bytes.Buffer for node values of unknown size
	near       *near         // near.go; nil when off

	// deletedGen is the newest delete-all generation this frontend has seen
	// carried out (its rows gone); see fillGeneration.
	deletedGen atomic.Uint64

	hits, misses, nodeErrors atomic.Uint64
	adminNext                atomic.Uint64 // rotates the first manager an admin call tries
}

// New returns a frontend over blobs and index.
func New(cfg Config, blobs Blobs, index Index, log *slog.Logger) *Frontend {
	if cfg.MaxUpload <= 0 {
		cfg.MaxUpload = 10 << 20
	}
	if cfg.NodeTimeout <= 0 {
		cfg.NodeTimeout = node.DefaultTimeout
	}
	if cfg.ViewWait <= 0 {
		cfg.ViewWait = 5 * time.Second
	}
	if cfg.InvalidateTimeout <= 0 {
		cfg.InvalidateTimeout = 10 * time.Second
	}
	standalone := cfg.Managers == nil
	if standalone {
		cfg.Managers = func() []string { return nil }
	}
	tr := pki.Transport(cfg.TLS)
	tr.MaxIdleConnsPerHost = 64
	client := &http.Client{Transport: &auth.Transport{Secret: cfg.Secret, Base: tr}}
	f := &Frontend{cfg: cfg, blobs: blobs, index: index, log: log.With("component", "frontend"),
		client: client, nodes: node.NewClient(node.ClientConfig{HTTPClient: client, Timeout: cfg.NodeTimeout}),
		pages: parsePages(), viewReady: make(chan struct{}), deleteWake: make(chan struct{}, 1)}
	f.copyBufs.New = func() any { b := make([]byte, 64<<10); return &b }
	f.readBufs.New = func() any { return new(bytes.Buffer) }
	if cfg.NearCacheMB > 0 {
		f.near = newNear(cfg.NearCacheMB, f.nodes, f.log)
	}
	if standalone {
		f.storeView(pool.View{Members: []pool.Member{}})
	}
	return f
}

// storeView installs v as the view the frontend routes by; the first one
// makes the frontend ready.
func (f *Frontend) storeView(v pool.View) {
	f.pool.Store(&v)
	f.viewOnce.Do(func() { close(f.viewReady) })
}

// view returns the view the frontend routes by, or nil before the first.
func (f *Frontend) view() *pool.View { return f.pool.Load() }

// waitView returns the current view, waiting up to Config.ViewWait for
// the first one.
func (f *Frontend) waitView(ctx context.Context) (*pool.View, error) {
	if v := f.view(); v != nil {
		return v, nil
	}
	t := time.NewTimer(f.cfg.ViewWait)
	defer t.Stop()
	select {
	case <-f.viewReady:
		return f.view(), nil
	case <-t.C:
		return nil, fmt.Errorf("%w: this frontend has no pool state yet (the managers have not answered); nothing was stored", ErrUnavailable)
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Run follows the pool state pushed by the managers until ctx is done, and
// carries out a new delete-all generation on its delete worker, which it
// starts and, before it returns, waits for.
func (f *Frontend) Run(ctx context.Context) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	deletes := make(chan struct{})
	go func() {
		defer close(deletes)
		f.runDeletes(ctx)
	}()
	polls := make(chan struct{})
	go func() {
		defer close(polls)
		if f.near != nil {
			f.near.run(ctx)
		}
	}()
	pool.Watch(ctx, pool.WatchConfig{Managers: f.cfg.Managers, Client: f.client, Wait: f.cfg.WatchWait}, f.log, f.setPool)
	cancel()
	<-deletes
	<-polls
}

func (f *Frontend) setPool(st pool.View) {
	if f.near != nil {
		// A copy is served only from the key's owner; drop the others.
		var moved uint16
		if old := f.view(); old != nil {
			for r := range region.Count {
				if old.Regions[r] != st.Regions[r] || old.Since[r] != st.Since[r] {
					moved |= 1 << r
				}
			}
		}
		f.near.dropRegions(moved)
		f.near.follow(st.Members)
	}
	f.storeView(st)
	f.log.Debug("pool state", "index", st.Index, "epoch", st.Epoch, "nodes", len(st.Members))
	if st.DeleteGen > 0 {
		// Backstop for a delete-all no manager could have a frontend carry
		// out (deleteall.go): handed to the delete worker, off this loop.
		f.handDelete(st.DeleteGen)
	}
}

// Pool returns the pool state the frontend routes by (an empty pool
// before the first view arrives).
func (f *Frontend) Pool() pool.View {
	if v := f.view(); v != nil {
		return *v
	}
	return pool.View{Members: []pool.Member{}}
}

// ValidateKey reports whether key is acceptable: 1..250 bytes of UTF-8
// without control characters. Any other character, '/' and ".." included,
// is allowed: keys are never used as paths.
func ValidateKey(key string) error {
	switch {
	case key == "":
		return fmt.Errorf("%w: key is empty", ErrBadKey)
	case len(key) > MaxKeyBytes:
		return fmt.Errorf("%w: key is %d bytes, longer than %d", ErrBadKey, len(key), MaxKeyBytes)
	case !utf8.ValidString(key):
		return fmt.Errorf("%w: key is not valid UTF-8", ErrBadKey)
	case strings.IndexFunc(key, unicode.IsControl) >= 0:
		return fmt.Errorf("%w: key contains control characters", ErrBadKey)
	}
	return nil
}

// Image is an image as served.
type Image struct {
	Data        []byte
	ContentType string
	ETag        string // quoted, from the SHA-256 of the bytes
	FromCache   bool
}

func etagOf(sha string) string { return `"` + sha + `"` }

// reading is one read's answer: the image in Data, or, for a cache hit
// streamed from the node, in body (which the caller must close); or, when
// notModified, only the ETag: the owner node found the client's copy
// current.
type reading struct {
	Image
	body        io.ReadCloser
	size        int
	notModified bool
}

// close releases a streamed body, if any.
func (r reading) close() {
	if r.body != nil {
		r.body.Close()
	}
}

// read is the one read path behind every entry point (/images, /api/key,
// the retrieve page): it answers from the near-cache when a copy's read
// lease holds, else asks key's owner node once — revalidating the
// near-cache's copy if it has one, else the client's copy named by
// ifNoneMatch (its If-None-Match; "" if none) — so a read counts exactly one
// GET and at most one miss at the node; on a miss or a node failure the
// stores answer and the owner is filled. Before the first pool view it
// reads the stores only and fills nothing. With stream set, a hit too large
// for the near-cache is left in body to stream; otherwise the image is in
// Data, or, if the node found the client's copy current, the reading is
// notModified.
func (f *Frontend) read(ctx context.Context, key string, stream bool, ifNoneMatch string) (reading, error) {
	if err := ValidateKey(key); err != nil {
		return reading{}, err
	}
	v := f.view()
	if v != nil {
		if m, ok := v.Owner(key); ok {
			var held *node.Item
			if f.near != nil {
				item, ok, leased := f.near.lookup(key, m.HTTP)
				if leased {
					f.hits.Add(1)
					img := Image{Data: item.Value, ContentType: item.ContentType, ETag: item.ETag, FromCache: true}
					return reading{Image: img, size: len(img.Data)}, nil
				}
				if ok {
					held = &item
				}
			}
			if r, ok := f.fromCache(ctx, m.HTTP, key, v.Epoch, stream, ifNoneMatch, held); ok {
				f.hits.Add(1)
				return r, nil
			}
		}
	}
	f.misses.Add(1)
	img, err := f.load(ctx, key, v, f.fillGeneration(v))
	if err != nil {
		return reading{}, err
	}
	return reading{Image: img, size: len(img.Data)}, nil
}

// fromCache makes the read's one GET at the owner node base, revalidating
// held, the near-cache's copy from base if there is one (its lease ended),
// else the client's copy named by ifNoneMatch (so that a browser's
// revalidation moves no image bytes from the node). With the near-cache
// on, it asks for a read lease, and keeps the answer under it. Any failure
// is a miss: the stores answer instead.
func (f *Frontend) fromCache(ctx context.Context, base, key string, epoch uint64, stream bool, ifNoneMatch string, held *node.Item) (reading, bool) {
	inNear := held != nil
	var fetch *fetch
	var opt node.GetOptions
	if f.near != nil {
		opt.Holder, fetch = f.near.begin(key, base)
	}
	var kept *node.Item // what the near-cache installs when the fetch ends
	var lease time.Duration
	defer func() {
		if f.near != nil {
			f.near.end(fetch, base, kept, lease)
		}
	}()
	if inNear {
		opt.IfNoneMatch = held.ETag
	} else {
		opt.IfNoneMatch = nodeRevalidation(ifNoneMatch)
	}
	e, err := f.nodes.Get(ctx, base, key, epoch, opt)
	if err == nil && e.NotModified && !inNear && opt.IfNoneMatch != "" {
		return reading{Image: Image{ETag: opt.IfNoneMatch, FromCache: true}, notModified: true}, true
	}
	if err != nil || (e.NotModified && !inNear) {
		if err != nil && !errors.Is(err, node.ErrMiss) {
			f.nodeErrors.Add(1)
			f.log.Debug("cache node read failed", "node", base, "err", err)
		}
		if inNear {
			f.near.drop(key)
		}
		return reading{}, false
	}
	if e.NotModified {
		kept, lease = held, e.Lease
		return reading{Image: Image{Data: held.Value, ContentType: held.ContentType, ETag: held.ETag, FromCache: true}, size: len(held.Value)}, true
	}
	img := Image{ContentType: e.ContentType, ETag: e.ETag, FromCache: true}
	keepNear := f.near != nil && e.Size >= 0 && e.Size <= f.near.cache.Capacity()/8
	if stream && !keepNear && e.Size >= 0 {
		return reading{Image: img, body: e.Body, size: int(e.Size)}, true
	}
	defer e.Body.Close()
	data, err := f.readValue(e.Body, e.Size)
	if err != nil {
		f.nodeErrors.Add(1)
		f.log.Debug("cache node read failed", "node", base, "err", err)
		return reading{}, false
	}
	img.Data = data
	if keepNear {
		item := node.Item{Value: img.Data, ContentType: img.ContentType, ETag: img.ETag}
		if fetch != nil && e.Lease > 0 {
			kept, lease = &item, e.Lease
		} else {
			f.near.keep(key, base, item) // revalidated before use
		}
	}
	return reading{Image: img, size: len(img.Data)}, true
}

// nodeRevalidation returns the entity tag of an If-None-Match header to
// ask the node about, or "" if there is none to ask: the node compares one
// tag, so a list (rare from browsers) or "*" is not passed on. A weak tag
// is passed as its strong form: If-None-Match compares weakly.
func nodeRevalidation(ifNoneMatch string) string {
	t := strings.TrimPrefix(strings.TrimSpace(ifNoneMatch), "W/")
	if t == "" || t == "*" || strings.Contains(t, ",") {
		return ""
	}
	return t
}

// readValue reads a node's value of size bytes (-1 if unknown) into a
// slice of exactly its length: straight into it when the size is known (the
// node always sends it), else through a pooled buffer. No copy buffer is
// allocated per read.
func (f *Frontend) readValue(body io.Reader, size int64) ([]byte, error) {
	if size >= 0 {
		data := make([]byte, size)
		if _, err := io.ReadFull(body, data); err != nil {
			return nil, err
		}
		return data, nil
	}
	buf := f.readBufs.Get().(*bytes.Buffer)
	defer func() {
		if buf.Cap() <= maxPooledReadBuf {
			buf.Reset()
			f.readBufs.Put(buf)
		}
	}()
	if _, err := buf.ReadFrom(body); err != nil {
		return nil, err
	}
	return bytes.Clone(buf.Bytes()), nil
}

// maxPooledReadBuf is the largest read buffer kept for reuse: one grown
// by an unusually large value is left to the garbage collector.
const maxPooledReadBuf = 4 << 20

// cacheWrite is how toCache writes: a fill after a read (onlyIfAbsent)
// or an upload's write, with the key index version of the value and the
// upload's fence token (node/fence.go).
type cacheWrite struct {
	onlyIfAbsent bool
	version      int64
	fence        string
}

// toCache stores img under key at its owner in v, stamped with v's epoch
// and the cache generation gen (v and gen must be taken before img was
// read, so a node that cleared since refuses it) and with w's version and
// fence. It returns the node's error, having logged the unexpected ones;
// a write the node kept out (ErrExists) or could not hold (ErrTooLarge) is
// not one. A fill never replaces a value: an upload of the same key may
// have stored a newer image meanwhile. With no view, it does nothing.
func (f *Frontend) toCache(ctx context.Context, key string, img Image, w cacheWrite, v *pool.View, gen uint64) error {
	if v == nil {
		return nil
	}
	m, ok := v.Owner(key)
	if !ok {
		return nil
	}
	err := f.nodes.Put(ctx, m.HTTP, key, img.Data, node.PutOptions{
		Epoch: v.Epoch, Generation: gen, ContentType: img.ContentType, ETag: img.ETag, OnlyIfAbsent: w.onlyIfAbsent,
		Version: uint64(max(w.version, 0)), Fence: w.fence,
	})
	if err != nil && !errors.Is(err, node.ErrExists) && !errors.Is(err, node.ErrTooLarge) {
		f.nodeErrors.Add(1)
		f.log.Debug("cache write refused or failed", "node", m.HTTP, "err", err)
		return err
	}
	return nil
}

// fillGeneration is the cache generation to stamp a cache write with,
// taken when the read or upload behind it begins. It is v's, except that a
// delete-all generation this frontend has not yet seen carried out does
// not count: a read that begins after the view announces delete-all G but
// before G's rows are gone may load an image G deletes, and the frontend
// that carries G out clears the caches with a floor that counts G, so such
// a fill is refused.
func (f *Frontend) fillGeneration(v *pool.View) uint64 {
	if v == nil {
		return 0
	}
	return v.ClearGen + min(v.DeleteGen, f.deletedGen.Load())
}

// deleted records that the rows of delete-all generation gen are gone.
func (f *Frontend) deleted(gen uint64) {
	for {
		cur := f.deletedGen.Load()
		if gen <= cur || f.deletedGen.CompareAndSwap(cur, gen) {
			return
		}
	}
}

// fence fences key at its owner (node.Client.Fence with opt): before an
// upload commits its row, or after if the upload's own write failed. A
// 421 or 409 means the frontend's view (or the node's) is behind, and an
// unreachable owner may come back with the copy: every failure is retried
// with jittered backoff, each time against the newest view, for up to
// Config.InvalidateTimeout (even if the caller gives up: the row may be
// committed). It returns the last failure if the key could not be fenced.
func (f *Frontend) fence(ctx context.Context, key string, opt node.FenceOptions) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), f.cfg.InvalidateTimeout)
	defer cancel()
	b := &backoff.ExponentialBackOff{InitialInterval: 20 * time.Millisecond, RandomizationFactor: 0.5, Multiplier: 2, MaxInterval: time.Second}
	attempt := 0
	_, err := backoff.Retry(ctx, func() (struct{}, error) {
		attempt++
		v := f.Pool()
		m, ok := v.Owner(key)
		if !ok {
			return struct{}{}, nil // no node owns the key: no cache holds it
		}
		opt.Epoch = v.Epoch
		err := f.nodes.Fence(ctx, m.HTTP, key, opt)
		if err != nil {
			f.nodeErrors.Add(1)
			f.log.Warn("fencing the cached copy failed; retrying", "node", m.ID, "epoch", v.Epoch, "attempt", attempt, "err", err)
		}
		return struct{}{}, err
	}, backoff.WithBackOff(b), backoff.WithMaxElapsedTime(f.cfg.InvalidateTimeout))
	return err
}

// Get returns the image stored under key: from the owner node's cache when
// it has it, otherwise from the stores, filling the cache. Concurrent
// misses of one key load it once.
func (f *Frontend) Get(ctx context.Context, key string) (Image, error) {
	r, err := f.read(ctx, key, false, "")
	return r.Image, err
}

// load reads key from the stores and fills its owner in v (the view held
// when the read began), stamped with gen (fillGeneration before the row was
// read). Concurrent reads of one key share a load (flight.go), but never
// one that began before they did.
func (f *Frontend) load(ctx context.Context, key string, v *pool.View, gen uint64) (Image, error) {
	return f.loads.do(key, func() (Image, error) {
		// The load outlives a caller that gives up: others may share it.
		lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		// A replacement committed between reading the row and reading the
		// blob removes the old blob: read the row again, once.
		for attempt := 0; ; attempt++ {
			e, err := f.index.Get(lctx, key)
			if errors.Is(err, keyindex.ErrNotFound) {
				return Image{}, fmt.Errorf("%w: %q", ErrNotFound, key)
			}
			if err != nil {
				return Image{}, fmt.Errorf("key index: %w", err)
			}
			data, err := f.blobs.Get(lctx, e.Object)
			if errors.Is(err, blob.ErrNotFound) && attempt == 0 {
				continue
			}
			if err != nil {
				return Image{}, fmt.Errorf("blob store: %w", err)
			}
			img := Image{Data: data, ContentType: e.ContentType, ETag: etagOf(e.SHA256)}
			f.toCache(lctx, key, img, cacheWrite{onlyIfAbsent: true, version: e.Version}, v, gen)
			return img, nil
		}
	})
}

// Put stores data under key: the blob first, then the row (so a row never
// points at a missing blob), then the cache; the replaced image's blob is
// removed after the row is committed. Before replacing a row, it fences
// the key at its owner (node/fence.go), so no read that loaded the
// replaced row can fill the cache after it; the image is then written
// under the fence with the row's version. It returns the stored entry.
//
// Until the frontend holds a pool view it stores nothing (ErrUnavailable):
// it could not fence the key. When the owner of a key to replace cannot be
// reached to fence it, it stores nothing either (ErrUnavailable). When the row is committed
// but neither the cache write nor a fence at the row's version took, Put
// returns the entry and an error wrapping ErrUnavailable.
func (f *Frontend) Put(ctx context.Context, key string, data []byte) (keyindex.Entry, error) {
	if err := ValidateKey(key); err != nil {
		return keyindex.Entry{}, err
	}
	v, err := f.waitView(ctx)
	if err != nil {
		return keyindex.Entry{}, err
	}
	gen := f.fillGeneration(v) // before the row is written
	if int64(len(data)) > f.cfg.MaxUpload {
		return keyindex.Entry{}, fmt.Errorf("%w: %d bytes, the limit is %d", ErrTooLarge, len(data), f.cfg.MaxUpload)
	}
	ct := http.DetectContentType(data)
	if !strings.HasPrefix(ct, "image/") {
		return keyindex.Entry{}, fmt.Errorf("%w: its bytes look like %s", ErrNotImage, ct)
	}
	sum := sha256.Sum256(data)
	object := newObjectName()
	if err := f.blobs.Put(ctx, object, data, ct); err != nil {
		return keyindex.Entry{}, fmt.Errorf("blob store: %w", err)
	}
	dropBlob := func() {
		if derr := f.blobs.Delete(context.WithoutCancel(ctx), object); derr != nil {
			f.log.Error("removing the blob of a failed upload", "object", object, "err", derr)
		}
	}
	// A key with a row may be cached: fence it before replacing the row. A
	// new key has no copy to fence (a concurrent first upload's is kept out
	// by versions: the node keeps the newest, and fences at it).
	var token string
	fenced := time.Now()
	if _, err := f.index.Get(ctx, key); err == nil {
		token = newFenceToken()
		if err := f.fence(ctx, key, node.FenceOptions{Token: token}); err != nil {
			dropBlob()
			return keyindex.Entry{}, fmt.Errorf("%w: the owner of %q could not be reached to fence its cached copy (%v); nothing was stored", ErrUnavailable, key, err)
		}
	} else if !errors.Is(err, keyindex.ErrNotFound) {
		dropBlob()
		return keyindex.Entry{}, fmt.Errorf("key index: %w", err)
	}
	now := time.Now().UTC()
	e := keyindex.Entry{Key: key, Object: object, ContentType: ct, Size: int64(len(data)),
		SHA256: hex.EncodeToString(sum[:]), Created: now, Updated: now}
	prev, version, err := f.index.Put(ctx, e)
	if err != nil {
		dropBlob() // no row points at the new blob
		return keyindex.Entry{}, fmt.Errorf("key index: %w", err)
	}
	e.Version = version
	// The write must land while the fence lives: a frontend paused past
	// that leaves the key uncached rather than risk an old write.
	wctx, cancel := context.WithDeadline(ctx, fenced.Add(node.FenceTTL/2))
	werr := f.toCache(wctx, key, Image{Data: data, ContentType: ct, ETag: etagOf(e.SHA256)}, cacheWrite{version: version, fence: token}, v, gen)
	cancel()
	var stale error
	if werr != nil {
		// The owner did not take the image (it moved, or did not answer):
		// fence the key at the row's version, so nothing older is served.
		// A new key had no copy to keep out, but for a concurrent first
		// upload's: that one is not worth failing the upload for.
		stale = f.fence(ctx, key, node.FenceOptions{Token: token, Version: uint64(version)})
		if stale != nil && prev == "" {
			f.log.Warn("first upload of a key stored, its cache write and fence failed", "key", key, "err", stale)
			stale = nil
		}
	}
	if prev != "" && prev != object {
		if err := f.blobs.Delete(context.WithoutCancel(ctx), prev); err != nil {
			f.log.Warn("removing a replaced blob", "object", prev, "err", err)
		}
	}
	if stale != nil {
		f.log.Error("upload stored, old cached copy not fenced", "key", key, "err", stale)
		return e, fmt.Errorf("%w: the image was stored under %q, but the cached copy of the image it replaced could not be fenced (%v) and may still be served; upload it again", ErrUnavailable, key, stale)
	}
	return e, nil
}

// newFenceToken returns an upload's fence token.
func newFenceToken() string {
	b := make([]byte, 12)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// newObjectName returns a unique blob name, never derived from user input.
func newObjectName() string {
	b := make([]byte, 16)
	rand.Read(b)
	return "img/" + hex.EncodeToString(b)
}

// List returns every stored entry, ordered by key.
func (f *Frontend) List(ctx context.Context) ([]keyindex.Entry, error) {
	return f.index.List(ctx)
}
