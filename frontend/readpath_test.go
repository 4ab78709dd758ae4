package frontend

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/memcache/memcache/fsm"
	"github.com/memcache/memcache/internal/pool"
	"github.com/memcache/memcache/internal/waitfor"
	"github.com/memcache/memcache/node"
)

// newNode serves a real cache node and returns it with a one-member view
// that routes every region to it.
func newNode(t *testing.T) (*node.Node, pool.View) {
	t.Helper()
	n, _, v := serveNode(t, node.Config{ID: "n1"}, nil)
	return n, v
}

// serveNode serves a real cache node configured by cfg (its API through
// wrap, if not nil) until the test ends, and returns it, its server and a
// one-member view that routes every region to it.
func serveNode(t *testing.T, cfg node.Config, wrap func(http.Handler) http.Handler) (*node.Node, *httptest.Server, pool.View) {
	t.Helper()
	n, err := node.New(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	h := n.Handler()
	if wrap != nil {
		h = wrap(h)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	v := pool.View{Cache: pool.CacheConfig{CapacityMB: 64, Policy: pool.LRU}, Members: []pool.Member{{ID: cfg.ID, HTTP: srv.URL}}}
	v.Index = 1
	for r := range v.Regions {
		v.Regions[r] = cfg.ID
	}
	return n, srv, v
}

// bodyBytes counts the body bytes a handler writes.
type bodyBytes struct{ n atomic.Int64 }

func (b *bodyBytes) wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.ServeHTTP(countingWriter{w, &b.n}, r)
	})
}

type countingWriter struct {
	http.ResponseWriter
	n *atomic.Int64
}

func (w countingWriter) Write(p []byte) (int, error) {
	w.n.Add(int64(len(p)))
	return w.ResponseWriter.Write(p)
}

func get(t *testing.T, u string, hdr ...string) (int, http.Header, []byte) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, u, nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, b
}

// TestEveryEntryPointCountsOneGetAtTheNode reads through each entry point,
// cold, warm, and revalidating, and checks the owner node's counters: one
// GET per read, and a miss only when the node did not have the image. A
// client revalidating its copy when the frontend holds none is answered
// from the node's 304: one GET, a hit, no image bytes sent by the node.
func TestEveryEntryPointCountsOneGetAtTheNode(t *testing.T) {
	red := mustRead(t, "red.png")
	for _, hot := range []int{0, 8} {
		for _, ep := range []struct {
			name string
			read func(t *testing.T, base, key string) int
		}{
			{"images", func(t *testing.T, base, key string) int {
				code, _, _ := get(t, base+"/images/"+url.PathEscape(key))
				return code
			}},
			{"api-key", func(t *testing.T, base, key string) int {
				code, _ := post(t, base+"/api/key/"+url.PathEscape(key))
				return code
			}},
			{"retrieve-page", func(t *testing.T, base, key string) int {
				code, _, _ := get(t, base+"/retrieve?key="+url.QueryEscape(key))
				return code
			}},
		} {
			t.Run(ep.name+map[int]string{0: "", 8: "/hot-cache"}[hot], func(t *testing.T) {
				st := newStores(t)
				var sent bodyBytes
				n, _, view := serveNode(t, node.Config{ID: "n1"}, sent.wrap)
				f := New(Config{MaxUpload: 64 << 10, NearCacheMB: hot}, st.blobs, st.index, slog.New(slog.DiscardHandler))
				f.setPool(view)
				srv := httptest.NewServer(f.Handler())
				defer srv.Close()
				if _, err := f.Put(context.Background(), "k", red); err != nil {
					t.Fatal(err)
				}
				n.Cache().Delete("k") // cold: only the stores have it
				check := func(what string, gets, misses uint64) {
					t.Helper()
					before := n.Counters()
					if code := ep.read(t, srv.URL, "k"); code != http.StatusOK {
						t.Fatalf("%s read: status %d, want 200", what, code)
					}
					after := n.Counters()
					if g, m := after.Gets-before.Gets, after.Misses-before.Misses; g != gets || m != misses {
						t.Errorf("%s read: node counted %d GETs and %d misses, want %d and %d", what, g, m, gets, misses)
					}
				}
				check("cold", 1, 1)
				check("warm", 1, 0)
				check("warm again (revalidating a hot copy if any)", 1, 0)
				if ep.name == "images" {
					// A client revalidating its own copy: 304, one GET.
					_, h, _ := get(t, srv.URL+"/images/k")
					before := n.Counters()
					if code, _, _ := get(t, srv.URL+"/images/k", "If-None-Match", h.Get("ETag")); code != http.StatusNotModified {
						t.Fatalf("revalidation: status %d, want 304", code)
					}
					if d := n.Counters().Gets - before.Gets; d != 1 {
						t.Errorf("revalidation: node counted %d GETs, want 1", d)
					}
					// The same without a hot copy: the client's ETag goes to
					// the node, whose 304 is the answer.
					if f.near != nil {
						f.near.drop("k")
					}
					before, sentBefore := n.Counters(), sent.n.Load()
					code, h2, body := get(t, srv.URL+"/images/k", "If-None-Match", h.Get("ETag"))
					if code != http.StatusNotModified || len(body) != 0 || h2.Get("ETag") != h.Get("ETag") || h2.Get("X-Memcache-Source") != "cache" {
						t.Fatalf("revalidation without a hot copy: %d, %d bytes, ETag %q from %q; want 304, no body, ETag %q from the cache",
							code, len(body), h2.Get("ETag"), h2.Get("X-Memcache-Source"), h.Get("ETag"))
					}
					after := n.Counters()
					if g, hit, m := after.Gets-before.Gets, after.Hits-before.Hits, after.Misses-before.Misses; g != 1 || hit != 1 || m != 0 {
						t.Errorf("revalidation without a hot copy: node counted %d GETs, %d hits, %d misses; want 1, 1, 0", g, hit, m)
					}
					if b := sent.n.Load() - sentBefore; b != 0 {
						t.Errorf("revalidation without a hot copy: node sent %d body bytes, want 0", b)
					}
				}
			})
		}
	}
}

// pauser stands in for paused manager processes: while paused, requests
// hang until resumed or abandoned by the caller.
type pauser struct {
	next http.Handler
	mu   sync.Mutex
	gate chan struct{} // nil when running
}

func (p *pauser) pause() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.gate == nil {
		p.gate = make(chan struct{})
	}
}

func (p *pauser) resume() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.gate != nil {
		close(p.gate)
		p.gate = nil
	}
}

func (p *pauser) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p.mu.Lock()
	g := p.gate
	p.mu.Unlock()
	if g != nil {
		select {
		case <-g:
		case <-r.Context().Done():
			return
		}
	}
	p.next.ServeHTTP(w, r)
}

// fsmSource serves the watch from a real FSM, as its only replica (the leader).
type fsmSource struct{ f *fsm.FSM }

func (s fsmSource) View() (pool.View, error) { return s.f.View(), nil }
func (s fsmSource) WaitView(ctx context.Context, after uint64) (pool.View, error) {
	return s.f.WaitView(ctx, after)
}
func (s fsmSource) ConsistentView(context.Context) (pool.View, error) { return s.f.View(), nil }

// managers is one manager replica: a real FSM behind the real watch
// handler, on a real HTTP server that can be paused.
type managers struct {
	fsm   *fsm.FSM
	index uint64
	p     *pauser
	url   string
}

func newManagers(t *testing.T) *managers {
	t.Helper()
	m := &managers{fsm: fsm.New()}
	m.p = &pauser{next: pool.Handler(fsmSource{m.fsm})}
	srv := httptest.NewServer(m.p)
	t.Cleanup(func() { m.p.resume(); srv.Close() })
	m.url = srv.URL
	return m
}

func (m *managers) apply(t *testing.T, cmd fsm.Command) {
	t.Helper()
	data, err := fsm.Encode(cmd)
	if err != nil {
		t.Fatal(err)
	}
	m.index++
	if res := m.fsm.Apply(&raft.Log{Index: m.index, Term: 1, Type: raft.LogCommand, Data: data}).(fsm.Result); res.Err != nil {
		t.Fatal(res.Err)
	}
}

// startFrontend starts a frontend following m, as the frontend role does.
func startFrontend(t *testing.T, m *managers, st stores) (*Frontend, string) {
	t.Helper()
	f := New(Config{MaxUpload: 64 << 10, Managers: func() []string { return []string{m.url} }, WatchWait: 200 * time.Millisecond,
		ViewWait: 300 * time.Millisecond, InvalidateTimeout: time.Second}, st.blobs, st.index, slog.New(slog.DiscardHandler))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		f.Run(ctx)
	}()
	srv := httptest.NewServer(f.Handler())
	t.Cleanup(func() {
		cancel()
		<-done
		srv.Close()
	})
	return f, srv.URL
}

// TestNoCacheTrafficAndNoUploadBeforeTheFirstView replays issue 8's
// scenario: upload v1 and read it (cached), pause the managers, restart
// the frontend, upload v2, resume the managers: the image must be v2.
func TestNoCacheTrafficAndNoUploadBeforeTheFirstView(t *testing.T) {
	st := newStores(t)
	n, view := newNode(t)
	m := newManagers(t)
	m.apply(t, fsm.Resize{Members: []fsm.Member{{ID: "n1", HTTP: view.Members[0].HTTP}}})
	n.ApplyPool(m.fsm.View())
	red, blue := mustRead(t, "red.png"), mustRead(t, "blue.png")

	f1, url1 := startFrontend(t, m, st)
	waitfor.True(t, 10*time.Second, "the first frontend to be ready", func() bool {
		code, _, _ := get(t, url1+"/readyz")
		return code == http.StatusOK
	})
	if code, out := upload(t, url1, "/api/upload", ptr("k"), red); code != 200 {
		t.Fatalf("upload v1: %d %v", code, out)
	}
	if code, h, _ := get(t, url1+"/images/k"); code != 200 || h.Get("X-Memcache-Source") != "cache" {
		t.Fatalf("read v1: %d from %q, want 200 from the cache", code, h.Get("X-Memcache-Source"))
	}
	_ = f1

	// The managers stop answering; a frontend (re)starts.
	m.p.pause()
	f2, url2 := startFrontend(t, m, st)
	if code, _, body := get(t, url2+"/readyz"); code != http.StatusServiceUnavailable {
		t.Fatalf("readyz without a pool view: %d %q, want 503", code, body)
	}
	before := n.Counters()
	beforeReq := before.Requests
	code, h, body := get(t, url2+"/images/k")
	if code != 200 || h.Get("X-Memcache-Source") != "store" || len(body) != len(red) {
		t.Fatalf("read without a view: %d from %q, want 200 from the stores", code, h.Get("X-Memcache-Source"))
	}
	if got := n.Counters().Requests; got != beforeReq {
		t.Fatalf("a frontend without a view sent %d requests to the node, want 0", got-beforeReq)
	}
	req := uploadRequest(t, url2+"/api/upload", "k", blue)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("upload v2 without a view: %d, Retry-After %q; want 503 with Retry-After", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	if got := n.Counters().Requests; got != beforeReq {
		t.Fatalf("a frontend without a view sent %d requests to the node, want 0", got-beforeReq)
	}

	m.p.resume()
	waitfor.True(t, 10*time.Second, "the restarted frontend to be ready", func() bool {
		code, _, _ := get(t, url2+"/readyz")
		return code == http.StatusOK
	})
	if f2.Pool().Epoch != m.fsm.View().Epoch {
		t.Fatalf("ready at epoch %d, want the cluster's %d", f2.Pool().Epoch, m.fsm.View().Epoch)
	}
	if code, out := upload(t, url2, "/api/upload", ptr("k"), blue); code != 200 {
		t.Fatalf("upload v2 with a view: %d %v", code, out)
	}
	for _, u := range []string{url1, url2} {
		if code, h, body := get(t, u+"/images/k"); code != 200 || string(body) != string(blue) {
			t.Fatalf("read after v2 via %s: %d, %d bytes from %q; want v2", u, code, len(body), h.Get("X-Memcache-Source"))
		}
	}
}

// TestUploadAnswers503WhenTheOldCopyCannotBeInvalidated: an owner that
// keeps answering 421 (the frontend's view is behind and no newer one
// comes) makes the upload retry, then answer 503 saying the row is stored.
func TestUploadAnswers503WhenTheOldCopyCannotBeInvalidated(t *testing.T) {
	st := newStores(t)
	n, view := newNode(t)
	f := New(Config{MaxUpload: 64 << 10, InvalidateTimeout: 300 * time.Millisecond}, st.blobs, st.index, slog.New(slog.DiscardHandler))
	f.setPool(view)
	red, blue := mustRead(t, "red.png"), mustRead(t, "blue.png")
	ctx := context.Background()
	if _, err := f.Put(ctx, "k", red); err != nil {
		t.Fatal(err)
	}
	// The node moves to a map that gives the region away; the frontend
	// does not learn it.
	var m node.Regions
	m.Epoch = 5
	for r := range m.Owners {
		m.Owners[r], m.Since[r] = "n2", 5
	}
	if _, err := n.SetRegions(context.Background(), m); err != nil {
		t.Fatal(err)
	}
	before := n.Counters().Requests
	_, err := f.Put(ctx, "k", blue)
	if !errors.Is(err, ErrUnavailable) || statusOf(err) != http.StatusServiceUnavailable {
		t.Fatalf("upload whose invalidation keeps failing: %v, want ErrUnavailable (503)", err)
	}
	if tries := n.Counters().Requests - before; tries < 2 {
		t.Errorf("invalidation tried %d times, want retries", tries)
	}
	// The row is committed: the stores serve v2.
	if e, err := st.index.Get(ctx, "k"); err != nil || e.Size != int64(len(blue)) {
		t.Fatalf("row after the 503: %+v %v, want v2's", e, err)
	}
	// A newer view arrives during the retries: the invalidation then succeeds.
	for r := range m.Owners {
		m.Owners[r], m.Since[r] = "n1", 6
	}
	m.Epoch = 6
	f.cfg.InvalidateTimeout = 10 * time.Second
	f.nodeErrors.Store(0)
	errc := make(chan error, 1)
	go func() {
		_, err := f.Put(ctx, "k", red)
		errc <- err
	}()
	waitfor.True(t, 5*time.Second, "a failed invalidation", func() bool { return f.nodeErrors.Load() > 0 })
	if _, err := n.SetRegions(context.Background(), m); err != nil {
		t.Fatal(err)
	}
	v := view.Clone()
	v.Index, v.Epoch = 2, 6
	f.setPool(v)
	if err := <-errc; err != nil {
		t.Fatalf("upload whose owner moved while retrying: %v, want success", err)
	}
	if img, err := f.Get(ctx, "k"); err != nil || string(img.Data) != string(red) {
		t.Fatalf("read after the upload: %v, want v3", err)
	}
}

func TestNodeRevalidationPassesOnOneTag(t *testing.T) {
	for _, tc := range []struct{ header, want string }{
		{"", ""},
		{`"abc"`, `"abc"`},
		{` W/"abc" `, `"abc"`},
		{"*", ""},
		{`"abc", "def"`, ""},
	} {
		if got := nodeRevalidation(tc.header); got != tc.want {
			t.Errorf("nodeRevalidation(%q): got %q, want %q", tc.header, got, tc.want)
		}
	}
}
