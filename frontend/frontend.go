// Package frontend serves the public image store: upload, retrieve and list
// pages, the image path, and the data API; it keeps images in a blob store
// and keys in an index, and reads through the cache-node pool.
package frontend

import (
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
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode"
	"unicode/utf8"

	"golang.org/x/sync/singleflight"

	"github.com/memcache/memcache/auth"
	"github.com/memcache/memcache/blob"
	"github.com/memcache/memcache/fsm"
	"github.com/memcache/memcache/keyindex"
	"github.com/memcache/memcache/node"
	"github.com/memcache/memcache/region"
	"github.com/memcache/memcache/watch"
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
	Put(ctx context.Context, e keyindex.Entry) (string, error)
	Get(ctx context.Context, key string) (keyindex.Entry, error)
	List(ctx context.Context) ([]keyindex.Entry, error)
	Count(ctx context.Context) (int, error)
	// DeleteAllAt deletes every row and records gen, unless a generation
	// >= gen was already recorded (then done is true and nothing changes).
	DeleteAllAt(ctx context.Context, gen uint64) (objects []string, done bool, err error)
	Kind() string
}

// Config configures a frontend.
type Config struct {
	// MaxUpload is the largest image accepted, in bytes. If zero, 10 MB.
	MaxUpload int64
	// Secret is the cluster secret sent to cache nodes and managers.
	Secret string
	// Managers returns the manager replicas' base URLs (from gossip or a
	// flag). Required for routing through the pool and the admin API.
	Managers func() []string
	// NodeTimeout bounds one request to a cache node. If zero, 2 s.
	NodeTimeout time.Duration
	// WatchWait is how long one pool-state watch blocks. If zero, 30 s.
	WatchWait time.Duration
	// HotCacheMB is the size of the frontend's own copy of popular images,
	// always revalidated with the owner node before use (so it never serves
	// what the node would not). 0 turns it off.
	HotCacheMB int
}

// Frontend is the public side of memcache.
type Frontend struct {
	cfg    Config
	blobs  Blobs
	index  Index
	log    *slog.Logger
	client *http.Client // to nodes and managers, with the cluster secret
	loads  singleflight.Group
	pool   atomic.Pointer[fsm.State]
	pages  map[string]*template.Template

	deleteMu   sync.Mutex    // serialises delete-all runs
	pendingMu  sync.Mutex    // guards pendingGen
	pendingGen uint64        // the newest delete-all generation handed to the delete worker
	deleteWake chan struct{} // wakes the delete worker; capacity 1
	copyBufs   sync.Pool     // *[]byte buffers for streaming images
	hot        *node.Cache   // revalidated copies of images; nil when off

	hits, misses, nodeErrors atomic.Uint64
	adminNext                atomic.Uint64 // rotates the first manager an admin call tries
}

// New returns a frontend over blobs and index.
func New(cfg Config, blobs Blobs, index Index, log *slog.Logger) *Frontend {
	if cfg.MaxUpload <= 0 {
		cfg.MaxUpload = 10 << 20
	}
	if cfg.NodeTimeout <= 0 {
		cfg.NodeTimeout = 2 * time.Second
	}
	if cfg.Managers == nil {
		cfg.Managers = func() []string { return nil }
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = 64
	f := &Frontend{cfg: cfg, blobs: blobs, index: index, log: log.With("component", "frontend"),
		client: &http.Client{Transport: &auth.Transport{Secret: cfg.Secret, Base: tr}}, pages: parsePages(),
		deleteWake: make(chan struct{}, 1)}
	f.copyBufs.New = func() any { b := make([]byte, 64<<10); return &b }
	if cfg.HotCacheMB > 0 {
		f.hot, _ = node.NewCache(node.CacheConfig{CapacityMB: min(cfg.HotCacheMB, node.MaxCapacityMB), Policy: node.LRU})
	}
	empty := fsm.DefaultState()
	f.pool.Store(&empty)
	return f
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
	watch.Run(ctx, watch.Config{Managers: f.cfg.Managers, Secret: f.cfg.Secret, Wait: f.cfg.WatchWait}, f.log, f.setPool)
	cancel()
	<-deletes
}

func (f *Frontend) setPool(st fsm.State) {
	f.pool.Store(&st)
	f.log.Debug("pool state", "index", st.Index, "epoch", st.Epoch, "nodes", len(st.Members))
	if st.DeleteGen > 0 {
		// Backstop for a delete-all no manager could have a frontend carry
		// out (deleteall.go): handed to the delete worker, off this loop.
		f.handDelete(st.DeleteGen)
	}
}

// Pool returns the pool state the frontend routes by.
func (f *Frontend) Pool() fsm.State { return *f.pool.Load() }

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

// owner returns the base URL of the node that owns key's region and the
// pool epoch, or "" when no node owns it.
func (f *Frontend) owner(key string) (string, uint64) {
	st := f.pool.Load()
	id := st.Regions[region.Of(key)]
	if id == "" {
		return "", st.Epoch
	}
	m, ok := st.Member(id)
	if !ok {
		return "", st.Epoch
	}
	return m.HTTP, st.Epoch
}

// nodeRequest sends one request to a cache node with the key path-escaped
// and the frontend's epoch.
func (f *Frontend) nodeRequest(ctx context.Context, method, base, key string, epoch uint64, body []byte, hdr http.Header) (*http.Response, error) {
	ctx, cancel := context.WithTimeout(ctx, f.cfg.NodeTimeout)
	var rd io.Reader
	if body != nil {
		rd = strings.NewReader(string(body))
	}
	req, err := http.NewRequestWithContext(ctx, method, base+"/cache/"+url.PathEscape(key), rd)
	if err != nil {
		cancel()
		return nil, err
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	req.Header.Set(node.HeaderEpoch, strconv.FormatUint(epoch, 10))
	resp, err := f.client.Do(req)
	if err != nil {
		cancel()
		return nil, err
	}
	resp.Body = cancelOnClose{resp.Body, cancel}
	return resp, nil
}

type cancelOnClose struct {
	io.ReadCloser
	cancel context.CancelFunc
}

func (c cancelOnClose) Close() error {
	err := c.ReadCloser.Close()
	c.cancel()
	return err
}

// fromCache asks the owner node for key. Any failure is a miss: the stores
// answer instead.
func (f *Frontend) fromCache(ctx context.Context, key string) (Image, bool) {
	base, epoch := f.owner(key)
	if base == "" {
		return Image{}, false
	}
	resp, err := f.nodeRequest(ctx, http.MethodGet, base, key, epoch, nil, nil)
	if err != nil {
		f.nodeErrors.Add(1)
		f.log.Debug("cache node unreachable", "node", base, "err", err)
		return Image{}, false
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		io.Copy(io.Discard, resp.Body)
		return Image{}, false
	}
	n, _ := strconv.Atoi(resp.Header.Get("Content-Length"))
	data := make([]byte, 0, n)
	buf := bytesBuffer{data}
	if _, err := io.Copy(&buf, resp.Body); err != nil {
		return Image{}, false
	}
	return Image{Data: buf.b, ContentType: resp.Header.Get("Content-Type"), ETag: resp.Header.Get("ETag"), FromCache: true}, true
}

// bytesBuffer appends to a preallocated slice.
type bytesBuffer struct{ b []byte }

func (w *bytesBuffer) Write(p []byte) (int, error) {
	w.b = append(w.b, p...)
	return len(p), nil
}

// toCache stores img under key at its owner; failures are logged, not
// returned. A fill after a read (onlyIfAbsent) never replaces a value: an
// upload of the same key may have stored a newer image meanwhile.
func (f *Frontend) toCache(ctx context.Context, key string, img Image, onlyIfAbsent bool) {
	base, epoch := f.owner(key)
	if base == "" {
		return
	}
	hdr := http.Header{"Content-Type": {img.ContentType}, "Etag": {img.ETag}}
	if onlyIfAbsent {
		hdr.Set("If-None-Match", "*")
	}
	resp, err := f.nodeRequest(ctx, http.MethodPut, base, key, epoch, img.Data, hdr)
	if err != nil {
		f.nodeErrors.Add(1)
		f.log.Debug("cache fill failed", "node", base, "err", err)
		return
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
}

// invalidate removes key from its owner's cache, retrying briefly: a
// replaced image must not be served from the cache.
func (f *Frontend) invalidate(ctx context.Context, key string) {
	for attempt := range 3 {
		base, epoch := f.owner(key)
		if base == "" {
			return
		}
		resp, err := f.nodeRequest(ctx, http.MethodDelete, base, key, epoch, nil, nil)
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode < 300 {
				return
			}
		}
		f.nodeErrors.Add(1)
		f.log.Warn("cache invalidation failed", "node", base, "attempt", attempt+1, "err", err)
	}
}

// hotGet returns the hot cache's copy of key, if any.
func (f *Frontend) hotGet(key string) (node.Item, bool) {
	if f.hot == nil {
		return node.Item{}, false
	}
	item, ok, _ := f.hot.Get(key)
	return item, ok
}

// Get returns the image stored under key: from the owner node's cache when
// it has it, otherwise from the stores, filling the cache. Concurrent
// misses of one key load it once.
func (f *Frontend) Get(ctx context.Context, key string) (Image, error) {
	if err := ValidateKey(key); err != nil {
		return Image{}, err
	}
	if img, ok := f.fromCache(ctx, key); ok {
		f.hits.Add(1)
		return img, nil
	}
	f.misses.Add(1)
	v, err, _ := f.loads.Do(key, func() (any, error) {
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
			f.toCache(lctx, key, img, true)
			return img, nil
		}
	})
	if err != nil {
		return Image{}, err
	}
	return v.(Image), nil
}

// Put stores data under key: the blob first, then the row (so a row never
// points at a missing blob), then the cache; the replaced image's blob is
// removed after the row is committed. It returns the stored entry.
func (f *Frontend) Put(ctx context.Context, key string, data []byte) (keyindex.Entry, error) {
	if err := ValidateKey(key); err != nil {
		return keyindex.Entry{}, err
	}
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
	now := time.Now().UTC()
	e := keyindex.Entry{Key: key, Object: object, ContentType: ct, Size: int64(len(data)),
		SHA256: hex.EncodeToString(sum[:]), Created: now, Updated: now}
	prev, err := f.index.Put(ctx, e)
	if err != nil {
		// No row points at the new blob: remove it.
		if derr := f.blobs.Delete(context.WithoutCancel(ctx), object); derr != nil {
			f.log.Error("removing the blob of a failed upload", "object", object, "err", derr)
		}
		return keyindex.Entry{}, fmt.Errorf("key index: %w", err)
	}
	// The cache must not keep serving the image this one replaces.
	if prev != "" {
		f.invalidate(ctx, key)
	}
	f.toCache(ctx, key, Image{Data: data, ContentType: ct, ETag: etagOf(e.SHA256)}, false)
	if prev != "" && prev != object {
		if err := f.blobs.Delete(context.WithoutCancel(ctx), prev); err != nil {
			f.log.Warn("removing a replaced blob", "object", prev, "err", err)
		}
	}
	return e, nil
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
