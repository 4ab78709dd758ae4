package node

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/memcache/memcache/auth"
	"github.com/memcache/memcache/internal/pool"
	"github.com/memcache/memcache/region"
)

func newTestNode(t *testing.T, id string) (*Node, *httptest.Server) {
	t.Helper()
	n, err := New(Config{ID: id, Cache: pool.CacheConfig{CapacityMB: 1, Policy: pool.LRU}}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(n.Handler())
	t.Cleanup(srv.Close)
	return n, srv
}

type response struct {
	code int
	body []byte
	hdr  http.Header
}

func do(t *testing.T, method, u string, body []byte, hdr ...string) response {
	t.Helper()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, u, rd)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return response{resp.StatusCode, b, resp.Header}
}

func TestHTTPPutGetRoundTripsAwkwardKeys(t *testing.T) {
	_, srv := newTestNode(t, "n1")
	for _, key := range []string{"plain", "a/b/c.png", "../etc/passwd", "with space", "猫.jpg", "100%", "?q=1#frag"} {
		val := []byte("value of " + key)
		if r := do(t, "PUT", keyURL(srv.URL, key), val, "Content-Type", "image/png", "ETag", `"abc"`); r.code != http.StatusNoContent {
			t.Fatalf("PUT %q: got %d %s, want 204", key, r.code, r.body)
		}
		r := do(t, "GET", keyURL(srv.URL, key), nil)
		if r.code != http.StatusOK || !bytes.Equal(r.body, val) {
			t.Fatalf("GET %q: got %d %q, want 200 %q", key, r.code, r.body, val)
		}
		if ct, et := r.hdr.Get("Content-Type"), r.hdr.Get("ETag"); ct != "image/png" || et != `"abc"` {
			t.Errorf("GET %q: Content-Type %q ETag %q, want image/png \"abc\"", key, ct, et)
		}
		if r := do(t, "DELETE", keyURL(srv.URL, key), nil); r.code != http.StatusNoContent {
			t.Fatalf("DELETE %q: got %d", key, r.code)
		}
		if r := do(t, "GET", keyURL(srv.URL, key), nil); r.code != http.StatusNotFound {
			t.Fatalf("GET %q after DELETE: got %d, want 404", key, r.code)
		}
	}
}

func TestHTTPBadInputIsRefusedAndChangesNothing(t *testing.T) {
	n, srv := newTestNode(t, "n1")
	do(t, "PUT", keyURL(srv.URL, "keep"), []byte("kept"))
	huge := make([]byte, 1<<20+1)
	cases := []struct {
		name        string
		method, url string
		body        []byte
		hdr         []string
		code        int
		msg         string
	}{
		{"value larger than capacity", "PUT", keyURL(srv.URL, "huge"), huge, nil, 413, "exceeds the cache capacity"},
		{"empty key on put", "PUT", srv.URL + "/cache/", []byte("x"), nil, 400, "key must not be empty"},
		{"empty key on get", "GET", srv.URL + "/cache/", nil, nil, 400, "key must not be empty"},
		{"unknown policy", "PUT", srv.URL + "/config", []byte(`{"policy":"FIFO"}`), nil, 400, `policy "FIFO" is not LRU or RR`},
		{"capacity 0", "PUT", srv.URL + "/config", []byte(`{"capacity_mb":0}`), nil, 400, "capacity_mb 0 is outside 1..1024"},
		{"capacity 2000", "PUT", srv.URL + "/config", []byte(`{"capacity_mb":2000}`), nil, 400, "capacity_mb 2000 is outside 1..1024"},
		{"malformed config", "PUT", srv.URL + "/config", []byte(`{"capacity_mb":`), nil, 400, "malformed JSON body"},
		{"config of wrong type", "PUT", srv.URL + "/config", []byte(`{"capacity_mb":"big"}`), nil, 400, "malformed JSON body"},
		{"unknown config field", "PUT", srv.URL + "/config", []byte(`{"size":3}`), nil, 400, "unknown field"},
		{"malformed regions", "PUT", srv.URL + "/regions", []byte(`[1,2]`), nil, 400, "malformed JSON body"},
		{"bad epoch header", "GET", keyURL(srv.URL, "keep"), nil, []string{HeaderEpoch, "soon"}, 400, "not an unsigned integer"},
		{"bad since", "GET", srv.URL + "/stats?since=yesterday", nil, nil, 400, "not an RFC 3339 time"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := do(t, tc.method, tc.url, tc.body, tc.hdr...)
			if r.code != tc.code {
				t.Fatalf("got %d %s, want %d", r.code, r.body, tc.code)
			}
			var e struct {
				Error struct {
					Code    int    `json:"code"`
					Message string `json:"message"`
				} `json:"error"`
			}
			if err := json.Unmarshal(r.body, &e); err != nil || e.Error.Code != tc.code {
				t.Fatalf("body %s: want JSON error with code %d", r.body, tc.code)
			}
			if !strings.Contains(e.Error.Message, tc.msg) {
				t.Errorf("message %q does not contain %q", e.Error.Message, tc.msg)
			}
		})
	}
	if got := n.cache.Config(); got != (pool.CacheConfig{CapacityMB: 1, Policy: pool.LRU}) {
		t.Errorf("config = %+v after bad input, want {1 LRU}", got)
	}
	if n.cache.Len() != 1 || n.cache.Bytes() != 4 {
		t.Errorf("cache holds %d items, %d bytes after bad input; want 1, 4", n.cache.Len(), n.cache.Bytes())
	}
	if n.Epoch() != 0 {
		t.Errorf("epoch = %d after bad input, want 0", n.Epoch())
	}
}

func TestHTTPConfigAppliesLive(t *testing.T) {
	n, srv := newTestNode(t, "n1")
	for i := range 10 {
		do(t, "PUT", keyURL(srv.URL, fmt.Sprint(i)), make([]byte, 100<<10))
	}
	r := do(t, "PUT", srv.URL+"/config", []byte(`{"capacity_mb":2,"policy":"RR"}`))
	if r.code != 200 || n.cache.Config() != (pool.CacheConfig{CapacityMB: 2, Policy: pool.RR}) || n.cache.Len() != 10 {
		t.Fatalf("PUT /config: %d %s; config %+v, %d items; want 200, {2 RR}, 10 items", r.code, r.body, n.cache.Config(), n.cache.Len())
	}
}

func TestStatsEqualWhatWasDone(t *testing.T) {
	n, srv := newTestNode(t, "n1")
	clock := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	n.sampler = newSampler(n.Counters, 5*time.Second, 3, func() time.Time { return clock })
	// 7 puts (one replaces), 5 hits, 4 misses, 2 invalidations, 1 oversize put.
	for i := range 6 {
		do(t, "PUT", keyURL(srv.URL, fmt.Sprint(i)), []byte("0123456789"))
	}
	do(t, "PUT", keyURL(srv.URL, "0"), []byte("01234"))
	for i := range 5 {
		do(t, "GET", keyURL(srv.URL, fmt.Sprint(i)), nil)
	}
	for i := range 4 {
		do(t, "GET", keyURL(srv.URL, fmt.Sprint("absent", i)), nil)
	}
	do(t, "DELETE", keyURL(srv.URL, "5"), nil)
	do(t, "DELETE", keyURL(srv.URL, "absent"), nil)
	do(t, "PUT", keyURL(srv.URL, "huge"), make([]byte, 2<<20))
	want := Counters{Hits: 5, Misses: 4, Gets: 9, Requests: 7 + 9 + 2 + 1, Items: 5, Bytes: 45}
	if got := n.Counters(); got != want {
		t.Errorf("counters = %+v, want %+v", got, want)
	}
	clock = clock.Add(5 * time.Second)
	s1 := n.sampler.sample()
	do(t, "GET", keyURL(srv.URL, "1"), nil)
	do(t, "GET", keyURL(srv.URL, "absent"), nil)
	clock = clock.Add(5 * time.Second)
	s2 := n.sampler.sample()
	if s1.Gets != 9 || s1.Hits != 5 || s1.Requests != 19 || s1.Items != 5 {
		t.Errorf("first sample = %+v, want 9 gets, 5 hits, 19 requests, 5 items", s1)
	}
	if s2.Gets != 2 || s2.Hits != 1 || s2.Misses != 1 || s2.Requests != 2 || s2.Bytes != 45 || s2.End.Sub(s2.Start) != 5*time.Second {
		t.Errorf("second sample = %+v, want deltas 2 gets, 1 hit, 1 miss, 2 requests, 45 bytes over 5 s", s2)
	}
	// The history is bounded and served by /stats.
	n.sampler.sample()
	n.sampler.sample()
	var st Stats
	r := do(t, "GET", srv.URL+"/stats", nil)
	if err := json.Unmarshal(r.body, &st); err != nil {
		t.Fatal(err)
	}
	if len(st.Samples) != 3 || st.Samples[0] != s2 {
		t.Errorf("/stats samples: %d, first %+v; want 3 kept, first = second sample", len(st.Samples), st.Samples[0])
	}
	if st.Counters.Gets != 11 || st.Counters.Hits != 6 {
		t.Errorf("/stats counters %+v, want 11 gets, 6 hits", st.Counters)
	}
}

// keysIn returns n keys whose region is r.
func keysIn(r, n int) []string {
	var out []string
	for i := 0; len(out) < n; i++ {
		if k := fmt.Sprintf("img-%d", i); region.Of(k) == r {
			out = append(out, k)
		}
	}
	return out
}

func putRegions(t *testing.T, srv string, m Regions) response {
	t.Helper()
	b, _ := json.Marshal(m)
	return do(t, "PUT", srv+"/regions", b)
}

func TestNodeDropsLostRegionAndNeverServesItAgain(t *testing.T) {
	n, srv := newTestNode(t, "A")
	// Epoch 1: A owns everything. Epoch 2: region 3 moves to B.
	var m Regions
	m.Epoch = 1
	for r := range m.Owners {
		m.Owners[r] = "A"
		m.Since[r] = 1
	}
	if r := putRegions(t, srv.URL, m); r.code != 200 {
		t.Fatalf("PUT /regions epoch 1: %d %s", r.code, r.body)
	}
	k3, k4 := keysIn(3, 5), keysIn(4, 5)
	for _, k := range append(append([]string{}, k3...), k4...) {
		do(t, "PUT", keyURL(srv.URL, k), []byte("v1 "+k))
	}
	m.Epoch, m.Owners[3], m.Since[3] = 2, "B", 2
	if r := putRegions(t, srv.URL, m); r.code != 200 {
		t.Fatalf("PUT /regions epoch 2: %d %s", r.code, r.body)
	}
	for _, k := range k3 {
		r := do(t, "GET", keyURL(srv.URL, k), nil)
		if r.code != http.StatusMisdirectedRequest || r.hdr.Get(HeaderEpoch) != "2" {
			t.Fatalf("GET %s of lost region: %d epoch %q, want 421 epoch 2", k, r.code, r.hdr.Get(HeaderEpoch))
		}
		if r := do(t, "PUT", keyURL(srv.URL, k), []byte("x")); r.code != http.StatusMisdirectedRequest {
			t.Fatalf("PUT %s of lost region: %d, want 421", k, r.code)
		}
	}
	for _, k := range k4 {
		if r := do(t, "GET", keyURL(srv.URL, k), nil); r.code != 200 {
			t.Fatalf("GET %s of kept region: %d, want 200", k, r.code)
		}
	}
	// Epoch 3: region 3 comes back. Its old entries must not reappear.
	m.Epoch, m.Owners[3], m.Since[3] = 3, "A", 3
	putRegions(t, srv.URL, m)
	for _, k := range k3 {
		if r := do(t, "GET", keyURL(srv.URL, k), nil); r.code != http.StatusNotFound {
			t.Fatalf("GET %s after regaining region 3: %d %q, want 404", k, r.code, r.body)
		}
	}
	// A caller with a newer map than the node's is told the node is behind.
	if r := do(t, "GET", keyURL(srv.URL, k4[0]), nil, HeaderEpoch, "4"); r.code != http.StatusConflict {
		t.Fatalf("GET with caller epoch 4 > node epoch 3: %d, want 409", r.code)
	}
	// An older map is refused and changes nothing.
	old := m
	old.Epoch, old.Owners[4] = 2, "B"
	if r := putRegions(t, srv.URL, old); r.code != http.StatusConflict {
		t.Fatalf("PUT /regions with older epoch: %d, want 409", r.code)
	}
	if got := n.Regions(); got != m {
		t.Errorf("regions after stale PUT = %+v, want %+v", got, m)
	}
}

func TestNodeDropsRegionLostAndRegainedWhileAway(t *testing.T) {
	n, _ := newTestNode(t, "A")
	var m Regions
	m.Epoch = 1
	for r := range m.Owners {
		m.Owners[r], m.Since[r] = "A", 1
	}
	n.SetRegions(context.Background(), m)
	k5, k6 := keysIn(5, 3), keysIn(6, 3)
	for _, k := range append(append([]string{}, k5...), k6...) {
		n.cache.Put(k, Item{Value: []byte("v")})
	}
	// The node misses epochs 2 (region 5 to B) and 3 (region 5 back to A): the
	// map at epoch 3 says A has owned region 5 only since 3.
	m.Epoch, m.Since[5] = 3, 3
	dropped, err := n.SetRegions(context.Background(), m)
	if err != nil || dropped != 3 {
		t.Fatalf("SetRegions: dropped %d, err %v; want 3, nil", dropped, err)
	}
	for _, k := range k5 {
		if _, ok, _ := n.cache.Get(k); ok {
			t.Errorf("%s from the earlier ownership of region 5 still served", k)
		}
	}
	for _, k := range k6 {
		if _, ok, _ := n.cache.Get(k); !ok {
			t.Errorf("%s of continuously owned region 6 was dropped", k)
		}
	}
}

func TestClusterSecretIsRequiredWhenSet(t *testing.T) {
	n, err := New(Config{ID: "n1", Secret: "s3cret"}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(n.Handler())
	defer srv.Close()
	for _, tc := range []struct{ method, path string }{
		{"PUT", "/cache/k"}, {"GET", "/cache/k"}, {"DELETE", "/cache/k"}, {"DELETE", "/cache"},
		{"PUT", "/config"}, {"PUT", "/regions"}, {"GET", "/stats"},
	} {
		for _, secret := range []string{"", "wrong"} {
			hdr := []string{}
			if secret != "" {
				hdr = []string{auth.Header, secret}
			}
			if r := do(t, tc.method, srv.URL+tc.path, []byte(`{"capacity_mb":2}`), hdr...); r.code != http.StatusUnauthorized {
				t.Errorf("%s %s with secret %q: got %d, want 401", tc.method, tc.path, secret, r.code)
			}
		}
	}
	if n.cache.Len() != 0 || n.cache.Config().CapacityMB != 64 {
		t.Errorf("refused calls changed the node: %d items, %d MB", n.cache.Len(), n.cache.Config().CapacityMB)
	}
	if r := do(t, "PUT", srv.URL+"/cache/k", []byte("v"), auth.Header, "s3cret"); r.code != http.StatusNoContent {
		t.Errorf("PUT with the secret: got %d, want 204", r.code)
	}
	for _, open := range []string{"/healthz", "/readyz", "/metrics"} {
		if r := do(t, "GET", srv.URL+open, nil); r.code != 200 {
			t.Errorf("GET %s without secret: got %d, want 200", open, r.code)
		}
	}
}

func TestConditionalFillAndOwnershipEpoch(t *testing.T) {
	n, srv := newTestNode(t, "A")
	u := keyURL(srv.URL, "k")
	if r := do(t, "PUT", u, []byte("v2"), "If-None-Match", "*"); r.code != http.StatusNoContent {
		t.Fatalf("fill of an absent key: %d, want 204", r.code)
	}
	// A read's fill never replaces what is cached (an upload's newer value).
	if r := do(t, "PUT", u, []byte("v1"), "If-None-Match", "*"); r.code != http.StatusPreconditionFailed {
		t.Fatalf("fill of a cached key: %d, want 412", r.code)
	}
	if r := do(t, "GET", u, nil); string(r.body) != "v2" {
		t.Fatalf("after a refused fill: %q, want v2", r.body)
	}
	// The node owns every region since epoch 3; a write routed by epoch 2
	// may come from an earlier ownership and is refused.
	var m Regions
	m.Epoch = 3
	for r := range m.Owners {
		m.Owners[r], m.Since[r] = "A", 3
	}
	if _, err := n.SetRegions(context.Background(), m); err != nil {
		t.Fatal(err)
	}
	if r := do(t, "PUT", u, []byte("old"), HeaderEpoch, "2"); r.code != http.StatusConflict {
		t.Fatalf("PUT with epoch 2 < ownership since 3: %d, want 409", r.code)
	}
	if r := do(t, "PUT", u, []byte("new"), HeaderEpoch, "3"); r.code != http.StatusNoContent {
		t.Fatalf("PUT with epoch 3: %d, want 204", r.code)
	}
}
