package node

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
	"strconv"
	"strings"
	"testing"

	"github.com/memcache/memcache/internal/pool"
	"github.com/memcache/memcache/region"
)

// nodeState is everything a request may change on a node, but its
// counters: every entry with its bytes, metadata and LRU stamp, the
// config, the regions owned and held, and the generation floor.
type nodeState struct {
	Entries map[string]entry
	Used    int64
	Count   int64
	Config  pool.CacheConfig
	Owned   uint32
	Regions Regions
	Epoch   uint64
	Floor   uint64
}

func stateOf(n *Node) nodeState {
	st := nodeState{Entries: map[string]entry{}, Used: n.cache.Bytes(), Count: int64(n.cache.Len()),
		Config: n.cache.Config(), Owned: n.cache.owned.Load(), Regions: n.Regions(), Epoch: n.Epoch(), Floor: n.Floor()}
	for i := range n.cache.shards {
		s := &n.cache.shards[i]
		s.mu.Lock()
		for k, e := range s.items {
			st.Entries[k] = entry{key: e.key, item: e.item, region: e.region, stamp: e.stamp}
		}
		s.mu.Unlock()
	}
	return st
}

// fuzzNode returns a node holding a map at epoch 4 that gives it the even
// regions (each since epoch 2 or 4), a floor of 3, and a few entries of
// its regions, each with a content type and an ETag.
func fuzzNode(t *testing.T) (*Node, []string) {
	t.Helper()
	n, err := New(Config{ID: "n1", Cache: pool.CacheConfig{CapacityMB: 1, Policy: pool.LRU}}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	m := Regions{Epoch: 4}
	for r := range m.Owners {
		m.Owners[r], m.Since[r] = "n2", 4
		if r%2 == 0 {
			m.Owners[r], m.Since[r] = "n1", uint64(2+r%4)
		}
	}
	if _, err := n.SetRegions(context.Background(), m); err != nil {
		t.Fatal(err)
	}
	n.ClearAt(context.Background(), 3)
	var keys []string
	for i := 0; len(keys) < 4; i++ {
		k := "key-" + strconv.Itoa(i)
		if region.Of(k)%2 == 0 {
			if err := n.cache.Put(k, Item{Value: []byte("value of " + k), ContentType: "image/png", ETag: `"e` + k + `"`}); err != nil {
				t.Fatal(err)
			}
			keys = append(keys, k)
		}
	}
	return n, keys
}

// rawRequest reads the request a client sends as these bytes, as the
// node's HTTP server would; ok is false for bytes the server itself
// refuses (a malformed request line or header: the handler never sees it).
func rawRequest(method, target string, hdr [][2]string, body []byte) (*http.Request, bool) {
	if method == "" || strings.ContainsAny(method, " \r\n\t") || target == "" || strings.ContainsAny(target, " \r\n\t") {
		return nil, false
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "%s %s HTTP/1.1\r\nHost: node.test\r\n", method, target)
	for _, h := range hdr {
		if h[1] == "" {
			continue
		}
		for _, c := range h[1] {
			if c < ' ' && c != '\t' || c == 0x7f {
				return nil, false // the server answers 400 itself
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

// FuzzNodeRoutes sends one fuzzed request (method, path, the node's
// headers, body) to a node that holds a few entries, some regions and a
// generation floor. The node never panics and never answers 5xx; an
// answer of 4xx is a JSON error with that code and leaves the node as it
// was (its entries, LRU order, config, regions, floor); a 2xx write did
// what it says: a PUT is cached as sent, a DELETE took the key (or all
// keys) out.
// go test -run '^$' -fuzz '^FuzzNodeRoutes$' ./node.
func FuzzNodeRoutes(f *testing.F) {
	type seed struct {
		method, target, epoch, gen, inm, ctype string
		body                                   string
	}
	for _, s := range []seed{
		{"GET", "/cache/key-0", "", "", "", "", ""},
		{"GET", "/cache/key-0", "4", "", `"ekey-0"`, "", ""},
		{"GET", "/cache/nope", "5", "", "", "", ""},
		{"GET", "/cache/%zz", "", "", "", "", ""},
		{"GET", "/cache/", "", "", "", "", ""},
		{"PUT", "/cache/key-0", "4", "3", "", "image/gif", "GIF89a"},
		{"PUT", "/cache/key-0", "4", "3", "*", "image/gif", "GIF89a"},
		{"PUT", "/cache/key-0", "1", "3", "", "", "x"},
		{"PUT", "/cache/key-0", "4", "2", "", "", "x"},
		{"PUT", "/cache/key-0", "-1", "x", "", "", "x"},
		{"PUT", "/cache/a%2Fb%20c", "", "", "", "", "v"},
		{"DELETE", "/cache/key-0", "4", "", "", "", ""},
		{"DELETE", "/cache/key-1", "18446744073709551616", "", "", "", ""},
		{"DELETE", "/cache", "", "9", "", "", ""},
		{"DELETE", "/cache", "", "nine", "", "", ""},
		{"GET", "/config", "", "", "", "", ""},
		{"PUT", "/config", "", "", "", "application/json", `{"capacity_mb":2,"policy":"RR"}`},
		{"PUT", "/config", "", "", "", "application/json", `{"capacity_mb":0}`},
		{"PUT", "/config", "", "", "", "application/json", `{"policy":"LFU"}`},
		{"PUT", "/config", "", "", "", "application/json", `{"capacity_mb":2}{}`},
		{"GET", "/regions", "", "", "", "", ""},
		{"PUT", "/regions", "", "", "", "application/json", `{"epoch":5,"owners":["n1","n1","n1","n1","n1","n1","n1","n1","n1","n1","n1","n1","n1","n1","n1","n1"],"since":[2,5,2,5,2,5,2,5,2,5,2,5,2,5,2,5]}`},
		{"PUT", "/regions", "", "", "", "application/json", `{"epoch":3,"owners":[],"since":[]}`},
		{"PUT", "/regions", "", "", "", "application/json", `{"epoch":4,"owners":["x"]}`},
		{"GET", "/stats?since=2025-01-01T00:00:00Z", "", "", "", "", ""},
		{"GET", "/stats?since=yesterday", "", "", "", "", ""},
		{"POST", "/cache/key-0", "", "", "", "", "x"},
		{"GET", "/healthz", "", "", "", "", ""},
		{"GET", "/metrics", "", "", "", "", ""},
	} {
		f.Add(s.method, s.target, s.epoch, s.gen, s.inm, s.ctype, []byte(s.body))
	}
	f.Fuzz(func(t *testing.T, method, target, epoch, gen, inm, ctype string, body []byte) {
		r, ok := rawRequest(method, target, [][2]string{{HeaderEpoch, epoch}, {HeaderGeneration, gen},
			{"If-None-Match", inm}, {"Content-Type", ctype}, {HeaderETag, `"sent"`}}, body)
		if !ok {
			return
		}
		n, _ := fuzzNode(t)
		before := stateOf(n)
		w := httptest.NewRecorder()
		n.Handler().ServeHTTP(w, r)
		after := stateOf(n)
		code := w.Code
		if code >= 500 {
			t.Fatalf("%s %s: got %d %s, want no 5xx", method, target, code, w.Body)
		}
		if code >= 400 {
			if !reflect.DeepEqual(before, after) {
				t.Fatalf("%s %s: answered %d %s but changed the node:\nbefore %+v\nafter  %+v", method, target, code, w.Body, before, after)
			}
			if code == http.StatusMethodNotAllowed || code == http.StatusNotFound && strings.HasPrefix(w.Body.String(), "404 page not found") {
				return // the router's own answer: no such route or method
			}
			var e struct {
				Error struct {
					Code    int    `json:"code"`
					Message string `json:"message"`
				} `json:"error"`
			}
			if err := json.Unmarshal(w.Body.Bytes(), &e); err != nil || e.Error.Code != code || e.Error.Message == "" {
				t.Fatalf("%s %s: got %d %q, want a JSON error with code %d and a message", method, target, code, w.Body, code)
			}
			return
		}
		key, routed := routeKey(r)
		switch {
		case code >= 300 || !routed:
		case r.Method == http.MethodPut && key != "":
			e, ok := after.Entries[key]
			if !ok || !bytes.Equal(e.item.Value, body) || e.item.ContentType != r.Header.Get("Content-Type") || e.item.ETag != `"sent"` {
				t.Fatalf("PUT %s answered %d but holds %+v, %v, want the body %q as sent", target, code, e, ok, body)
			}
		case r.Method == http.MethodDelete && key != "":
			if _, ok := after.Entries[key]; ok {
				t.Fatalf("DELETE %s answered %d but the key is still cached", target, code)
			}
		case r.Method == http.MethodDelete && r.URL.Path == "/cache":
			if len(after.Entries) != 0 || after.Used != 0 {
				t.Fatalf("DELETE /cache answered %d but %d entries remain", code, len(after.Entries))
			}
		}
	})
}

// routeKey reports whether r is for a route of the node API (by its
// path), and, for /cache/{key}, the key.
func routeKey(r *http.Request) (string, bool) {
	p := r.URL.Path
	switch {
	case strings.HasPrefix(p, "/cache/"):
		key, err := cacheKey(r)
		if err != nil {
			return "", true
		}
		return key, true
	case p == "/cache", p == "/config", p == "/regions", p == "/stats", p == "/healthz", p == "/readyz", p == "/metrics":
		return "", true
	}
	return "", false
}
