package frontend

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/memcache/memcache/auth"
	"github.com/memcache/memcache/fsm"
	"github.com/memcache/memcache/internal/pool"
	"github.com/memcache/memcache/node"
)

// recordingManager answers every call with status and body, and records
// what it was sent.
type recordingManager struct {
	status int
	body   string

	mu    sync.Mutex
	calls []recordedCall
}

type recordedCall struct {
	method, uri, body, authorization, contentType string
}

func (m *recordingManager) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/healthz" {
		return // the probe before a long call (a running process answers it)
	}
	b, _ := io.ReadAll(r.Body)
	m.mu.Lock()
	m.calls = append(m.calls, recordedCall{r.Method, r.URL.RequestURI(), string(b), r.Header.Get("Authorization"), r.Header.Get("Content-Type")})
	m.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(m.status)
	io.WriteString(w, m.body)
}

func (m *recordingManager) recorded() []recordedCall {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]recordedCall(nil), m.calls...)
}

func serveManager(t *testing.T, status int, body string) (*recordingManager, string) {
	t.Helper()
	m := &recordingManager{status: status, body: body}
	srv := httptest.NewServer(m)
	t.Cleanup(srv.Close)
	return m, srv.URL
}

// refusingURL returns the URL of a port that refuses connections.
func refusingURL(t *testing.T) string {
	t.Helper()
	srv := httptest.NewServer(http.NotFoundHandler())
	srv.Close()
	return srv.URL
}

func adminCall(t *testing.T, base, path, body, token string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, base+path, strings.NewReader(body))
	if body != "" {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func adminFrontend(t *testing.T, managers ...string) string {
	t.Helper()
	s := newStores(t)
	f := New(Config{Managers: func() []string { return managers }}, s.blobs, s.index, slog.New(slog.DiscardHandler))
	srv := httptest.NewServer(f.Handler())
	t.Cleanup(srv.Close)
	return srv.URL
}

// TestAdminCallsAreForwardedAsSent: each admin route reaches the manager
// with its method, path, query, body, token and content type, and the
// manager's answer — a refusal too — comes back as it was, without the call
// being sent to another manager.
func TestAdminCallsAreForwardedAsSent(t *testing.T) {
	for _, tc := range []struct {
		path, body string
		status     int
		answer     string
	}{
		{"/api/configure_cache?mode=manual&numNodes=2", "cacheSize=10&policy=RR", 200, `{"success":"true"}`},
		{"/api/getNumNodes", "", 200, `{"success":"true","numNodes":3}`},
		{"/api/getRate?rate=miss", "", 200, `{"success":"true","rate":"miss","value":0.25}`},
		{"/api/delete_all", "", 200, `{"success":"true","delete_gen":4}`},
		{"/api/configure_cache?cacheSize=0", "", 400, `{"success":"false","error":{"code":400,"message":"capacity"}}`},
		{"/api/getRate?rate=miss", "", 401, `{"success":"false","error":{"code":401,"message":"token"}}`},
		{"/api/getNumNodes", "", 500, `{"success":"false","error":{"code":500,"message":"x"}}`},
	} {
		t.Run(tc.path+" "+http.StatusText(tc.status), func(t *testing.T) {
			m, mURL := serveManager(t, tc.status, tc.answer)
			other, otherURL := serveManager(t, 200, `{"success":"true"}`)
			base := adminFrontend(t, mURL, otherURL) // the first call starts at the first manager
			code, body := adminCall(t, base, tc.path, tc.body, "t0k")
			if code != tc.status || body != tc.answer {
				t.Errorf("answer %d %s, want the manager's %d %s", code, body, tc.status, tc.answer)
			}
			calls := m.recorded()
			if len(calls) != 1 {
				t.Fatalf("manager got %d calls, want 1", len(calls))
			}
			c := calls[0]
			wantCT := ""
			if tc.body != "" {
				wantCT = "application/x-www-form-urlencoded"
			}
			if c.method != http.MethodPost || c.uri != tc.path || c.body != tc.body || c.authorization != "Bearer t0k" || c.contentType != wantCT {
				t.Errorf("manager got %+v, want POST %s body %q, the bearer token and content type %q", c, tc.path, tc.body, wantCT)
			}
			if n := len(other.recorded()); n != 0 {
				t.Errorf("the next manager got %d calls, want 0: an answer is not sent on", n)
			}
		})
	}
}

// TestAdminCallsGoToTheNextManagerWhenOneRefuses: a read (getNumNodes) is
// sent on past a manager that refuses the connection or answers 502, 503
// (without HeaderCommitted) or 504, and gets the working one's answer
// whichever manager it starts at. A write (delete_all) goes on only past a
// manager it never reached (refused connection): one that answered 502,
// 503 or 504 may have taken it, so that answer is the call's, and no
// second manager sees the write. With none known, the answer is 503.
func TestAdminCallsGoToTheNextManagerWhenOneRefuses(t *testing.T) {
	good, goodURL := serveManager(t, 200, `{"success":"true","delete_gen":1}`)
	// The working manager first: a call that starts past it reaches it
	// only by wrapping around.
	var failing []*recordingManager
	managers := []string{goodURL, refusingURL(t)}
	for _, status := range []int{502, 503, 504} {
		m, u := serveManager(t, status, `{"success":"false"}`)
		failing = append(failing, m)
		managers = append(managers, u)
	}
	base := adminFrontend(t, managers...)
	for i := range managers {
		code, body := adminCall(t, base, "/api/getNumNodes", "", "")
		if code != 200 || body != `{"success":"true","delete_gen":1}` {
			t.Errorf("read %d: %d %s, want the working manager's answer", i, code, body)
		}
	}
	if n := len(good.recorded()); n != len(managers) {
		t.Errorf("the working manager got %d reads, want %d (each call once)", n, len(managers))
	}
	for i, m := range failing {
		if len(m.recorded()) == 0 {
			t.Errorf("failing manager %d was never tried: calls do not start at each manager in turn", i)
		}
	}

	// Writes: past the refused connection to the working manager; stopped
	// by a manager that answered.
	writes := adminFrontend(t, refusingURL(t), goodURL)
	before := len(good.recorded())
	if code, body := adminCall(t, writes, "/api/delete_all", "", ""); code != 200 || !strings.Contains(body, `"success":"true"`) {
		t.Errorf("write past a refused connection: %d %s, want the working manager's answer", code, body)
	}
	if n := len(good.recorded()) - before; n != 1 {
		t.Errorf("the working manager got %d writes, want 1", n)
	}
	for _, status := range []int{502, 503, 504} {
		m, u := serveManager(t, status, `{"success":"false"}`)
		fe := adminFrontend(t, u, goodURL)
		before := len(good.recorded())
		code, _ := adminCall(t, fe, "/api/delete_all", "", "")
		if code != status || len(m.recorded()) != 1 || len(good.recorded()) != before {
			t.Errorf("write to a manager answering %d: got %d, %d calls there and %d elsewhere; want its answer and no second manager", status, code, len(m.recorded()), len(good.recorded())-before)
		}
	}
	none := adminFrontend(t)
	code, body := adminCall(t, none, "/api/getRate?rate=miss", "", "")
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "no manager replica is known") {
		t.Errorf("no manager known: %d %s, want 503 saying none is known", code, body)
	}
}

// TestClearCachesClearsEveryMemberAtTheGeneration: a delete-all clears
// every member's cache, raising each one's floor to the view's clear
// generation plus the delete-all generation; a member that cannot be
// reached makes it fail, naming the member, and the others are still
// cleared.
func TestClearCachesClearsEveryMemberAtTheGeneration(t *testing.T) {
	var nodes []*node.Node
	v := pool.View{Cache: pool.CacheConfig{CapacityMB: 64, Policy: pool.LRU}, Members: []pool.Member{}}
	v.Index, v.Epoch, v.ClearGen = 5, 1, 2
	for _, id := range []string{"n1", "n2"} {
		n, srv, _ := serveNode(t, node.Config{ID: id}, nil)
		nodes = append(nodes, n)
		v.Members = append(v.Members, pool.Member{ID: id, HTTP: srv.URL})
	}
	for r := range v.Regions {
		v.Regions[r], v.Since[r] = v.Members[r%2].ID, 1
	}
	for _, n := range nodes {
		n.ApplyPool(v)
	}
	s := newStores(t)
	f := New(Config{}, s.blobs, s.index, slog.New(slog.DiscardHandler))
	f.setPool(v)
	ctx := context.Background()
	fill := func() {
		t.Helper()
		for i := range 16 {
			if _, err := f.Put(ctx, "k"+string(rune('a'+i)), mustRead(t, "red.png")); err != nil {
				t.Fatal(err)
			}
		}
		for i, n := range nodes {
			if n.Cache().Len() == 0 {
				t.Fatalf("member %d holds nothing after the uploads", i)
			}
		}
	}
	fill()
	if err := f.clearCaches(ctx, 3); err != nil {
		t.Fatal(err)
	}
	for i, n := range nodes {
		if n.Cache().Len() != 0 || n.Floor() != 5 {
			t.Errorf("member %d after the clear: %d items, floor %d; want 0, 5 (clear 2 + delete-all 3)", i, n.Cache().Len(), n.Floor())
		}
	}
	// A member that cannot be reached, listed first.
	v2 := v.Clone()
	v2.Index, v2.DeleteGen = 6, 4
	v2.Members = append([]pool.Member{{ID: "gone", HTTP: refusingURL(t)}}, v2.Members...)
	f.setPool(v2)
	if err := f.clearCaches(ctx, 4); err == nil || !strings.Contains(err.Error(), "gone") {
		t.Errorf("clear with an unreachable member: %v, want an error naming it", err)
	}
	for i, n := range nodes {
		if n.Floor() != 6 {
			t.Errorf("member %d after a clear that failed elsewhere: floor %d, want 6", i, n.Floor())
		}
	}
}

// TestDeleteAllChecksTheGenerationWithTheManagers: a frontend whose view
// is behind asks the managers whether a delete-all generation is committed,
// past one that refuses: a committed one is carried out, one the cluster
// has not reached is refused with 409 and changes nothing, and with no
// manager answering it is refused too.
func TestDeleteAllChecksTheGenerationWithTheManagers(t *testing.T) {
	m := newManagers(t)
	m.apply(t, fsm.DeleteAll{})
	m.apply(t, fsm.DeleteAll{}) // the cluster is at delete-all generation 2
	managers := []string{refusingURL(t), m.url}
	s := newStores(t)
	f := New(Config{Secret: "sec", Managers: func() []string { return managers }}, s.blobs, s.index, slog.New(slog.DiscardHandler))
	f.setPool(pool.View{Members: []pool.Member{}}) // behind: delete-all generation 0
	ctx := context.Background()
	if _, err := f.Put(ctx, "a", mustRead(t, "red.png")); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(f.InternalHandler())
	defer srv.Close()
	client := &http.Client{Transport: &auth.Transport{Secret: "sec"}}
	if err := DeleteAll(ctx, client, srv.URL, 3); err == nil || !strings.Contains(err.Error(), "409") {
		t.Errorf("generation 3, beyond the cluster's: %v, want 409", err)
	}
	if n, _ := s.index.Count(ctx); n != 1 {
		t.Fatalf("%d rows after a refused delete-all, want 1", n)
	}
	if err := DeleteAll(ctx, client, srv.URL, 2); err != nil {
		t.Fatalf("generation 2, committed: %v", err)
	}
	if n, _ := s.index.Count(ctx); n != 0 {
		t.Errorf("%d rows after the delete-all, want 0", n)
	}
	managers = []string{refusingURL(t)}
	if err := DeleteAll(ctx, client, srv.URL, 3); err == nil || !strings.Contains(err.Error(), "409") {
		t.Errorf("generation 3 with no manager answering: %v, want 409", err)
	}
}
