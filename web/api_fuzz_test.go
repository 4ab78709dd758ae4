package web_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/go-chi/chi/v5"

	"github.com/memcache/memcache/cluster"
	"github.com/memcache/memcache/frontend"
	"github.com/memcache/memcache/fsm"
	"github.com/memcache/memcache/node"
	"github.com/memcache/memcache/web"
)

// swapCluster is a web.Cluster that passes every call to the fakeCluster
// it currently holds, so that one API can face a fresh replica per input.
type swapCluster struct{ cur atomic.Pointer[fakeCluster] }

func (s *swapCluster) Apply(ctx context.Context, cmd fsm.Command) (fsm.Result, error) {
	return s.cur.Load().Apply(ctx, cmd)
}
func (s *swapCluster) State() fsm.State { return s.cur.Load().State() }
func (s *swapCluster) ConsistentState(ctx context.Context) (fsm.State, error) {
	return s.cur.Load().ConsistentState(ctx)
}
func (s *swapCluster) Wait(ctx context.Context, after uint64) (fsm.State, error) {
	return s.cur.Load().Wait(ctx, after)
}
func (s *swapCluster) ForwardToLeader(next http.Handler) http.Handler { return next }
func (s *swapCluster) Status() cluster.Status                         { return cluster.Status{} }
func (s *swapCluster) Frontends() []string                            { return nil }

// nodePool is a web.Pool that resizes the pool for real, through the
// cluster, with members n1..nN that are all served by one real cache node.
type nodePool struct {
	c    *swapCluster
	url  string
	mu   sync.Mutex
	asks []int
}

func (p *nodePool) Resize(ctx context.Context, n int) (fsm.Result, error) {
	p.mu.Lock()
	p.asks = append(p.asks, n)
	p.mu.Unlock()
	ms := make([]fsm.Member, n)
	for i := range ms {
		ms[i] = fsm.Member{ID: fmt.Sprintf("n%d", i+1), HTTP: p.url}
	}
	return p.c.Apply(ctx, fsm.Resize{Members: ms})
}

func (p *nodePool) calls() []int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]int(nil), p.asks...)
}

// httpRequest reads the request a client sends as these bytes, as the
// manager's HTTP server would; ok is false for bytes the server itself
// refuses (its handler never sees them).
func httpRequest(method, target string, hdr [][2]string, body []byte) (*http.Request, bool) {
	if method == "" || strings.ContainsAny(method, " \r\n\t") || target == "" || strings.ContainsAny(target, " \r\n\t") {
		return nil, false
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "%s %s HTTP/1.1\r\nHost: manager.test\r\n", method, target)
	for _, h := range hdr {
		if h[1] == "" {
			continue
		}
		for _, c := range h[1] {
			if c < ' ' && c != '\t' || c == 0x7f {
				return nil, false
			}
		}
		fmt.Fprintf(&b, "%s: %s\r\n", h[0], h[1])
	}
	fmt.Fprintf(&b, "Content-Length: %d\r\n\r\n", len(body))
	b.Write(body)
	r, err := http.ReadRequest(bufio.NewReader(&b))
	if err != nil || r.URL.Path == "" {
		return nil, false
	}
	r.RemoteAddr = "192.0.2.1:1234"
	return r, true
}

// FuzzManagerAPI sends one fuzzed request (method, path and query,
// Authorization, Content-Type, body) to a manager replica's API — the
// tester's /api/..., the admin /v1/... and the UI — over a fresh real FSM
// with two members (served by one real cache node) and an admin token.
// It never panics and never answers 5xx, but for a delete-all it cannot
// confirm with no frontend known (503, committed); a 4xx changes nothing:
// not the state, not the pool; on /api/ it is the tester's error
// envelope, on /v1/ the JSON error.
// go test -run '^$' -fuzz '^FuzzManagerAPI$' ./web.
func FuzzManagerAPI(f *testing.F) {
	type seed struct{ method, target, auth, ctype, body string }
	const form = "application/x-www-form-urlencoded"
	for _, s := range []seed{
		{"POST", "/api/configure_cache?mode=manual&numNodes=3&cacheSize=100&policy=RR", "Bearer tok", "", ""},
		{"POST", "/api/configure_cache?mode=auto&expRatio=2&shrinkRatio=0.5&maxMiss=0.7&minMiss=0.1", "Bearer tok", "", ""},
		{"POST", "/api/configure_cache", "Bearer tok", form, "numNodes=2&policy=LRU"},
		{"POST", "/api/configure_cache?numNodes=3", "Bearer tok", form, "numNodes=2"},
		{"POST", "/api/configure_cache?cacheSize=%ZZ", "Bearer tok", "", ""},
		{"POST", "/api/configure_cache?numNodes=9", "Bearer tok", "", ""},
		{"POST", "/api/configure_cache?mode=auto&numNodes=2", "Bearer tok", "", ""},
		{"POST", "/api/configure_cache?expRatio=1e309", "Bearer tok", "", ""},
		{"POST", "/api/configure_cache?minMiss=0.9", "Bearer tok", "", ""},
		{"POST", "/api/configure_cache?numNodes=3", "", "", ""},
		{"POST", "/api/configure_cache?numNodes=3", "Bearer nope", "", ""},
		{"POST", "/api/getNumNodes", "Bearer tok", "", ""},
		{"POST", "/api/getRate?rate=miss", "Bearer tok", "", ""},
		{"POST", "/api/getRate?rate=hit&rate=miss", "Bearer tok", "", ""},
		{"POST", "/api/delete_all", "Bearer tok", "", ""},
		{"GET", "/api/delete_all", "Bearer tok", "", ""},
		{"GET", "/v1/config", "Bearer tok", "", ""},
		{"PUT", "/v1/config/cache", "Bearer tok", "application/json", `{"capacity_mb":200,"policy":"RR"}`},
		{"PUT", "/v1/config/cache", "Bearer tok", "application/json", `{"capacity_mb":0}`},
		{"PUT", "/v1/config/cache", "Bearer tok", "application/json", `{}`},
		{"PUT", "/v1/config/scaling", "Bearer tok", "application/json", `{"mode":"auto","max_miss_rate":0.6}`},
		{"PUT", "/v1/config/scaling", "Bearer tok", "application/json", `{"mode":"auto"}{"x":1}`},
		{"POST", "/v1/pool/resize", "Bearer tok", "application/json", `{"nodes":4}`},
		{"POST", "/v1/pool/resize", "Bearer tok", "application/json", `{"nodes":0}`},
		{"POST", "/v1/pool/resize", "Bearer tok", "application/json", `{"nodes":"4"}`},
		{"POST", "/v1/pool/clear", "Bearer tok", "", ""},
		{"GET", "/ui/login", "", "", ""},
		{"POST", "/ui/login", "", form, "token=tok&csrf=x"},
		{"GET", "/ui", "", "", ""},
		{"GET", "/ui/api/dashboard", "", "", ""},
		{"POST", "/ui/config", "", form, "capacity_mb=5"},
		{"GET", "/ui/static/app.js", "", "", ""},
		{"GET", "/ui/static/../../etc/passwd", "", "", ""},
	} {
		f.Add(s.method, s.target, s.auth, s.ctype, []byte(s.body))
	}
	nd, err := node.New(node.Config{ID: "n1"}, slog.New(slog.DiscardHandler))
	if err != nil {
		f.Fatal(err)
	}
	nsrv := httptest.NewServer(nd.Handler())
	f.Cleanup(nsrv.Close)
	c := &swapCluster{}
	f.Fuzz(func(t *testing.T, method, target, auth, ctype string, body []byte) {
		r, ok := httpRequest(method, target, [][2]string{{"Authorization", auth}, {"Content-Type", ctype}}, body)
		if !ok {
			return
		}
		c.cur.Store(newFakeCluster(0))
		p := &nodePool{c: c, url: nsrv.URL}
		if _, err := p.Resize(context.Background(), 2); err != nil {
			t.Fatal(err)
		}
		a := web.New(web.Config{AdminToken: "tok"}, c, p, nil, slog.New(slog.DiscardHandler))
		h := chi.NewRouter()
		a.Routes(h)
		before := c.State()
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		after := c.State()
		code, out := w.Code, w.Body.Bytes()
		what := fmt.Sprintf("%s %s (%d bytes)", method, target, len(body))
		path := r.URL.Path
		if code >= 500 {
			deleteAll := r.Method == http.MethodPost && (path == "/api/delete_all" || path == "/ui/delete-all")
			if !(deleteAll && code == http.StatusServiceUnavailable && w.Header().Get(frontend.HeaderCommitted) != "" && after.DeleteGen == before.DeleteGen+1) {
				t.Fatalf("%s: got %d %s, want no 5xx", what, code, out)
			}
			return
		}
		if code < 400 {
			return
		}
		if !reflect.DeepEqual(before, after) {
			t.Fatalf("%s: answered %d %s but changed the state:\nbefore %+v\nafter  %+v", what, code, out, before, after)
		}
		if asks := p.calls(); len(asks) != 1 {
			t.Fatalf("%s: answered %d %s but asked the pool for %v", what, code, out, asks[1:])
		}
		if code == http.StatusMethodNotAllowed || code == http.StatusNotFound && !bytes.HasPrefix(out, []byte("{")) {
			return // the router's own answer: no such route or method
		}
		var e struct {
			Success *string `json:"success"`
			Error   struct {
				Code    int    `json:"code"`
				Message string `json:"message"`
			} `json:"error"`
		}
		switch {
		case strings.HasPrefix(path, "/api/"):
			if err := json.Unmarshal(out, &e); err != nil || e.Success == nil || *e.Success != "false" || e.Error.Code != code || e.Error.Message == "" {
				t.Fatalf("%s: got %d %q, want the tester's error envelope with code %d", what, code, out, code)
			}
		case strings.HasPrefix(path, "/v1/"):
			if err := json.Unmarshal(out, &e); err != nil || e.Error.Code != code || e.Error.Message == "" {
				t.Fatalf("%s: got %d %q, want a JSON error with code %d", what, code, out, code)
			}
		}
	})
}
