package web

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"mime"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/memcache/memcache/auth"
	"github.com/memcache/memcache/fsm"
	"github.com/memcache/memcache/internal/jsonhttp"
	"github.com/memcache/memcache/metrics"
	"github.com/memcache/memcache/node"
)

// The course tester's admin API (DESIGN §9), on every replica. Answers are
// JSON with "success" as the string "true" or "false"; errors are
// {"success":"false","error":{"code":N,"message":"..."}} (jsonhttp.TesterError).

// requireToken refuses requests without "Authorization: Bearer <token>".
// An empty token leaves the admin API open (a warning is logged at start).
func requireToken(token string) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if !auth.ValidAdmin(r, token) {
				jsonhttp.TesterError(w, http.StatusUnauthorized, "missing or wrong admin token (Authorization: Bearer <token>)")
				return
			}
			next.ServeHTTP(w, r)
		})
	}
}

// testerRoutes mounts /api/... on r.
func (a *API) testerRoutes(r chi.Router) {
	r.Group(func(r chi.Router) {
		r.Use(requireToken(a.cfg.AdminToken))
		r.Post("/api/delete_all", a.apiDeleteAll)
		r.Method(http.MethodPost, "/api/configure_cache", a.cluster.ForwardToLeader(http.HandlerFunc(a.apiConfigureCache)))
		// Reads answer from the leader, so they see every acknowledged write.
		r.Method(http.MethodPost, "/api/getNumNodes", a.cluster.ForwardToLeader(http.HandlerFunc(a.apiGetNumNodes)))
		r.Method(http.MethodPost, "/api/getRate", a.cluster.ForwardToLeader(http.HandlerFunc(a.apiGetRate)))
	})
}

// apiDeleteAll commits a new delete-all generation and answers 200 only
// when a frontend has deleted every row, cached copy and object (deleteAll);
// 503 if it could not confirm that (the generation is committed and the
// frontends carry it out when they see it). The answer carries the
// generation.
func (a *API) apiDeleteAll(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), a.cfg.WriteTimeout)
	defer cancel()
	res, gen, err := a.deleteAll(ctx)
	if err != nil {
		markCommitted(w, err, res)
		jsonhttp.TesterError(w, statusOfCarryOut(err), "%v", err)
		return
	}
	jsonhttp.Write(w, http.StatusOK, map[string]any{"success": "true", "delete_gen": gen})
}

// apiGetNumNodes answers the pool's size as of every resize answered
// before the call (it runs on the leader, after a barrier).
func (a *API) apiGetNumNodes(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), a.cfg.WriteTimeout)
	defer cancel()
	st, err := a.cluster.ConsistentState(ctx)
	if err != nil {
		w.Header().Set("Retry-After", "1")
		jsonhttp.TesterError(w, http.StatusServiceUnavailable, "%v", err)
		return
	}
	jsonhttp.Write(w, http.StatusOK, map[string]any{"success": "true", "numNodes": len(st.Members)})
}

// apiGetRate answers the pool's miss or hit rate over the last minute, from
// summed counts; 0 when there were no GETs (the GET count is beside it).
func (a *API) apiGetRate(w http.ResponseWriter, r *http.Request) {
	q, err := strictParams(r, "rate")
	if err != nil {
		jsonhttp.TesterError(w, http.StatusBadRequest, "%v", err)
		return
	}
	which := q["rate"]
	if which != "miss" && which != "hit" {
		jsonhttp.TesterError(w, http.StatusBadRequest, "rate must be miss or hit, got %q", which)
		return
	}
	var t metrics.Totals
	if a.metrics != nil {
		// The same figures the UI and the scaler read.
		t, err = a.metrics.Totals(r.Context(), time.Now(), time.Minute)
	} else {
		t, err = a.stats.LastMinute(r.Context())
	}
	if err != nil {
		a.log.Warn("pool statistics incomplete", "err", err)
	}
	rate, _ := t.MissRate()
	if which == "hit" {
		rate, _ = t.HitRate()
	}
	jsonhttp.Write(w, http.StatusOK, map[string]any{"success": "true", "rate": which, "value": rate, "gets": t.Gets})
}

// PoolStats reports the pool's activity.
type PoolStats interface {
	LastMinute(ctx context.Context) (metrics.Totals, error)
}

// errBadParams marks a tester request whose parameters are refused: the
// answer is 400 and nothing changes.
var errBadParams = errors.New("bad parameters")

// maxParamsBody bounds a form body of the tester API.
const maxParamsBody = 64 << 10

// strictParams returns the parameters of r, from its query and, if it has
// one, its application/x-www-form-urlencoded body. Unlike r.URL.Query() and
// r.ParseForm, which drop pairs they cannot decode, it refuses (with an
// error wrapping errBadParams) a malformed pair, a parameter given twice
// (in either place or both), and a name not in known.
func strictParams(r *http.Request, known ...string) (map[string]string, error) {
	out := map[string]string{}
	add := func(where, raw string) error {
		vs, err := url.ParseQuery(raw)
		if err != nil {
			return fmt.Errorf("%w: malformed %s: %v", errBadParams, where, err)
		}
		for k, v := range vs {
			if !slices.Contains(known, k) {
				return fmt.Errorf("%w: unknown parameter %q (known: %s)", errBadParams, k, strings.Join(known, ", "))
			}
			if _, dup := out[k]; dup || len(v) > 1 {
				return fmt.Errorf("%w: parameter %q is given more than once", errBadParams, k)
			}
			out[k] = v[0]
		}
		return nil
	}
	if err := add("query", r.URL.RawQuery); err != nil {
		return nil, err
	}
	if ct, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); ct == "application/x-www-form-urlencoded" {
		body, err := io.ReadAll(io.LimitReader(r.Body, maxParamsBody+1))
		if err != nil {
			return nil, fmt.Errorf("%w: reading the form: %v", errBadParams, err)
		}
		if len(body) > maxParamsBody {
			return nil, fmt.Errorf("%w: the form is over %d bytes", errBadParams, maxParamsBody)
		}
		if err := add("form body", string(body)); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// configureParams are the parsed parameters of configure_cache: the patch
// of the cache config and scaling policy, and the pool size (nil: leave it).
type configureParams struct {
	patch    fsm.Configure
	numNodes *int
}

func parseConfigure(r *http.Request) (configureParams, error) {
	var p configureParams
	q, err := strictParams(r, "mode", "numNodes", "cacheSize", "policy", "expRatio", "shrinkRatio", "maxMiss", "minMiss")
	if err != nil {
		return p, err
	}
	str := func(name string) *string {
		if v, ok := q[name]; ok {
			return &v
		}
		return nil
	}
	integer := func(name string) *int {
		v := str(name)
		if v == nil || err != nil {
			return nil
		}
		n, e := strconv.Atoi(*v)
		if e != nil {
			err = fmt.Errorf("%w: %s %q is not a whole number", errBadParams, name, *v)
			return nil
		}
		return &n
	}
	float := func(name string) *float64 {
		v := str(name)
		if v == nil || err != nil {
			return nil
		}
		f, e := strconv.ParseFloat(*v, 64)
		if e != nil || math.IsNaN(f) || math.IsInf(f, 0) {
			err = fmt.Errorf("%w: %s %q is not a number", errBadParams, name, *v)
			return nil
		}
		return &f
	}
	p.patch = fsm.Configure{
		Mode: str("mode"), Policy: str("policy"), CapacityMB: integer("cacheSize"),
		ExpandRatio: float("expRatio"), ShrinkRatio: float("shrinkRatio"),
		MaxMissRate: float("maxMiss"), MinMissRate: float("minMiss"),
	}
	p.numNodes = integer("numNodes")
	return p, err
}

// apiConfigureCache checks every parameter first and changes nothing
// unless all are valid; then it commits the cache config and scaling policy
// as one fsm.Configure patch (merged with the current values inside Apply,
// so a concurrent update of other fields is kept), and (in manual mode)
// resizes the pool. It runs on the leader, where the Pool runs.
func (a *API) apiConfigureCache(w http.ResponseWriter, r *http.Request) {
	p, err := parseConfigure(r)
	if err != nil {
		jsonhttp.TesterError(w, http.StatusBadRequest, "%v", err)
		return
	}
	st := a.cluster.State()
	mode := st.Scaling.Mode
	if !p.patch.Empty() {
		if err := p.patch.Validate(st); err != nil {
			jsonhttp.TesterError(w, http.StatusBadRequest, "%v", err)
			return
		}
		_, scaling := p.patch.Merge(st.Cache, st.Scaling)
		mode = scaling.Mode
	}
	if p.numNodes != nil {
		switch {
		case mode != fsm.ModeManual:
			jsonhttp.TesterError(w, http.StatusBadRequest, "numNodes can only be set in manual mode (mode is %s)", mode)
			return
		case *p.numNodes < fsm.MinNodes || *p.numNodes > fsm.MaxNodes:
			jsonhttp.TesterError(w, http.StatusBadRequest, "numNodes %d is outside %d..%d", *p.numNodes, fsm.MinNodes, fsm.MaxNodes)
			return
		}
	}
	ctx, cancel := context.WithTimeout(r.Context(), a.cfg.WriteTimeout)
	defer cancel()
	if !p.patch.Empty() {
		if _, err := a.cluster.Apply(ctx, p.patch); err != nil {
			jsonhttp.TesterError(w, statusOfApply(err), "%v", err)
			return
		}
	}
	if p.numNodes != nil {
		// The mode may have changed since it was checked; the Pool's own
		// epoch precondition keeps the resize from undoing another.
		if m := a.cluster.State().Scaling.Mode; m != fsm.ModeManual {
			jsonhttp.TesterError(w, http.StatusConflict, "numNodes can only be set in manual mode (the mode became %s meanwhile)", m)
			return
		}
		if _, err := a.pool.Resize(ctx, *p.numNodes); err != nil {
			jsonhttp.TesterError(w, statusOfApply(err), "%v", err)
			return
		}
	}
	st = a.cluster.State()
	jsonhttp.Write(w, http.StatusOK, map[string]any{"success": "true", "mode": st.Scaling.Mode,
		"numNodes": len(st.Members), "cacheSize": st.Cache.CapacityMB, "policy": st.Cache.Policy})
}

func statusOfApply(err error) int {
	if errors.Is(err, fsm.ErrInvalidCommand) {
		return http.StatusBadRequest
	}
	return http.StatusServiceUnavailable
}

// memberStats is the PoolStats that asks the pool's nodes directly.
type memberStats struct {
	cluster Cluster
	nodes   *node.Client
}

func (m memberStats) LastMinute(ctx context.Context) (metrics.Totals, error) {
	return metrics.Window(ctx, m.nodes, m.cluster.State().Members, time.Now().Add(-time.Minute))
}
