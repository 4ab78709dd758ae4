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
	"net/http/httputil"
	neturl "net/url"
	"strconv"
	"testing"
	"time"

	"github.com/memcache/memcache/internal/pool"
	"github.com/memcache/memcache/internal/waitfor"
	"github.com/memcache/memcache/region"
)

// handoffNode is a running node: its HTTP API on a real socket and its
// background work (Run) going.
type handoffNode struct {
	*Node
	url string
	srv *httptest.Server
}

func startHandoffNode(t *testing.T, id string, capacityMB int, timeout time.Duration) *handoffNode {
	t.Helper()
	n, err := New(Config{ID: id, Cache: pool.CacheConfig{CapacityMB: capacityMB, Policy: pool.LRU},
		Peers: &http.Client{}, HandoffTimeout: timeout}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(n.Handler())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); n.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done; srv.Close() })
	return &handoffNode{n, srv.URL, srv}
}

// keyIn returns the i-th test key of region r.
func keyIn(r, i int) string {
	for j := 0; ; j++ {
		k := fmt.Sprintf("img-%d-%d-%d", r, i, j)
		if region.Of(k) == r {
			return k
		}
	}
}

// regionMap returns the map at epoch whose region r is owned by owners[r]
// since since[r], moved from from[r].
func regionMap(epoch uint64, owner func(r int) (string, uint64, pool.Member)) Regions {
	m := Regions{Epoch: epoch}
	for r := range region.Count {
		m.Owners[r], m.Since[r], m.From[r] = owner(r)
	}
	return m
}

func apply(t *testing.T, n *handoffNode, m Regions) {
	t.Helper()
	if _, err := n.SetRegions(context.Background(), m); err != nil {
		t.Fatalf("%s: SetRegions epoch %d: %v", n.id, m.Epoch, err)
	}
}

func put(t *testing.T, n *handoffNode, key string, value []byte, epoch uint64) {
	t.Helper()
	r := do(t, http.MethodPut, keyURL(n.url, key), value, HeaderEpoch, strconv.FormatUint(epoch, 10))
	if r.code != http.StatusNoContent {
		t.Fatalf("PUT %s at %s: %d %s", key, n.id, r.code, r.body)
	}
}

func value(key string, size int) []byte {
	return bytes.Repeat([]byte(key[:1]+key), size/(len(key)+1)+1)[:size]
}

// handoffPair is a giver g holding every region at epoch 1 with the keys
// of perRegion entries of size bytes each, and a receiver n holding none.
func handoffPair(t *testing.T, gMB, nMB, perRegion, size int, timeout time.Duration) (g, n *handoffNode) {
	t.Helper()
	g = startHandoffNode(t, "g", gMB, timeout)
	n = startHandoffNode(t, "n", nMB, timeout)
	m1 := regionMap(1, func(int) (string, uint64, pool.Member) { return "g", 1, pool.Member{} })
	apply(t, g, m1)
	apply(t, n, m1)
	for r := range region.Count {
		for i := range perRegion {
			k := keyIn(r, i)
			put(t, g, k, value(k, size), 1)
		}
	}
	return g, n
}

// moveLowHalf is epoch 2: regions 0..7 move from g (at gURL) to n.
func moveLowHalf(gURL string) Regions {
	return regionMap(2, func(r int) (string, uint64, pool.Member) {
		if r < 8 {
			return "n", 2, pool.Member{ID: "g", HTTP: gURL}
		}
		return "g", 1, pool.Member{}
	})
}

func cached(t *testing.T, n *handoffNode, key string) []byte {
	t.Helper()
	r := do(t, http.MethodGet, keyURL(n.url, key), nil)
	switch r.code {
	case http.StatusOK:
		return r.body
	case http.StatusNotFound:
		return nil
	}
	t.Fatalf("GET %s at %s: %d %s", key, n.id, r.code, r.body)
	return nil
}

// bulk reports whether r is a handoff's bulk copy (not its probe, which
// asks for the fences, nor a read's lookup of one key).
func bulk(r *http.Request) bool {
	q := r.URL.Query()
	return r.Method == http.MethodGet && !q.Has("key") && q.Get("fences") != "1"
}

// heldGiver is g as a receiver sees it: every request passes but the bulk
// copy, which waits until release is closed.
func heldGiver(t *testing.T, g *handoffNode) (url string, release chan struct{}) {
	t.Helper()
	target, _ := neturl.Parse(g.url)
	rp := httputil.NewSingleHostReverseProxy(target)
	release = make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if bulk(r) {
			select {
			case <-release:
			case <-r.Context().Done():
				return
			}
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv.URL, release
}

// servable reports whether n serves region r's key (no 503: the region is
// not moving here from a node that may still serve it).
func servable(t *testing.T, n *handoffNode, key string) func() bool {
	return func() bool {
		return do(t, http.MethodGet, keyURL(n.url, key), nil).code != http.StatusServiceUnavailable
	}
}

func received(n *handoffNode) func() bool {
	return func() bool { return len(n.Handoffs().Receiving) == 0 }
}

// TestHandoffOnGrow: the regions a grow moves arrive at their new owner
// filled from the previous one, the most recently used entries first
// within the new owner's share of its capacity; the previous owner keeps
// them out of reads once it has lost them, and drops them when the new
// owner is done; the new owner's reads of them are hits.
func TestHandoffOnGrow(t *testing.T) {
	// n: 1 MB for 8 regions, 128 KB a region: 4 of region 0's ten 30-KB
	// entries fit.
	g, n := handoffPair(t, 16, 1, 2, 20<<10, 30*time.Second)
	hot := map[string]bool{}
	for i := range 10 {
		k := keyIn(0, 100+i)
		put(t, g, k, value(k, 30<<10), 1)
	}
	for i := 6; i < 10; i++ { // the hottest four, hottest last
		k := keyIn(0, 100+i)
		hot[k] = true
		if cached(t, g, k) == nil {
			t.Fatalf("%s not cached at g", k)
		}
	}
	before := g.Counters()
	m2 := moveLowHalf(g.url)
	apply(t, g, m2)
	if st := g.Handoffs(); len(st.Giving) != 8 {
		t.Fatalf("g gives %d regions, want 8: %v", len(st.Giving), st)
	}
	// g keeps them out of reads: it no longer owns them.
	if r := do(t, http.MethodGet, keyURL(g.url, keyIn(0, 0)), nil); r.code != http.StatusMisdirectedRequest {
		t.Errorf("GET of a handed-off key at the previous owner: %d, want 421", r.code)
	}
	apply(t, n, m2)
	waitfor.True(t, 30*time.Second, "n to receive regions 0..7", received(n))
	for r := 1; r < 8; r++ {
		for i := range 2 {
			k := keyIn(r, i)
			if got := cached(t, n, k); !bytes.Equal(got, value(k, 20<<10)) {
				t.Errorf("region %d key %s at n: %d bytes, want g's copy", r, k, len(got))
			}
		}
	}
	for i := range 10 {
		k := keyIn(0, 100+i)
		if got := cached(t, n, k); (got != nil) != hot[k] {
			t.Errorf("region 0 key %d at n: cached %v, want %v (the four most recently used fit)", i, got != nil, hot[k])
		}
	}
	if c := n.Counters(); c.Hits != 7*2+4 || c.Misses != 6 {
		t.Errorf("n's counters %+v: want 18 hits (regions 1..7, region 0's four hot keys) and 6 misses (region 0's cold keys)", c)
	}
	waitfor.True(t, 30*time.Second, "g to drop what it kept", func() bool { return len(g.Handoffs().Giving) == 0 })
	for r := 8; r < region.Count; r++ {
		if k := keyIn(r, 0); cached(t, g, k) == nil {
			t.Errorf("g lost %s of region %d, which it still owns", k, r)
		}
	}
	if c := g.Counters(); c.Gets != before.Gets+8 {
		t.Errorf("g counted %d GETs during the handoff, want only the test's 8: the transfer is not a read", c.Gets-before.Gets)
	}
	if got, want := g.Cache().Len(), 8*2; got != want {
		t.Errorf("g holds %d entries after the handoff, want %d (regions 8..15)", got, want)
	}
}

// TestHandoffOnShrink: a node a shrink removes keeps all its regions for
// their new owner, shows them on GET /handoff until it is done, and hands
// them over.
func TestHandoffOnShrink(t *testing.T) {
	g := startHandoffNode(t, "g", 8, 30*time.Second)
	n := startHandoffNode(t, "n", 8, 30*time.Second)
	half := regionMap(1, func(r int) (string, uint64, pool.Member) {
		if r%2 == 0 {
			return "n", 1, pool.Member{}
		}
		return "g", 1, pool.Member{}
	})
	apply(t, g, half)
	apply(t, n, half)
	for r := range region.Count {
		owner := map[bool]*handoffNode{true: n, false: g}[r%2 == 0]
		put(t, owner, keyIn(r, 0), value(keyIn(r, 0), 10<<10), 1)
	}
	// g leaves the pool: n owns everything, g's regions from g.
	all := regionMap(2, func(r int) (string, uint64, pool.Member) {
		if r%2 == 0 {
			return "n", 1, pool.Member{}
		}
		return "n", 2, pool.Member{ID: "g", HTTP: g.url}
	})
	apply(t, g, all)
	var st HandoffStatus
	if r := do(t, http.MethodGet, g.url+"/handoff", nil); r.code != http.StatusOK || decodeInto(t, r.body, &st) != nil || len(st.Giving) != 8 {
		t.Fatalf("GET /handoff at the leaving node: %d %s, want 8 regions given", r.code, r.body)
	}
	apply(t, n, all)
	waitfor.True(t, 30*time.Second, "the leaving node to hand every region off", func() bool {
		r := do(t, http.MethodGet, g.url+"/handoff", nil)
		return r.code == http.StatusOK && decodeInto(t, r.body, &st) == nil && len(st.Giving) == 0
	})
	for r := range region.Count {
		if k := keyIn(r, 0); !bytes.Equal(cached(t, n, k), value(k, 10<<10)) {
			t.Errorf("region %d: %s not at n after the shrink", r, k)
		}
	}
	if st := n.Handoffs(); st.Entries != 8 || st.Bytes != 8*10<<10 {
		t.Errorf("n's handoff figures %v: want 8 entries of 10 KB", st)
	}
}

// TestHandoffWritesDuringHandoffWin: a write or an invalidation that
// reaches the new owner before the copy does is not undone by the copy.
func TestHandoffWritesDuringHandoffWin(t *testing.T) {
	g, n := handoffPair(t, 8, 8, 4, 10<<10, 30*time.Second)
	gURL, release := heldGiver(t, g)
	m2 := moveLowHalf(gURL)
	// Both hold the new map; n has heard from g (its probe) but the copy
	// waits: writes reach n before it.
	apply(t, g, m2)
	apply(t, n, m2)
	waitfor.True(t, 30*time.Second, "n to serve region 0", servable(t, n, keyIn(0, 50)))
	written, deleted, kept := keyIn(0, 0), keyIn(0, 1), keyIn(0, 2)
	fresh := []byte("the newer image")
	put(t, n, written, fresh, 2)
	if r := do(t, http.MethodDelete, keyURL(n.url, deleted), nil, HeaderEpoch, "2"); r.code != http.StatusNoContent {
		t.Fatalf("DELETE at n: %d %s", r.code, r.body)
	}
	// A write that is evicted before the copy arrives is not undone either.
	evicted := keyIn(0, 3)
	put(t, n, evicted, fresh, 2)
	n.Cache().Delete(evicted)
	if len(n.Handoffs().Receiving) != 8 {
		t.Fatalf("n is not waiting for the copy: %v", n.Handoffs())
	}
	close(release)
	waitfor.True(t, 30*time.Second, "n to receive regions 0..7", received(n))
	if got := cached(t, n, written); !bytes.Equal(got, fresh) {
		t.Errorf("written key at n: %q, want the write made during the handoff", got)
	}
	if got := cached(t, n, deleted); got != nil {
		t.Errorf("deleted key at n: %d bytes, want it gone (the copy must not bring it back)", len(got))
	}
	if got := cached(t, n, evicted); got != nil {
		t.Errorf("written then evicted key at n: %d bytes, want it uncached (the copy is older than the write)", len(got))
	}
	if got := cached(t, n, kept); !bytes.Equal(got, value(kept, 10<<10)) {
		t.Errorf("untouched key at n: %d bytes, want g's copy", len(got))
	}
	if st := n.Handoffs(); st.Refused < 3 {
		t.Errorf("n refused %d copies, want at least the written, the deleted and the evicted key's", st.Refused)
	}
}

// TestHandoffClearAndDeleteAllWin: a clear or a delete-all that reaches
// the new owner during a handoff wins: nothing the previous owner held
// before it arrives after it.
func TestHandoffClearAndDeleteAllWin(t *testing.T) {
	t.Run("clear", func(t *testing.T) {
		g, n := handoffPair(t, 8, 8, 2, 10<<10, 30*time.Second)
		m2 := moveLowHalf(g.url)
		apply(t, n, m2)
		if err := n.ClearAt(context.Background(), 0); err != nil { // an operator's clear: no generation
			t.Fatal(err)
		}
		apply(t, g, m2)
		waitfor.True(t, 30*time.Second, "n to end the handoff", received(n))
		if got := n.Cache().Len(); got != 0 {
			t.Errorf("n holds %d entries after a clear during the handoff, want 0", got)
		}
		if st := n.Handoffs(); st.Refused != 16 || st.Entries != 0 {
			t.Errorf("n's handoff figures %v: want all 16 copies refused", st)
		}
	})
	t.Run("delete-all", func(t *testing.T) {
		g, n := handoffPair(t, 8, 8, 2, 10<<10, 30*time.Second)
		m2 := moveLowHalf(g.url)
		// n takes the regions, then carries out a delete-all (generation
		// 1) before g has seen either.
		apply(t, n, m2)
		if err := n.ClearAt(context.Background(), 1); err != nil {
			t.Fatal(err)
		}
		apply(t, g, m2)
		// g holds the map but has not cleared: it answers 409 to n's
		// generation, so n waits rather than take what the delete-all
		// removed.
		u := g.url + "/handoff/0?epoch=2&gen=1"
		if r := do(t, http.MethodGet, u, nil); r.code != http.StatusConflict {
			t.Fatalf("GET %s: %d %s, want 409 while g has not cleared", u, r.code, r.body)
		}
		if len(n.Handoffs().Receiving) != 8 || n.Cache().Len() != 0 {
			t.Fatalf("n during the delete-all: %v, %d entries; want still waiting, empty", n.Handoffs(), n.Cache().Len())
		}
		if err := g.ClearAt(context.Background(), 1); err != nil {
			t.Fatal(err)
		}
		waitfor.True(t, 30*time.Second, "n to end the handoff", received(n))
		if got := n.Cache().Len(); got != 0 {
			t.Errorf("n holds %d entries after a delete-all during the handoff, want 0", got)
		}
	})
}

// TestHandoffPreviousOwnerDiesMidway: a previous owner that stops
// answering in the middle of the copy ends the handoff: what arrived stays,
// the rest misses, and nothing waits for the dead node.
func TestHandoffPreviousOwnerDiesMidway(t *testing.T) {
	g, n := handoffPair(t, 16, 16, 6, 50<<10, time.Minute)
	// The previous owner as n sees it: it dies after sending about half
	// of region 0's copy.
	target, _ := neturl.Parse(g.url)
	rp := httputil.NewSingleHostReverseProxy(target)
	dying := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := httptest.NewRecorder()
		rp.ServeHTTP(rec, r)
		if !bulk(r) || rec.Code != http.StatusOK {
			w.WriteHeader(rec.Code)
			w.Write(rec.Body.Bytes())
			return
		}
		body := rec.Body.Bytes()
		w.WriteHeader(http.StatusOK)
		w.Write(body[:len(body)/2])
		w.(http.Flusher).Flush()
		panic(http.ErrAbortHandler) // the connection drops
	}))
	defer dying.Close()
	keepLeased(t, n.Node, time.Hour) // regions are served because the probes passed
	m2 := moveLowHalf(dying.URL)
	apply(t, g, m2)
	apply(t, n, m2)
	waitfor.True(t, 30*time.Second, "n to end the handoff", received(n))
	st := n.Handoffs()
	if st.Entries == 0 || st.Entries >= 6 {
		t.Errorf("n installed %d entries of region 0's 6 from a node that died halfway, want some but not all", st.Entries)
	}
	// Regions 1..7: probed (the node held the map) before it died, so
	// served, but nothing of them was copied.
	waitfor.True(t, 30*time.Second, "n to serve regions 1..7", func() bool {
		for r := 1; r < 8; r++ {
			if !servable(t, n, keyIn(r, 0))() {
				return false
			}
		}
		return true
	})
	for r := 1; r < 8; r++ {
		if k := keyIn(r, 0); cached(t, n, k) != nil {
			t.Errorf("%s of region %d at n: the handoff went on past the dead node", k, r)
		}
	}
}

// keepLeased renews n's serving lease of term every term/4 until the test
// ends, as the managers' watch does.
func keepLeased(t *testing.T, n *Node, term time.Duration) {
	n.Renew(time.Now(), term)
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(term / 4)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				n.Renew(time.Now(), term)
			}
		}
	}()
	t.Cleanup(func() { close(stop); <-done })
}

// TestHandoffRegionNotServedUntilThePreviousOwnerHoldsTheMap: a region
// moving here from a running node is neither served nor written (503; an
// invalidation is taken) until that node holds the map that moved it (it
// may still serve the region to frontends on the old map, and a write
// taken here would leave its copy stale for them), or until a serving-lease
// term has passed if it never answers.
func TestHandoffRegionNotServedUntilThePreviousOwnerHoldsTheMap(t *testing.T) {
	g, n := handoffPair(t, 8, 8, 1, 1<<10, time.Minute)
	keepLeased(t, n.Node, time.Minute)
	m2 := moveLowHalf(g.url)
	apply(t, n, m2) // g still holds epoch 1: it serves region 0 to old-map frontends
	if w := n.Handoffs().Waiting; len(w) != 8 {
		t.Errorf("waiting regions %v, want 0..7", w)
	}
	k := keyIn(0, 0)
	for _, c := range []struct {
		method string
		hdr    []string
		code   int
	}{
		{http.MethodGet, nil, http.StatusServiceUnavailable},
		{http.MethodPut, []string{HeaderEpoch, "2"}, http.StatusServiceUnavailable},
		{http.MethodPut, []string{HeaderEpoch, "2", "If-None-Match", "*"}, http.StatusServiceUnavailable}, // a fill
		{http.MethodDelete, []string{HeaderEpoch, "2", HeaderFence, "upload-1"}, http.StatusServiceUnavailable},
		{http.MethodDelete, []string{HeaderEpoch, "2", HeaderVersion, "7"}, http.StatusServiceUnavailable},
		{http.MethodDelete, []string{HeaderEpoch, "2"}, http.StatusNoContent}, // removing is always safe
	} {
		var body []byte
		if c.method == http.MethodPut {
			body = []byte("new")
		}
		if r := do(t, c.method, keyURL(n.url, k), body, c.hdr...); r.code != c.code {
			t.Errorf("%s %v at n before g holds the map: %d %s, want %d", c.method, c.hdr, r.code, r.body, c.code)
		}
	}
	// Region 8 did not move: served as ever.
	if r := do(t, http.MethodGet, keyURL(g.url, keyIn(8, 0)), nil); r.code != http.StatusOK {
		t.Errorf("GET of an unmoved region at g: %d", r.code)
	}
	apply(t, g, m2)
	waitfor.True(t, 30*time.Second, "n to serve region 0 once g holds the map", servable(t, n, k))
	// The regions are probed one after the other: wait for the last.
	waitfor.True(t, 30*time.Second, "no region waiting once g holds the map", func() bool {
		return len(n.Handoffs().Waiting) == 0
	})
	waitfor.True(t, 30*time.Second, "n to receive regions 0..7", received(n))
	if got := cached(t, n, keyIn(1, 0)); !bytes.Equal(got, value(keyIn(1, 0), 1<<10)) {
		t.Errorf("region 1 at n after the handoff: %d bytes, want g's copy", len(got))
	}
}

// TestHandoffWarmRead: while a region's copy is under way, a read that
// misses at the new owner is answered from the previous owner, installed,
// and counted once, as a hit, at the new owner only.
func TestHandoffWarmRead(t *testing.T) {
	g, n := handoffPair(t, 8, 8, 2, 10<<10, time.Minute)
	target, _ := neturl.Parse(g.url)
	rp := httputil.NewSingleHostReverseProxy(target)
	release := make(chan struct{})
	held := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if bulk(r) {
			select { // the bulk copy waits
			case <-release:
			case <-r.Context().Done():
				return
			}
		}
		rp.ServeHTTP(w, r)
	}))
	defer held.Close()
	m2 := moveLowHalf(held.URL)
	apply(t, g, m2)
	apply(t, n, m2)
	waitfor.True(t, 30*time.Second, "n to hear from g (its probe) and serve region 3", servable(t, n, keyIn(3, 77)))
	gBefore, nBefore := g.Counters(), n.Counters()
	k := keyIn(3, 1)
	if got := cached(t, n, k); !bytes.Equal(got, value(k, 10<<10)) {
		t.Fatalf("read of %s at n during the handoff: %d bytes, want g's copy", k, len(got))
	}
	if got := n.Cache().Len(); got != 1 {
		t.Errorf("n holds %d entries, want the one read installed", got)
	}
	if c := n.Counters(); c.Gets-nBefore.Gets != 1 || c.Hits-nBefore.Hits != 1 {
		t.Errorf("n counted %d GETs and %d hits for one read served from the previous owner, want 1 and 1", c.Gets-nBefore.Gets, c.Hits-nBefore.Hits)
	}
	if c := g.Counters(); c.Gets != gBefore.Gets {
		t.Errorf("g counted %d GETs for the lookup, want 0: the read is n's", c.Gets-gBefore.Gets)
	}
	if st := n.Handoffs(); st.WarmReads != 1 {
		t.Errorf("warm reads %d, want 1", st.WarmReads)
	}
	// A key g does not have either is one miss.
	if got := cached(t, n, keyIn(3, 50)); got != nil {
		t.Errorf("a key nobody holds read %d bytes", len(got))
	}
	if c := n.Counters(); c.Misses-nBefore.Misses != 1 {
		t.Errorf("n counted %d misses for one read nobody holds, want 1", c.Misses-nBefore.Misses)
	}
	close(release)
	waitfor.True(t, 30*time.Second, "n to receive regions 0..7", received(n))
	if got := cached(t, n, keyIn(5, 0)); got == nil {
		t.Error("the bulk copy did not arrive after it was let through")
	}
}

// TestHandoffBadInput: what each malformed handoff request gets, and that
// none of them changes anything.
func TestHandoffBadInput(t *testing.T) {
	g, _ := handoffPair(t, 8, 8, 1, 1<<10, 30*time.Second)
	apply(t, g, moveLowHalf("http://127.0.0.1:1"))
	k0 := keyIn(0, 0)
	for _, c := range []struct {
		method, path string
		code         int
	}{
		{http.MethodGet, "/handoff/16?epoch=2", http.StatusBadRequest},
		{http.MethodGet, "/handoff/-1?epoch=2", http.StatusBadRequest},
		{http.MethodGet, "/handoff/x?epoch=2", http.StatusBadRequest},
		{http.MethodGet, "/handoff/0", http.StatusBadRequest},
		{http.MethodGet, "/handoff/0?epoch=two", http.StatusBadRequest},
		{http.MethodGet, "/handoff/0?epoch=2&gen=-1", http.StatusBadRequest},
		{http.MethodGet, "/handoff/0?epoch=2&budget=-5", http.StatusBadRequest},
		{http.MethodGet, "/handoff/0?epoch=2&key=", http.StatusBadRequest},
		{http.MethodGet, "/handoff/1?epoch=2&key=" + neturl.QueryEscape(k0), http.StatusBadRequest}, // k0 is region 0's
		{http.MethodGet, "/handoff/9?epoch=2", http.StatusNotFound},                                 // g still owns 9
		{http.MethodGet, "/handoff/0?epoch=3", http.StatusConflict},                                 // g holds epoch 2
		{http.MethodGet, "/handoff/0?epoch=2&gen=5", http.StatusConflict},                           // g has not cleared to 5
		{http.MethodDelete, "/handoff/zero?epoch=2", http.StatusBadRequest},
		{http.MethodDelete, "/handoff/0?epoch=", http.StatusBadRequest},
		{http.MethodDelete, "/handoff/0?epoch=1", http.StatusNoContent}, // older than the move: a no-op
	} {
		if r := do(t, c.method, g.url+c.path, nil); r.code != c.code {
			t.Errorf("%s %s: %d %s, want %d", c.method, c.path, r.code, r.body, c.code)
		}
	}
	if st := g.Handoffs(); len(st.Giving) != 8 || g.Cache().Len() != 16 {
		t.Errorf("after bad requests g gives %d regions and holds %d entries, want 8 and 16", len(st.Giving), g.Cache().Len())
	}
	// A good one: region 0's one entry, in a frame.
	r := do(t, http.MethodGet, g.url+"/handoff/0?epoch=2", nil)
	key, it, err := readFrame(bufio.NewReader(bytes.NewReader(r.body)), 1<<20)
	if r.code != http.StatusOK || err != nil || key != k0 || !bytes.Equal(it.Value, value(k0, 1<<10)) {
		t.Errorf("GET /handoff/0: %d, frame %q %d bytes %v; want %s's entry", r.code, key, len(it.Value), err, k0)
	}
}

// TestHandoffNeedsTheSecret: a node with a cluster secret hands nothing
// off to a caller without it.
func TestHandoffNeedsTheSecret(t *testing.T) {
	n, err := New(Config{ID: "g", Secret: "s3cret"}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(n.Handler())
	defer srv.Close()
	for _, p := range []string{"/handoff", "/handoff/0?epoch=0"} {
		if r := do(t, http.MethodGet, srv.URL+p, nil); r.code != http.StatusUnauthorized {
			t.Errorf("GET %s without the secret: %d, want 401", p, r.code)
		}
	}
}

func decodeInto(t *testing.T, b []byte, v any) error {
	t.Helper()
	return json.Unmarshal(b, v)
}

// TestHandoffPreviousOwnerSilentOrGone: a previous owner that never
// answers keeps the region unserved for a serving-lease term (by then it
// has applied the map or stopped serving); one that refuses connections
// serves nobody at its address, so the region is served at once.
func TestHandoffPreviousOwnerSilentOrGone(t *testing.T) {
	t.Run("silent", func(t *testing.T) {
		silent := httptest.NewServer(http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) { <-r.Context().Done() }))
		t.Cleanup(silent.Close) // after n has stopped asking it
		_, n := handoffPair(t, 8, 8, 1, 1<<10, time.Minute)
		keepLeased(t, n.Node, 2*time.Second)
		apply(t, n, moveLowHalf(silent.URL))
		k := keyIn(0, 0)
		if r := do(t, http.MethodGet, keyURL(n.url, k), nil); r.code != http.StatusServiceUnavailable {
			t.Fatalf("GET while the silent previous owner may still serve: %d, want 503", r.code)
		}
		waitfor.True(t, 30*time.Second, "n to serve region 0 after a lease term", servable(t, n, k))
	})
	t.Run("gone", func(t *testing.T) {
		_, n := handoffPair(t, 8, 8, 1, 1<<10, time.Minute)
		gone := httptest.NewServer(http.NotFoundHandler())
		gone.Close()
		keepLeased(t, n.Node, time.Hour) // only the refusal can end the wait
		apply(t, n, moveLowHalf(gone.URL))
		waitfor.True(t, 30*time.Second, "n to serve regions 0..7 at once", func() bool {
			for r := range 8 {
				if !servable(t, n, keyIn(r, 0))() {
					return false
				}
			}
			return true
		})
	})
}

// TestHandoffFillsOlderThanThePreviousOwnersWrites: a read that loaded a
// row before an upload went through the previous owner (on the old map)
// cannot fill the new owner with it: the previous owner's fences reach the
// new owner before it serves the region; and a fill older than the copy
// the previous owner hands over is replaced by it.
func TestHandoffFillsOlderThanThePreviousOwnersWrites(t *testing.T) {
	g, n := handoffPair(t, 8, 8, 1, 1<<10, time.Minute)
	fenced, filled := keyIn(0, 10), keyIn(0, 11)
	// An upload through g (old map): its write at version 2 fences the key
	// there. A read filled g with version 3 of the other key (no fence).
	if r := do(t, http.MethodPut, keyURL(g.url, fenced), []byte("v2"), HeaderEpoch, "1", HeaderVersion, "2"); r.code != http.StatusNoContent {
		t.Fatalf("upload at g: %d %s", r.code, r.body)
	}
	if r := do(t, http.MethodPut, keyURL(g.url, filled), []byte("v3"), HeaderEpoch, "1", HeaderVersion, "3", "If-None-Match", "*"); r.code != http.StatusNoContent {
		t.Fatalf("fill at g: %d %s", r.code, r.body)
	}
	gURL, release := heldGiver(t, g)
	m2 := moveLowHalf(gURL)
	apply(t, g, m2)
	apply(t, n, m2)
	waitfor.True(t, 30*time.Second, "n to serve region 0", servable(t, n, keyIn(0, 50)))
	// Slow reads that loaded older rows now fill n.
	if r := do(t, http.MethodPut, keyURL(n.url, fenced), []byte("v1"), HeaderEpoch, "2", HeaderVersion, "1", "If-None-Match", "*"); r.code != http.StatusPreconditionFailed {
		t.Errorf("fill of version 1 at n after g's upload of version 2: %d %s, want 412 (g's fence)", r.code, r.body)
	}
	if r := do(t, http.MethodPut, keyURL(n.url, filled), []byte("v2"), HeaderEpoch, "2", HeaderVersion, "2", "If-None-Match", "*"); r.code != http.StatusNoContent {
		t.Fatalf("fill of version 2 at n: %d %s", r.code, r.body)
	}
	close(release)
	waitfor.True(t, 30*time.Second, "n to receive regions 0..7", received(n))
	if got := cached(t, n, fenced); !bytes.Equal(got, []byte("v2")) {
		t.Errorf("%s at n: %q, want g's v2", fenced, got)
	}
	if got := cached(t, n, filled); !bytes.Equal(got, []byte("v3")) {
		t.Errorf("%s at n: %q, want g's v3 (newer than the fill of v2)", filled, got)
	}
}
