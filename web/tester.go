package web

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/memcache/memcache/fsm"
	"github.com/memcache/memcache/metrics"
)

// The course tester's admin API (DESIGN §9), on every replica. Answers are
// JSON with "success" as the string "true" or "false"; errors are
// {"success":"false","error":{"code":N,"message":"..."}}.

func testerError(w http.ResponseWriter, code int, format string, args ...any) {
	writeJSON(w, code, map[string]any{
		"success": "false",
		"error":   map[string]any{"code": code, "message": fmt.Sprintf(format, args...)},
	})
}

// requireToken refuses requests without "Authorization: Bearer <token>".
// An empty token leaves the admin API open (a warning is logged at start).
func requireToken(token string) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if token != "" {
				got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
				if !ok || subtle.ConstantTimeCompare([]byte(got), []byte(token)) != 1 {
					testerError(w, http.StatusUnauthorized, "missing or wrong admin token (Authorization: Bearer <token>)")
					return
				}
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
		r.Method(http.MethodPost, "/api/configure_cache", a.cluster.ForwardToLeader(a.serialized(a.apiConfigureCache)))
		// Reads answer from the leader, so they see every acknowledged write.
		r.Method(http.MethodPost, "/api/getNumNodes", a.cluster.ForwardToLeader(http.HandlerFunc(a.apiGetNumNodes)))
		r.Method(http.MethodPost, "/api/getRate", a.cluster.ForwardToLeader(http.HandlerFunc(a.apiGetRate)))
	})
}

// apiDeleteAll commits a new delete-all generation: every node clears its
// cache and the frontends delete every row and object. The answer carries
// the generation so a frontend that forwarded the call can finish the
// deletion before it answers.
func (a *API) apiDeleteAll(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), a.cfg.WriteTimeout)
	defer cancel()
	res, err := a.cluster.Apply(ctx, fsm.DeleteAll{})
	if err != nil {
		testerError(w, http.StatusServiceUnavailable, "%v", err)
		return
	}
	// A follower answers once it has applied the command itself.
	st, err := a.cluster.Wait(ctx, res.Index-1)
	if err != nil {
		testerError(w, http.StatusServiceUnavailable, "%v", err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"success": "true", "delete_gen": st.DeleteGen})
}

func (a *API) apiGetNumNodes(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, map[string]any{"success": "true", "numNodes": len(a.cluster.State().Members)})
}

// apiGetRate answers the pool's miss or hit rate over the last minute, from
// summed counts; 0 when there were no GETs (the GET count is beside it).
func (a *API) apiGetRate(w http.ResponseWriter, r *http.Request) {
	which := r.URL.Query().Get("rate")
	if which != "miss" && which != "hit" {
		testerError(w, http.StatusBadRequest, "rate must be miss or hit, got %q", which)
		return
	}
	var (
		t   metrics.Totals
		err error
	)
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
	writeJSON(w, http.StatusOK, map[string]any{"success": "true", "rate": which, "value": rate, "gets": t.Gets})
}

// PoolStats reports the pool's activity.
type PoolStats interface {
	LastMinute(ctx context.Context) (metrics.Totals, error)
}

// configureParams are the parsed query parameters of configure_cache; nil
// means "leave as it is".
type configureParams struct {
	mode                                    *string
	numNodes, cacheSize                     *int
	policy                                  *string
	expRatio, shrinkRatio, maxMiss, minMiss *float64
}

func parseConfigure(r *http.Request) (configureParams, error) {
	q := r.URL.Query()
	// The tester sends query parameters; a form body is accepted too.
	if err := r.ParseForm(); err == nil {
		for k, v := range r.PostForm {
			if _, ok := q[k]; !ok {
				q[k] = v
			}
		}
	}
	var p configureParams
	known := map[string]bool{"mode": true, "numNodes": true, "cacheSize": true, "policy": true,
		"expRatio": true, "shrinkRatio": true, "maxMiss": true, "minMiss": true}
	for k := range q {
		if !known[k] {
			return p, fmt.Errorf("unknown parameter %q", k)
		}
	}
	str := func(name string) *string {
		if v, ok := q[name]; ok {
			return &v[0]
		}
		return nil
	}
	var err error
	integer := func(name string) *int {
		v := str(name)
		if v == nil || err != nil {
			return nil
		}
		n, e := strconv.Atoi(*v)
		if e != nil {
			err = fmt.Errorf("%s %q is not a whole number", name, *v)
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
		if e != nil {
			err = fmt.Errorf("%s %q is not a number", name, *v)
			return nil
		}
		return &f
	}
	p.mode, p.policy = str("mode"), str("policy")
	p.numNodes, p.cacheSize = integer("numNodes"), integer("cacheSize")
	p.expRatio, p.shrinkRatio, p.maxMiss, p.minMiss = float("expRatio"), float("shrinkRatio"), float("maxMiss"), float("minMiss")
	return p, err
}

// apiConfigureCache validates every parameter first and changes nothing
// unless all are valid; then it commits the cache config, the scaling
// policy, and (in manual mode) the pool size. It runs on the leader.
func (a *API) apiConfigureCache(w http.ResponseWriter, r *http.Request) {
	p, err := parseConfigure(r)
	if err != nil {
		testerError(w, http.StatusBadRequest, "%v", err)
		return
	}
	st := a.cluster.State()
	cache, scaling := st.Cache, st.Scaling
	if p.cacheSize != nil {
		cache.CapacityMB = *p.cacheSize
	}
	if p.policy != nil {
		cache.Policy = fsm.Policy(*p.policy)
	}
	if p.mode != nil {
		scaling.Mode = *p.mode
	}
	if p.expRatio != nil {
		scaling.ExpandRatio = *p.expRatio
	}
	if p.shrinkRatio != nil {
		scaling.ShrinkRatio = *p.shrinkRatio
	}
	if p.maxMiss != nil {
		scaling.MaxMissRate = *p.maxMiss
	}
	if p.minMiss != nil {
		scaling.MinMissRate = *p.minMiss
	}
	if err := errors.Join(cache.Validate(), scaling.Validate()); err != nil {
		testerError(w, http.StatusBadRequest, "%v", err)
		return
	}
	if p.numNodes != nil {
		switch {
		case scaling.Mode != fsm.ModeManual:
			testerError(w, http.StatusBadRequest, "numNodes can only be set in manual mode (mode is %s)", scaling.Mode)
			return
		case *p.numNodes < fsm.MinNodes || *p.numNodes > fsm.MaxNodes:
			testerError(w, http.StatusBadRequest, "numNodes %d is outside %d..%d", *p.numNodes, fsm.MinNodes, fsm.MaxNodes)
			return
		}
	}
	ctx, cancel := context.WithTimeout(r.Context(), a.cfg.WriteTimeout)
	defer cancel()
	if cache != st.Cache {
		if _, err := a.cluster.Apply(ctx, fsm.SetCache{Config: cache}); err != nil {
			testerError(w, statusOfApply(err), "%v", err)
			return
		}
	}
	if scaling != st.Scaling {
		if _, err := a.cluster.Apply(ctx, fsm.SetScaling{Policy: scaling}); err != nil {
			testerError(w, statusOfApply(err), "%v", err)
			return
		}
	}
	if p.numNodes != nil {
		if _, err := a.pool.Resize(ctx, *p.numNodes); err != nil {
			testerError(w, statusOfApply(err), "%v", err)
			return
		}
	}
	st = a.cluster.State()
	writeJSON(w, http.StatusOK, map[string]any{"success": "true", "mode": st.Scaling.Mode,
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
	client  *http.Client
}

func (m memberStats) LastMinute(ctx context.Context) (metrics.Totals, error) {
	return metrics.Window(ctx, m.client, m.cluster.State().Members, time.Now().Add(-time.Minute))
}
