package frontend

import (
	"context"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/go-chi/chi/v5/middleware"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/memcache/memcache/auth"
	"github.com/memcache/memcache/internal/jsonhttp"
	"github.com/memcache/memcache/pki"
)

// Handler returns the frontend's HTTP API and pages:
//
//	GET  /, POST /upload      upload page
//	GET  /retrieve?key=K      retrieve page: the image and whether it came from the cache
//	GET  /keys                every key, with thumbnails
//	GET  /images/{key}        the image bytes, Content-Type, ETag; 304 on If-None-Match
//	POST /api/upload          form key + file -> {"success":"true","key":K}
//	POST /api/list_keys       {"success":"true","keys":[...]}
//	POST /api/key/{key}       {"success":"true","content":BASE64}
//	POST /api/delete_all, /api/configure_cache, /api/getNumNodes, /api/getRate
//	                          forwarded to a manager replica (admin token required there)
//	GET  /healthz, /readyz, /metrics (readyz: 503 until the first pool view, or while the key index fails)
func (f *Frontend) Handler() http.Handler {
	reg := prometheus.NewRegistry()
	latency := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "memcache_frontend_request_duration_seconds", Help: "Latency of frontend HTTP requests, by route.",
		Buckets: prometheus.ExponentialBuckets(0.0001, 2.5, 12),
	}, []string{"route", "code"})
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), latency,
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "memcache_frontend_cache_hits_total", Help: "Reads answered by a cache node."},
			func() float64 { return float64(f.hits.Load()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "memcache_frontend_near_hits_total", Help: "Reads answered from the near-cache under a read lease (counted in cache_hits_total too)."},
			func() float64 {
				if f.near == nil {
					return 0
				}
				return float64(f.near.served.Load())
			}),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "memcache_frontend_cache_misses_total", Help: "Reads answered by the stores."},
			func() float64 { return float64(f.misses.Load()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "memcache_frontend_node_errors_total", Help: "Failed requests to cache nodes."},
			func() float64 { return float64(f.nodeErrors.Load()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "memcache_frontend_pool_epoch", Help: "Epoch of the pool state the frontend routes by."},
			func() float64 { return float64(f.Pool().Epoch) }),
	)
	r := chi.NewRouter()
	r.Use(func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			start := time.Now()
			ww := middleware.NewWrapResponseWriter(w, r.ProtoMajor)
			next.ServeHTTP(ww, r)
			route := chi.RouteContext(r.Context()).RoutePattern()
			latency.WithLabelValues(route, strconv.Itoa(ww.Status())).Observe(time.Since(start).Seconds())
		})
	})
	r.Get("/healthz", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok\n") })
	r.Get("/readyz", func(w http.ResponseWriter, r *http.Request) {
		// Ready once the frontend holds a pool view at least as new as the
		// cluster's when it started (the watch's first view is a
		// consistent read), and while the key index answers (every page
		// and API call needs it).
		if f.view() == nil {
			http.Error(w, "no pool view yet: waiting for the managers", http.StatusServiceUnavailable)
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		if _, err := f.index.Count(ctx); err != nil {
			http.Error(w, "key index unavailable: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, "ok\n")
	})
	r.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))

	r.Get("/", f.pageUpload)
	r.Post("/upload", f.pageUploadPost)
	r.Get("/retrieve", f.pageRetrieve)
	r.Get("/keys", f.pageKeys)
	r.Get("/images/*", f.serveImage)

	r.Post("/api/upload", f.apiUpload)
	r.Post("/api/list_keys", f.apiListKeys)
	r.Post("/api/key/*", f.apiKey)
	r.Post("/api/delete_all", f.apiDeleteAll)
	r.Post("/api/configure_cache", f.apiAdmin)
	r.Post("/api/getNumNodes", f.apiAdmin)
	r.Post("/api/getRate", f.apiAdmin)
	return r
}

// InternalHandler returns the endpoints managers call, which belong on the
// frontend's cluster listener (mutual TLS):
//
//	POST /internal/v1/delete_all  {"generation":G}: carry out a delete-all (deleteall.go)
//	GET  /internal/v1/view        the pool view this frontend routes by (pool.View)
//	GET  /healthz
//
// The delete-all route also requires the cluster secret if one is set. A
// frontend with neither TLS nor a secret would take it from anyone who
// reaches the port: the route is then off, and the frontend carries out
// delete-alls only from its pool-state watch.
func (f *Frontend) InternalHandler() http.Handler {
	r := chi.NewRouter()
	r.Get("/healthz", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok\n") })
	r.With(auth.Require(f.cfg.Secret)).Get("/internal/v1/view", func(w http.ResponseWriter, _ *http.Request) {
		jsonhttp.Write(w, http.StatusOK, f.Pool())
	})
	if f.cfg.Secret != "" || f.cfg.TLS != nil {
		// Only a manager carries out a delete-all through a frontend.
		r.With(auth.Require(f.cfg.Secret), auth.RequireRole(pki.RoleManager)).Post(DeleteAllPath, f.handleDeleteAll)
	} else {
		r.Post(DeleteAllPath, func(w http.ResponseWriter, _ *http.Request) {
			jsonhttp.TesterError(w, http.StatusForbidden, "this frontend has neither TLS nor a cluster secret: it carries out delete-all only from its pool-state watch")
		})
	}
	return r
}
