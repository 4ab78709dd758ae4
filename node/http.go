package node

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/memcache/memcache/auth"
	"github.com/memcache/memcache/internal/jsonhttp"
	"github.com/memcache/memcache/internal/pool"
	"github.com/memcache/memcache/pki"
	"github.com/memcache/memcache/region"
)

// HTTP headers of the node API.
const (
	// HeaderEpoch carries a region-map epoch: on a request, the caller's; on
	// every response, the node's. A caller that sees a larger epoch in a
	// response knows it holds an older map than the node.
	HeaderEpoch = "X-Memcache-Epoch"
	// HeaderETag is how a PUT passes the ETag stored beside the value.
	HeaderETag = "ETag"
	// HeaderGeneration carries the caller's cache generation
	// (pool.View.Generation: clear-caches plus delete-all generations). On
	// PUT it stamps the fill: the node refuses it (409) when it is below
	// the newest generation the node has cleared at. On DELETE /cache it
	// raises that floor. A PUT without it is taken as generation 0: it is
	// accepted until the node's first clear at a generation above 0 (old
	// callers and tools keep working on a fresh pool; every caller in this
	// repository sends it).
	HeaderGeneration = "X-Memcache-Generation"
)

// maxJSONBody bounds the JSON bodies of control requests.
const maxJSONBody = 64 << 10

// Handler returns the node's HTTP API:
//
//	GET    /cache/{key}  the value (raw bytes) with its Content-Type and ETag; 404 on a miss;
//	                     304 (a hit, no body) when If-None-Match is the stored ETag
//	PUT    /cache/{key}  cache the raw body (Content-Type and ETag headers are kept); 204;
//	                     with If-None-Match: * only if the key is not cached (412 if it is);
//	                     409 if the caller's epoch predates the node's ownership of the region,
//	                     or its X-Memcache-Generation is below the node's floor (see HeaderGeneration)
//	                     GET and PUT answer 503 while the node's serving lease has lapsed (lease.go)
//	                     X-Memcache-Version and X-Memcache-Fence: versioned writes under fences (fence.go);
//	                     412 too when a newer version is cached or a fence refuses the write
//	DELETE /cache/{key}  invalidate one key; 204; with X-Memcache-Fence, fence it for that upload,
//	                     with X-Memcache-Version, refuse older versions from now on, with both,
//	                     end that upload's fence at that version (fence.go);
//	                     a fence answers 503 while the node's serving lease has lapsed
//	                     GET, PUT and a fence of a region moving here answer 503 until its
//	                     previous owner holds the map that moved it (handoff.go)
//	DELETE /cache        clear every entry, raising the floor to X-Memcache-Generation if sent; 204
//	GET    /config       the cache config; PUT /config applies {"capacity_mb":N,"policy":"LRU"|"RR"}
//	GET    /regions      the region map held; PUT /regions installs a newer one
//	GET    /stats        cumulative counters, occupancy and recent samples (?since=RFC3339)
//	GET    /leases/{holder}?ack=N&hits=H  a near-cache's poll: the read lease revocations
//	                     queued for the holder, waiting for one (readlease.go); a GET of
//	                     /cache/{key} with X-Memcache-Read-Lease: {holder} is granted a lease
//	                     (X-Memcache-Read-Lease-Ms); PUT (but a fill), DELETE of a key, a clear
//	                     and a region loss revoke the leases they affect before they answer,
//	                     or answer 503 having changed nothing
//	GET    /handoff      the warm handoffs in progress (handoff.go)
//	GET    /handoff/{r}?epoch=E&gen=G[&budget=B][&key=K]  a region's previous owner streams
//	                     the entries it kept of r, most recently used first (or the one key K);
//	                     409 until it holds map E and has cleared to G, 404 if it keeps nothing
//	DELETE /handoff/{r}?epoch=E  the new owner is done: drop what was kept of r; 204
//	GET    /healthz, /readyz, /metrics
//
// Every /cache/{key} request may carry the caller's epoch (X-Memcache-Epoch):
// 409 if the node holds an older map than the caller (it is behind), 421 if
// the node does not own the key's region. Both tell the caller its view or
// the node's is behind: a GET is then a miss, and an invalidation or fill
// must be retried against a newer view, not taken as done.
//
// When the node has a cluster secret, every route but the last three requires it;
// over mutual TLS /cache and its kin take managers', frontends' and clients'
// certificates, /handoff nodes', managers' and clients'.
// Keys are path-escaped in the URL (a key may contain '/', spaces or unicode).
// Errors are JSON: {"error":{"code":N,"message":"..."}}.
func (n *Node) Handler() http.Handler {
	var mw chi.Middlewares
	if n.secret != "" {
		mw = append(mw, auth.Require(n.secret),
			// Over mutual TLS, only the managers, the frontends and
			// operators' clients call a node; another node's certificate
			// does not.
			auth.RequireRole(pki.RoleManager, pki.RoleFrontend, pki.RoleClient))
	}
	get := mw.HandlerFunc(n.timed("get", n.handleGet))
	r := chi.NewRouter()
	r.Get("/healthz", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok\n") })
	r.Get("/readyz", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok\n") })
	r.Handle("/metrics", promhttp.HandlerFor(n.registry, promhttp.HandlerOpts{}))
	r.Group(func(r chi.Router) {
		r.Use(mw...)
		r.Method(http.MethodGet, "/cache/*", get)
		r.Put("/cache/*", n.timed("put", n.handlePut))
		r.Delete("/cache/*", n.timed("invalidate", n.handleDelete))
		r.Delete("/cache", n.timed("clear", n.handleClear))
		r.Get("/config", n.handleGetConfig)
		r.Put("/config", n.handlePutConfig)
		r.Get("/regions", n.handleGetRegions)
		r.Put("/regions", n.handlePutRegions)
		r.Get("/stats", n.handleStats)
		r.Get("/leases/*", n.handlePoll)
	})
	// A warm handoff's transfer (handoff.go): between nodes, and the
	// managers and operators may read its progress.
	r.Group(func(r chi.Router) {
		if n.secret != "" {
			r.Use(auth.Require(n.secret), auth.RequireRole(pki.RoleNode, pki.RoleManager, pki.RoleClient))
		}
		r.Get("/handoff", n.handleHandoffStatus)
		r.Get("/handoff/*", n.handleHandoffGet)
		r.Delete("/handoff/*", n.handleHandoffDone)
	})
	return hotPath{get: get, mux: r}
}

// hotPath routes GET /cache/{key}, the request a node serves most, straight
// to get, the handler mux routes it to too, and every other request to mux.
// Routing by chi costs a copy of the request and a context per call.
type hotPath struct {
	get, mux http.Handler
}

func (h hotPath) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	// The path chi routes by: the escaped one when it differs from the
	// default escaping of the decoded path.
	path := r.URL.RawPath
	if path == "" {
		path = r.URL.Path
	}
	if r.Method == http.MethodGet && strings.HasPrefix(path, "/cache/") {
		h.get.ServeHTTP(w, r)
		return
	}
	h.mux.ServeHTTP(w, r)
}

// timed counts a served cache request and observes its latency.
func (n *Node) timed(op string, h http.HandlerFunc) http.HandlerFunc {
	obs := n.latency.WithLabelValues(op)
	// The value of the epoch header at the epoch last seen, shared by
	// every response until the epoch changes: nothing modifies a header
	// value in place (Header.Set and Add replace or copy the slice).
	type epochHeader struct {
		epoch uint64
		value []string
	}
	var last atomic.Pointer[epochHeader]
	return func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		e := n.epoch.Load()
		eh := last.Load()
		if eh == nil || eh.epoch != e {
			eh = &epochHeader{e, []string{strconv.FormatUint(e, 10)}}
			last.Store(eh)
		}
		w.Header()[HeaderEpoch] = eh.value
		h(w, r)
		n.requests.Add(1)
		obs.Observe(time.Since(start).Seconds())
	}
}

// cacheKey returns the unescaped key from a /cache/{key} URL.
func cacheKey(r *http.Request) (string, error) {
	if u := r.URL; u.RawPath == "" || strings.HasPrefix(u.RawPath, "/cache/") {
		// Without allocating: the key unescaped from the escaped path
		// after "/cache/" is the decoded path after "/cache/" (when
		// RawPath is set, it decodes to Path; else it is Path's default
		// escaping, which decodes back to Path).
		if key := strings.TrimPrefix(u.Path, "/cache/"); key != "" {
			return key, nil
		}
		return "", ErrEmptyKey
	}
	raw := strings.TrimPrefix(r.URL.EscapedPath(), "/cache/")
	key, err := url.PathUnescape(raw)
	if err != nil {
		return "", fmt.Errorf("key is not a valid path-escaped string: %v", err)
	}
	if key == "" {
		return "", ErrEmptyKey
	}
	return key, nil
}

// checkRoute answers for a key of region rg the node must not serve: a
// caller whose map is newer than the node's (409: the node is behind and may still hold a
// region it has lost), or a key of a region the node does not own (421).
// It reports whether the request may go on.
func (n *Node) checkRoute(w http.ResponseWriter, r *http.Request, rg int) bool {
	if v := r.Header.Get(HeaderEpoch); v != "" {
		callerEpoch, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			jsonhttp.Error(w, http.StatusBadRequest, "%s header %q is not an unsigned integer", HeaderEpoch, v)
			return false
		}
		if held := n.epoch.Load(); callerEpoch > held {
			jsonhttp.Error(w, http.StatusConflict, "node holds region map epoch %d, older than the caller's %d", held, callerEpoch)
			return false
		}
		// A write from a caller that routed by a map older than the node's
		// current ownership of the region may come from an earlier
		// ownership (the key may have been replaced at another owner
		// meanwhile): refuse it.
		if r.Method == http.MethodPut {
			if since := n.regionSince(rg); callerEpoch < since {
				jsonhttp.Error(w, http.StatusConflict, "caller's region map epoch %d is older than this node's ownership of the region (since epoch %d)", callerEpoch, since)
				return false
			}
		}
	}
	if !n.cache.Owns(rg) {
		jsonhttp.Error(w, http.StatusMisdirectedRequest, "region %d of key is not owned by node %s at epoch %d", rg, n.id, n.epoch.Load())
		return false
	}
	return true
}

func (n *Node) handleGet(w http.ResponseWriter, r *http.Request) {
	key, err := cacheKey(r)
	if err != nil {
		jsonhttp.Error(w, http.StatusBadRequest, "%v", err)
		return
	}
	rg := region.Of(key)
	if !n.checkRoute(w, r, rg) || !n.checkLease(w) || n.refusePending(w, rg) {
		return
	}
	// A read lease is recorded before the value is read (readlease.go).
	var lease time.Duration
	if id := r.Header.Get(HeaderReadLease); id != "" && validHolder(id) {
		lease = n.reads.grant(id, key, region.Of(key))
	}
	// A region being filled from its previous owner: a miss may be served
	// from there, and counts as a hit then (handoff.go).
	warming := n.handoff.receivingRegion(rg)
	item, ok, err := n.cache.get(key, !warming)
	if warming && err == nil {
		if !ok {
			item, ok = n.warmRead(r.Context(), rg, key)
		}
		n.cache.countGet(ok)
	}
	switch {
	case errors.Is(err, ErrNotOwner):
		jsonhttp.Error(w, http.StatusMisdirectedRequest, "region of key is not owned by node %s", n.id)
		return
	case err != nil:
		jsonhttp.Error(w, http.StatusBadRequest, "%v", err)
		return
	case !ok:
		jsonhttp.Error(w, http.StatusNotFound, "key is not cached")
		return
	}
	h := w.Header()
	if lease > 0 {
		h[HeaderReadLeaseMs] = []string{strconv.FormatInt(lease.Milliseconds(), 10)}
	}
	// A caller holding a copy revalidates it: 304 moves no bytes.
	if inm := r.Header.Get("If-None-Match"); inm != "" && item.ETag != "" && inm == item.ETag {
		h["Etag"] = []string{item.ETag}
		w.WriteHeader(http.StatusNotModified)
		return
	}
	// The header values share one array: one allocation, not three.
	vals := [3]string{item.ContentType, item.ETag, strconv.Itoa(len(item.Value))}
	if vals[0] == "" {
		vals[0] = "application/octet-stream"
	}
	h["Content-Type"] = vals[0:1:1]
	if item.ETag != "" {
		h["Etag"] = vals[1:2:2]
	}
	// With the length known, net/http sends the value without chunking;
	// of a value larger than its 4 KB connection buffer, all but what
	// fills the buffer after the header goes to the socket uncopied.
	h["Content-Length"] = vals[2:3:3]
	w.Write(item.Value)
}

func (n *Node) handlePut(w http.ResponseWriter, r *http.Request) {
	key, err := cacheKey(r)
	if err != nil {
		jsonhttp.Error(w, http.StatusBadRequest, "%v", err)
		return
	}
	rg := region.Of(key)
	if !n.checkRoute(w, r, rg) || !n.checkLease(w) || n.refusePending(w, rg) {
		return
	}
	gen, err := generation(r)
	if err != nil {
		jsonhttp.Error(w, http.StatusBadRequest, "%v", err)
		return
	}
	version, token, err := fenceHeaders(r)
	if err != nil {
		jsonhttp.Error(w, http.StatusBadRequest, "%v", err)
		return
	}
	capacity := n.cache.Capacity()
	if r.ContentLength > capacity {
		n.refuseTooLarge(w, key, version, "value of %d bytes exceeds the cache capacity of %d bytes; not cached", r.ContentLength, capacity)
		return
	}
	value, err := readValue(r, capacity)
	if err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			n.refuseTooLarge(w, key, version, "value exceeds the cache capacity of %d bytes; not cached", capacity)
			return
		}
		jsonhttp.Error(w, http.StatusBadRequest, "reading value: %v", err)
		return
	}
	fill := r.Header.Get("If-None-Match") == "*"
	if !fill {
		n.handoff.touch(key)
	}
	item := Item{Value: value, ContentType: r.Header.Get("Content-Type"), ETag: r.Header.Get(HeaderETag), Version: version}
	stored := true
	var ran bool
	var floor uint64
	write := func() {
		ran, floor = n.fill(gen, func() {
			admitted := n.admit(key, version, token, fill, func() bool {
				stored, err = n.cache.put(key, item, fill)
				return stored
			})
			if !admitted && err == nil {
				stored = false
			}
		})
	}
	if fill {
		write() // a fill changes no holder's copy (readlease.go)
	} else if rerr := n.reads.revokeKey(r.Context(), key, write); rerr != nil {
		n.refuseUnrevoked(w, rerr)
		return
	}
	switch {
	case !ran:
		jsonhttp.Error(w, http.StatusConflict, "fill of cache generation %d refused: the node cleared its cache at generation %d since (the value may predate a clear or delete-all); not cached", gen, floor)
	case errors.Is(err, ErrTooLarge):
		n.refuseTooLarge(w, key, version, "%v; not cached", err)
	case errors.Is(err, ErrNotOwner):
		jsonhttp.Error(w, http.StatusMisdirectedRequest, "region of key is not owned by node %s", n.id)
	case err != nil:
		jsonhttp.Error(w, http.StatusBadRequest, "%v", err)
	case !stored:
		jsonhttp.Error(w, http.StatusPreconditionFailed, "not cached: the key is cached already (If-None-Match: *), a newer version is, or an upload fences it")
	default:
		w.WriteHeader(http.StatusNoContent)
	}
}

// readValue reads a request body of at most limit bytes into a slice of
// exactly its length, so the cache holds no slack capacity.
func readValue(r *http.Request, limit int64) ([]byte, error) {
	if r.ContentLength >= 0 {
		buf := make([]byte, r.ContentLength)
		if _, err := io.ReadFull(r.Body, buf); err != nil {
			return nil, err
		}
		return buf, nil
	}
	b, err := io.ReadAll(http.MaxBytesReader(nil, r.Body, limit))
	if err != nil {
		return nil, err
	}
	return append([]byte(nil), b...), nil
}

// generation returns the X-Memcache-Generation of r, 0 when absent.
func generation(r *http.Request) (uint64, error) {
	v := r.Header.Get(HeaderGeneration)
	if v == "" {
		return 0, nil
	}
	g, err := strconv.ParseUint(v, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%s header %q is not an unsigned integer", HeaderGeneration, v)
	}
	return g, nil
}

func (n *Node) handleDelete(w http.ResponseWriter, r *http.Request) {
	key, err := cacheKey(r)
	if err != nil {
		jsonhttp.Error(w, http.StatusBadRequest, "%v", err)
		return
	}
	// An invalidation sent to a node that is not (or not yet) the owner
	// did not reach the copy that would be served: say so.
	rg := region.Of(key)
	if !n.checkRoute(w, r, rg) {
		return
	}
	version, token, err := fenceHeaders(r)
	if err != nil {
		jsonhttp.Error(w, http.StatusBadRequest, "%v", err)
		return
	}
	// A fence must hold at the node that serves the key: one whose lease
	// has lapsed may have lost the region to a node the fence never
	// reached, so it refuses (the upload then stores nothing).
	if (token != "" || version > 0) && (!n.checkLease(w) || n.refusePending(w, region.Of(key))) {
		return
	}
	n.handoff.touch(key)
	err = n.reads.revokeKey(r.Context(), key, func() {
		switch {
		case token != "" && version > 0:
			n.release(key, token, version)
		case token != "":
			n.block(key, token)
		case version > 0:
			n.raise(key, version)
		default:
			n.cache.Delete(key)
		}
	})
	if err != nil {
		n.refuseUnrevoked(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (n *Node) handleClear(w http.ResponseWriter, r *http.Request) {
	gen, err := generation(r)
	if err != nil {
		jsonhttp.Error(w, http.StatusBadRequest, "%v", err)
		return
	}
	if err := n.ClearAt(r.Context(), gen); err != nil {
		n.refuseUnrevoked(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// refuseUnrevoked answers 503 for a change not made: the caller gave up
// before the read leases on what it changes were revoked.
func (n *Node) refuseUnrevoked(w http.ResponseWriter, err error) {
	w.Header().Set("Retry-After", "1")
	jsonhttp.Error(w, http.StatusServiceUnavailable, "%v; nothing was changed", err)
}

func (n *Node) handleGetConfig(w http.ResponseWriter, _ *http.Request) {
	jsonhttp.Write(w, http.StatusOK, n.cache.Config())
}

// decodeJSON decodes a bounded JSON body into v, refusing unknown fields and
// trailing data.
func decodeJSON(r *http.Request, v any) error {
	dec := json.NewDecoder(io.LimitReader(r.Body, maxJSONBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("malformed JSON body: %v", err)
	}
	if dec.More() {
		return errors.New("malformed JSON body: trailing data")
	}
	return nil
}

func (n *Node) handlePutConfig(w http.ResponseWriter, r *http.Request) {
	var body struct {
		CapacityMB *int         `json:"capacity_mb"`
		Policy     *pool.Policy `json:"policy"`
	}
	if err := decodeJSON(r, &body); err != nil {
		jsonhttp.Error(w, http.StatusBadRequest, "%v", err)
		return
	}
	cfg := n.cache.Config()
	if body.CapacityMB != nil {
		cfg.CapacityMB = *body.CapacityMB
	}
	if body.Policy != nil {
		cfg.Policy = *body.Policy
	}
	if err := n.cache.SetConfig(cfg); err != nil {
		jsonhttp.Error(w, http.StatusBadRequest, "%v", err)
		return
	}
	n.log.Info("cache config applied", "capacity_mb", cfg.CapacityMB, "policy", cfg.Policy)
	jsonhttp.Write(w, http.StatusOK, cfg)
}

func (n *Node) handleGetRegions(w http.ResponseWriter, _ *http.Request) {
	jsonhttp.Write(w, http.StatusOK, n.Regions())
}

func (n *Node) handlePutRegions(w http.ResponseWriter, r *http.Request) {
	var m Regions
	if err := decodeJSON(r, &m); err != nil {
		jsonhttp.Error(w, http.StatusBadRequest, "%v", err)
		return
	}
	dropped, err := n.SetRegions(r.Context(), m)
	if errors.Is(err, ErrRevocation) {
		w.Header().Set("Retry-After", "1")
		jsonhttp.Error(w, http.StatusServiceUnavailable, "region map epoch %d applied, but %v: send it again to wait for them", m.Epoch, err)
		return
	}
	if err != nil {
		jsonhttp.Error(w, http.StatusConflict, "%v", err)
		return
	}
	jsonhttp.Write(w, http.StatusOK, map[string]any{"epoch": m.Epoch, "owned": m.Owners.Owned(n.id), "dropped": dropped})
}

// Stats is the body of GET /stats.
type Stats struct {
	ID       string           `json:"id"`
	Epoch    uint64           `json:"epoch"`
	Config   pool.CacheConfig `json:"config"`
	Counters Counters         `json:"counters"`
	Samples  []Sample         `json:"samples"`
	Handoff  HandoffStatus    `json:"handoff"`
	Time     time.Time        `json:"time"`
}

func (n *Node) handleStats(w http.ResponseWriter, r *http.Request) {
	var since time.Time
	if v := r.URL.Query().Get("since"); v != "" {
		t, err := time.Parse(time.RFC3339Nano, v)
		if err != nil {
			jsonhttp.Error(w, http.StatusBadRequest, "since %q is not an RFC 3339 time", v)
			return
		}
		since = t
	}
	jsonhttp.Write(w, http.StatusOK, Stats{
		ID: n.id, Epoch: n.Epoch(), Config: n.cache.Config(),
		Counters: n.Counters(), Samples: n.Samples(since), Handoff: n.Handoffs(), Time: time.Now(),
	})
}
