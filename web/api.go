// Package web serves the manager's admin API and UI on every replica;
// writes are committed through the Raft leader.
package web

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"strconv"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/memcache/memcache/auth"
	"github.com/memcache/memcache/cluster"
	"github.com/memcache/memcache/fsm"
	"github.com/memcache/memcache/internal/jsonhttp"
	"github.com/memcache/memcache/metrics"
	"github.com/memcache/memcache/node"
	"github.com/memcache/memcache/pki"
)

// Cluster is what the API needs of the Raft replica (implemented by *cluster.Cluster).
type Cluster interface {
	Apply(ctx context.Context, cmd fsm.Command) (fsm.Result, error)
	State() fsm.State
	// ConsistentState returns the leader's state after a barrier: every
	// write committed before the call is in it. It fails off the leader.
	ConsistentState(ctx context.Context) (fsm.State, error)
	// Wait returns the state once this replica has applied index after+1.
	Wait(ctx context.Context, after uint64) (fsm.State, error)
	ForwardToLeader(next http.Handler) http.Handler
	// Status is this replica's view of the Raft group (the UI shows it).
	Status() cluster.Status
	// Frontends returns the HTTP base URLs of the frontends known alive.
	Frontends() []string
}

// Pool resizes the cache-node pool; it runs on the leader (implemented by *scaler.Pool).
type Pool interface {
	Resize(ctx context.Context, n int) (fsm.Result, error)
}

// Config configures the API.
type Config struct {
	// Secret is the cluster secret carried on calls to nodes and frontends.
	Secret string
	// TLS, if set, is the replica's certificate of the cluster CA, presented
	// on calls to nodes and frontends (mutual TLS).
	TLS *pki.TLS
	// TrustedProxies are the addresses of reverse proxies whose
	// X-Forwarded-Proto header is believed: a UI session cookie is Secure
	// when the request came over TLS, or through one of them over https.
	TrustedProxies []netip.Prefix
	// WriteTimeout bounds a write, including a resize that starts nodes. If zero, 90 s.
	WriteTimeout time.Duration
	// AdminToken is the bearer token the tester's admin API requires, and
	// the password of the UI's login; sessions are signed with a key derived
	// from it (and Secret), so every replica accepts them. If blank, both are
	// open (the UI's forms are still CSRF-protected).
	AdminToken string
}

// API is the manager's admin API.
type API struct {
	cfg     Config
	cluster Cluster
	pool    Pool
	stats   PoolStats
	metrics metrics.Reader // the UI's charts; nil: none
	client  *http.Client   // carries the cluster secret, for the frontends' delete-all
	// nodes calls the pool's nodes, with the cluster secret. Its Timeout is
	// the longest use's (nodeClearTimeout); shorter uses (statsTimeout, the
	// tester's rate window) bound their call's context.
	nodes *node.Client
	key   []byte // signs UI sessions and CSRF tokens
	pages map[string]*template.Template
	log   *slog.Logger
}

// New returns the admin API and UI. m feeds the UI's charts (if nil, the
// charts stay empty and say so).
func New(cfg Config, c Cluster, p Pool, m metrics.Reader, log *slog.Logger) *API {
	if cfg.WriteTimeout <= 0 {
		cfg.WriteTimeout = 90 * time.Second
	}
	log = log.With("component", "web")
	if cfg.AdminToken == "" {
		log.Warn("no admin token: the admin API is open to anyone who can reach this replica")
	}
	client := &http.Client{Transport: &auth.Transport{Secret: cfg.Secret, Base: pki.Transport(cfg.TLS)}}
	nodes := node.NewClient(node.ClientConfig{HTTPClient: client, Timeout: nodeClearTimeout})
	return &API{cfg: cfg, cluster: c, pool: p, stats: memberStats{c, nodes}, metrics: m, client: client, nodes: nodes,
		key: deriveKey(cfg.AdminToken, cfg.Secret), pages: parsePages(), log: log}
}

// Routes mounts the API on r:
//
//	GET  /v1/config           {"cache":{...},"scaling":{...}}: read on the leader after a
//	                          barrier (followers forward it), so it reflects every write
//	                          answered before it; ?stale=true reads this replica's copy
//	PUT  /v1/config/cache     {"capacity_mb":N,"policy":"LRU"|"RR"} (fields optional, at least one)
//	PUT  /v1/config/scaling   {"mode":..,"max_miss_rate":..,"min_miss_rate":..,"expand_ratio":..,"shrink_ratio":..} (fields optional, at least one)
//	POST /v1/pool/resize      {"nodes":N}  (served by the leader; followers forward it)
//	POST /v1/pool/clear       clear every node's cache: 200 once every member confirmed,
//	                          503 (the clear is committed; nodes clear when they see it) otherwise
//
// (the admin token required, as on the tester's admin API), and the
// tester's /api/... (tester.go) and the UI under /ui (ui.go).
func (a *API) Routes(r chi.Router) {
	r.Group(func(r chi.Router) {
		r.Use(requireToken(a.cfg.AdminToken))
		r.Method(http.MethodGet, "/v1/config", a.consistentRead(a.handleGetConfig))
		// Partial updates are fsm.Configure patches, merged with the
		// current config inside Apply: none is lost, on any replica.
		r.Put("/v1/config/cache", a.handleSetCache)
		r.Put("/v1/config/scaling", a.handleSetScaling)
		r.Post("/v1/pool/clear", a.handleClear)
		r.Method(http.MethodPost, "/v1/pool/resize", a.cluster.ForwardToLeader(http.HandlerFunc(a.handleResize)))
	})
	a.testerRoutes(r)
	a.uiRoutes(r)
}

// writeApplyError maps a failed write to its status: refused input is the
// caller's fault (400), no leader or no nodes is the cluster's (503).
func writeApplyError(w http.ResponseWriter, err error) {
	switch {
	case errors.Is(err, fsm.ErrInvalidCommand), errors.Is(err, errInvalidBody):
		jsonhttp.Error(w, http.StatusBadRequest, "%v", err)
	default:
		w.Header().Set("Retry-After", "1")
		jsonhttp.Error(w, http.StatusServiceUnavailable, "%v", err)
	}
}

var errInvalidBody = errors.New("malformed JSON body")

// decode reads a bounded JSON body into v, refusing unknown fields.
func decode(r *http.Request, v any) error {
	dec := json.NewDecoder(io.LimitReader(r.Body, 64<<10))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%w: %v", errInvalidBody, err)
	}
	if dec.More() {
		return fmt.Errorf("%w: trailing data", errInvalidBody)
	}
	return nil
}

func (a *API) apply(w http.ResponseWriter, r *http.Request, cmd fsm.Command) {
	ctx, cancel := context.WithTimeout(r.Context(), a.cfg.WriteTimeout)
	defer cancel()
	res, err := a.cluster.Apply(ctx, cmd)
	if err != nil {
		writeApplyError(w, err)
		return
	}
	jsonhttp.Write(w, http.StatusOK, map[string]any{"index": res.Index, "epoch": res.Epoch})
}

// consistentRead serves h with the state a linearizable read sees: on the
// leader after a barrier, followers forwarding to it. With ?stale=true it
// serves this replica's copy instead, which answers during an election or
// a partition but may miss recent writes.
func (a *API) consistentRead(h func(http.ResponseWriter, *http.Request, fsm.State)) http.Handler {
	consistent := a.cluster.ForwardToLeader(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), a.cfg.WriteTimeout)
		defer cancel()
		st, err := a.cluster.ConsistentState(ctx)
		if err != nil {
			w.Header().Set("Retry-After", "1")
			jsonhttp.Error(w, http.StatusServiceUnavailable, "%v", err)
			return
		}
		h(w, r, st)
	}))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		stale := false
		if v := r.URL.Query().Get("stale"); v != "" {
			var err error
			if stale, err = strconv.ParseBool(v); err != nil {
				jsonhttp.Error(w, http.StatusBadRequest, "stale=%q: want true or false", v)
				return
			}
		}
		if stale {
			h(w, r, a.cluster.State())
			return
		}
		consistent.ServeHTTP(w, r)
	})
}

func (a *API) handleGetConfig(w http.ResponseWriter, _ *http.Request, st fsm.State) {
	jsonhttp.Write(w, http.StatusOK, map[string]any{"cache": st.Cache, "scaling": st.Scaling})
}

func (a *API) handleSetCache(w http.ResponseWriter, r *http.Request) {
	var body struct {
		CapacityMB *int    `json:"capacity_mb"`
		Policy     *string `json:"policy"`
	}
	if err := decode(r, &body); err != nil {
		writeApplyError(w, err)
		return
	}
	a.apply(w, r, fsm.Configure{CapacityMB: body.CapacityMB, Policy: body.Policy})
}

func (a *API) handleSetScaling(w http.ResponseWriter, r *http.Request) {
	var body struct {
		Mode        *string  `json:"mode"`
		MaxMissRate *float64 `json:"max_miss_rate"`
		MinMissRate *float64 `json:"min_miss_rate"`
		ExpandRatio *float64 `json:"expand_ratio"`
		ShrinkRatio *float64 `json:"shrink_ratio"`
	}
	if err := decode(r, &body); err != nil {
		writeApplyError(w, err)
		return
	}
	a.apply(w, r, fsm.Configure{Mode: body.Mode, MaxMissRate: body.MaxMissRate, MinMissRate: body.MinMissRate,
		ExpandRatio: body.ExpandRatio, ShrinkRatio: body.ShrinkRatio})
}

func (a *API) handleClear(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), a.cfg.WriteTimeout)
	defer cancel()
	res, err := a.clearCaches(ctx)
	if err != nil {
		markCommitted(w, err, res)
		jsonhttp.Error(w, statusOfCarryOut(err), "%v", err)
		return
	}
	jsonhttp.Write(w, http.StatusOK, map[string]any{"index": res.Index, "epoch": res.Epoch})
}

func (a *API) handleResize(w http.ResponseWriter, r *http.Request) {
	var body struct {
		Nodes *int `json:"nodes"`
	}
	if err := decode(r, &body); err != nil {
		writeApplyError(w, err)
		return
	}
	if body.Nodes == nil {
		jsonhttp.Error(w, http.StatusBadRequest, "nodes is required")
		return
	}
	if *body.Nodes < fsm.MinNodes || *body.Nodes > fsm.MaxNodes {
		jsonhttp.Error(w, http.StatusBadRequest, "%d nodes is outside %d..%d", *body.Nodes, fsm.MinNodes, fsm.MaxNodes)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), a.cfg.WriteTimeout)
	defer cancel()
	res, err := a.pool.Resize(ctx, *body.Nodes)
	if err != nil {
		writeApplyError(w, err)
		return
	}
	st := a.cluster.State()
	jsonhttp.Write(w, http.StatusOK, map[string]any{"index": res.Index, "epoch": res.Epoch, "nodes": len(st.Members), "members": st.Members})
}
