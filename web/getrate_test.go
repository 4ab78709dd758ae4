package web_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/memcache/memcache/blob"
	"github.com/memcache/memcache/frontend"
	"github.com/memcache/memcache/fsm"
	"github.com/memcache/memcache/internal/pool"
	"github.com/memcache/memcache/internal/waitfor"
	"github.com/memcache/memcache/keyindex"
	"github.com/memcache/memcache/metrics"
	"github.com/memcache/memcache/node"
	"github.com/memcache/memcache/web"
)

type rateAnswer struct {
	Success string  `json:"success"`
	Rate    string  `json:"rate"`
	Value   float64 `json:"value"`
	Gets    uint64  `json:"gets"`
}

func getRate(t *testing.T, base, which string) rateAnswer {
	t.Helper()
	code, body := call(t, http.MethodPost, base+"/api/getRate?rate="+which, "", "")
	var a rateAnswer
	if err := json.Unmarshal([]byte(body), &a); err != nil || code != http.StatusOK || a.Success != "true" || a.Rate != which {
		t.Fatalf("getRate %s: %d %s", which, code, body)
	}
	return a
}

// TestGetRateAnswersTheNodesMissAndHitRate: a real node behind a real
// frontend sees one cold read (a miss) and three warm ones (hits), an
// upload and a listing (no GET); getRate, answered from the node's own
// samples (no metrics backend), must say miss 0.25 and hit 0.75 over 4
// GETs, and 0 with no GETs before.
func TestGetRateAnswersTheNodesMissAndHitRate(t *testing.T) {
	n, err := node.New(node.Config{ID: "n1", SampleInterval: 20 * time.Millisecond}, testLogger())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); n.Run(ctx) }()
	defer func() { cancel(); <-done }()
	nodeSrv := httptest.NewServer(n.Handler())
	defer nodeSrv.Close()

	c := newFakeCluster(0)
	if _, err := c.Apply(ctx, fsm.Resize{Members: []fsm.Member{{ID: "n1", HTTP: nodeSrv.URL}}}); err != nil {
		t.Fatal(err)
	}
	api := web.New(web.Config{}, c, &fakePool{}, nil, testLogger())
	r := chi.NewRouter()
	api.Routes(r)
	r.Handle("/v1/pool", pool.Handler(fsmSource{c.f}))
	mgr := httptest.NewServer(r)
	defer mgr.Close()

	if a := getRate(t, mgr.URL, "miss"); a.Value != 0 || a.Gets != 0 {
		t.Fatalf("getRate miss before any GET: %v over %d GETs, want 0 over 0", a.Value, a.Gets)
	}

	dir := t.TempDir()
	blobs, err := blob.NewDir(filepath.Join(dir, "blobs"))
	if err != nil {
		t.Fatal(err)
	}
	index, err := keyindex.Open(ctx, filepath.Join(dir, "keys.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer index.Close()
	fe := frontend.New(frontend.Config{Managers: func() []string { return []string{mgr.URL} }}, blobs, index, testLogger())
	feSrv := httptest.NewServer(fe.Handler())
	defer feSrv.Close()
	view := c.f.View()
	n.ApplyPool(view)
	// The frontend routes by the view the managers hold.
	feCtx, feCancel := context.WithCancel(ctx)
	feDone := make(chan struct{})
	go func() { defer close(feDone); fe.Run(feCtx) }()
	defer func() { feCancel(); <-feDone }()
	waitfor.True(t, 10*time.Second, "the frontend's first pool view", func() bool { return fe.Pool().Epoch == view.Epoch && len(fe.Pool().Members) == 1 })

	img, err := os.ReadFile("../frontend/testdata/red.png")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fe.Put(ctx, "k", img); err != nil {
		t.Fatal(err)
	}
	n.Cache().Delete("k") // cold: the first read misses
	for i := range 4 {
		got, err := fe.Get(ctx, "k")
		if err != nil || got.FromCache != (i > 0) {
			t.Fatalf("read %d: from the cache %v, %v; want %v", i, got.FromCache, err, i > 0)
		}
	}
	if _, err := fe.List(ctx); err != nil {
		t.Fatal(err)
	}
	waitfor.True(t, 10*time.Second, "the node's samples to hold the 4 GETs", func() bool {
		return getRate(t, mgr.URL, "miss").Gets >= 4
	})
	miss, hit := getRate(t, mgr.URL, "miss"), getRate(t, mgr.URL, "hit")
	if miss.Value != 0.25 || miss.Gets != 4 {
		t.Errorf("getRate miss: %v over %d GETs, want 0.25 over 4", miss.Value, miss.Gets)
	}
	if hit.Value != 0.75 || hit.Gets != 4 {
		t.Errorf("getRate hit: %v over %d GETs, want 0.75 over 4", hit.Value, hit.Gets)
	}
}

// fsmSource serves the pool-state watch from a real FSM, as its only
// replica (the leader).
type fsmSource struct{ f *fsm.FSM }

func (s fsmSource) View() (pool.View, error) { return s.f.View(), nil }
func (s fsmSource) WaitView(ctx context.Context, after uint64) (pool.View, error) {
	return s.f.WaitView(ctx, after)
}
func (s fsmSource) ConsistentView(context.Context) (pool.View, error) { return s.f.View(), nil }

// totalsReader is a metrics.Reader with fixed totals.
type totalsReader struct{ t metrics.Totals }

func (r totalsReader) History(context.Context, time.Time, int) ([]metrics.Point, error) {
	return nil, nil
}

func (r totalsReader) Totals(context.Context, time.Time, time.Duration) (metrics.Totals, error) {
	return r.t, nil
}

// TestGetRateAnswersTheMetricsBackendsFigures: with a metrics backend,
// getRate answers its totals over the last minute, exactly.
func TestGetRateAnswersTheMetricsBackendsFigures(t *testing.T) {
	for _, tc := range []struct {
		totals    metrics.Totals
		miss, hit float64
	}{
		{metrics.Totals{Gets: 8, Hits: 6, Misses: 2, Requests: 20}, 0.25, 0.75},
		{metrics.Totals{Gets: 5, Hits: 0, Misses: 5}, 1, 0},
		{metrics.Totals{}, 0, 0},
	} {
		api := web.New(web.Config{}, newFakeCluster(0), &fakePool{}, totalsReader{tc.totals}, testLogger())
		r := chi.NewRouter()
		api.Routes(r)
		srv := httptest.NewServer(r)
		miss, hit := getRate(t, srv.URL, "miss"), getRate(t, srv.URL, "hit")
		srv.Close()
		if miss.Value != tc.miss || hit.Value != tc.hit || miss.Gets != tc.totals.Gets || hit.Gets != tc.totals.Gets {
			t.Errorf("totals %+v: miss %v hit %v over %d GETs; want %v, %v over %d", tc.totals, miss.Value, hit.Value, miss.Gets, tc.miss, tc.hit, tc.totals.Gets)
		}
	}
}
