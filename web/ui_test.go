package web_test

import (
	"context"
	"encoding/json"
	"fmt"
	"html"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/memcache/memcache/fsm"
	"github.com/memcache/memcache/internal/waitfor"
)

// client is a browser-like HTTP client of one replica's UI: it keeps
// cookies and does not follow redirects.
type client struct {
	t    *testing.T
	base string
	http *http.Client
}

// at returns a client of the replica at base that shares c's cookies.
func (c *client) at(base string) *client {
	return &client{t: c.t, base: base, http: c.http}
}

func newClient(t *testing.T, base string) *client {
	t.Helper()
	jar, err := cookiejar.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	return &client{t: t, base: base, http: &http.Client{
		Jar: jar, Timeout: 30 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}}
}

// response is an answer, its body as text (HTML entities decoded).
type response struct {
	code     int
	body     string
	location string
}

func (c *client) do(req *http.Request) response {
	c.t.Helper()
	resp, err := c.http.Do(req)
	if err != nil {
		c.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return response{code: resp.StatusCode, body: html.UnescapeString(string(b)), location: resp.Header.Get("Location")}
}

func (c *client) get(path string) response {
	c.t.Helper()
	req, err := http.NewRequest(http.MethodGet, c.base+path, nil)
	if err != nil {
		c.t.Fatal(err)
	}
	return c.do(req)
}

func (c *client) post(path string, form url.Values) response {
	c.t.Helper()
	req, err := http.NewRequest(http.MethodPost, c.base+path, strings.NewReader(form.Encode()))
	if err != nil {
		c.t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	return c.do(req)
}

var csrfRE = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

// csrf returns the CSRF token of the forms on the page at path.
func (c *client) csrf(path string) string {
	c.t.Helper()
	r := c.get(path)
	m := csrfRE.FindStringSubmatch(r.body)
	if r.code != http.StatusOK || m == nil {
		c.t.Fatalf("GET %s: got %d without a csrf field, want 200 with one:\n%s", path, r.code, r.body)
	}
	return m[1]
}

// login logs in with token and fails the test unless it worked.
func (c *client) login(token string) {
	c.t.Helper()
	r := c.post("/ui/login", url.Values{"csrf": {c.csrf("/ui/login")}, "token": {token}})
	if r.code != http.StatusSeeOther || r.location != "/ui" {
		c.t.Fatalf("login: got %d to %q, want 303 to /ui:\n%s", r.code, r.location, r.body)
	}
}

// form returns values with the page's CSRF token added.
func (c *client) form(kv ...string) url.Values {
	c.t.Helper()
	v := url.Values{"csrf": {c.csrf("/ui")}}
	for i := 0; i+1 < len(kv); i += 2 {
		v.Add(kv[i], kv[i+1])
	}
	return v
}

// unchanged fails the test if the leader's state moved from before.
func unchanged(t *testing.T, s *system, before fsm.State, what string) {
	t.Helper()
	if after := s.state(); !reflect.DeepEqual(after, before) {
		t.Errorf("%s changed the state:\ngot  %+v\nwant %+v", what, after, before)
	}
}

func TestUILogin(t *testing.T) {
	s := startSystem(t, systemConfig{replicas: 1, nodes: 1, token: testToken})
	base := s.replicas[0].url

	t.Run("pages need a session", func(t *testing.T) {
		c := newClient(t, base)
		for _, p := range []string{"/ui", "/ui/delete-all"} {
			if r := c.get(p); r.code != http.StatusSeeOther || r.location != "/ui/login" {
				t.Errorf("GET %s: got %d to %q, want 303 to /ui/login", p, r.code, r.location)
			}
		}
		if r := c.get("/ui/api/dashboard"); r.code != http.StatusUnauthorized {
			t.Errorf("GET /ui/api/dashboard: got %d, want 401", r.code)
		}
		before := s.state()
		if r := c.post("/ui/clear", url.Values{}); r.code != http.StatusSeeOther || r.location != "/ui/login" {
			t.Errorf("POST /ui/clear: got %d to %q, want 303 to /ui/login", r.code, r.location)
		}
		unchanged(t, s, before, "a POST without a session")
	})

	t.Run("wrong token", func(t *testing.T) {
		c := newClient(t, base)
		for _, tok := range []string{"", "wrong", testToken + "x", strings.ToUpper(testToken)} {
			r := c.post("/ui/login", url.Values{"csrf": {c.csrf("/ui/login")}, "token": {tok}})
			if r.code != http.StatusUnauthorized || !strings.Contains(r.body, "That is not the admin token") {
				t.Errorf("login with %q: got %d, want 401 saying it is not the admin token:\n%s", tok, r.code, r.body)
			}
			if r := c.get("/ui"); r.code != http.StatusSeeOther {
				t.Errorf("after login with %q: GET /ui got %d, want 303 to the login page", tok, r.code)
			}
		}
	})

	t.Run("login form without csrf", func(t *testing.T) {
		c := newClient(t, base)
		c.csrf("/ui/login") // gets the anonymous session
		for _, form := range []url.Values{{"token": {testToken}}, {"token": {testToken}, "csrf": {"forged"}}} {
			r := c.post("/ui/login", form)
			if r.code != http.StatusForbidden || !strings.Contains(r.body, "Nothing was changed") {
				t.Errorf("login %v: got %d, want 403 saying nothing was changed:\n%s", form, r.code, r.body)
			}
		}
		if r := c.get("/ui"); r.code != http.StatusSeeOther {
			t.Errorf("GET /ui after refused logins: got %d, want 303 to the login page", r.code)
		}
	})

	t.Run("login, dashboard, logout", func(t *testing.T) {
		c := newClient(t, base)
		c.login(testToken)
		r := c.get("/ui")
		if r.code != http.StatusOK || !strings.Contains(r.body, `id="chart-requests"`) || !strings.Contains(r.body, `id="raft-state"`) {
			t.Fatalf("GET /ui: got %d, want 200 with the dashboard:\n%s", r.code, r.body)
		}
		r = c.post("/ui/logout", url.Values{"csrf": {c.csrf("/ui")}})
		if r.code != http.StatusSeeOther || r.location != "/ui/login" {
			t.Errorf("logout: got %d to %q, want 303 to /ui/login", r.code, r.location)
		}
		if r := c.get("/ui"); r.code != http.StatusSeeOther {
			t.Errorf("GET /ui after logout: got %d, want 303", r.code)
		}
	})

	t.Run("forged and expired cookies", func(t *testing.T) {
		for _, v := range []string{"garbage", "djF8OTk5OTk5OTk5OXxhYmN8MQ.AAAA", ""} {
			req, _ := http.NewRequest(http.MethodGet, base+"/ui", nil)
			req.AddCookie(&http.Cookie{Name: "memcache_session", Value: v})
			r := newClient(t, base).do(req)
			if r.code != http.StatusSeeOther {
				t.Errorf("cookie %q: got %d, want 303 to the login page", v, r.code)
			}
		}
	})
}

// TestUIFormsRefuseBadValues: every form rejects a bad value with a 4xx
// and a readable message, and changes nothing.
func TestUIFormsRefuseBadValues(t *testing.T) {
	s := startSystem(t, systemConfig{replicas: 1, nodes: 2, token: testToken})
	c := newClient(t, s.replicas[0].url)
	c.login(testToken)

	tests := []struct {
		name string
		path string
		kv   []string
		code int
		want string
	}{
		{"capacity not a number", "/ui/config", []string{"capacity_mb", "lots", "policy", "LRU"}, 400, `Capacity must be a whole number; "lots" is not.`},
		{"capacity fraction", "/ui/config", []string{"capacity_mb", "1.5", "policy", "LRU"}, 400, `Capacity must be a whole number; "1.5" is not.`},
		{"capacity missing", "/ui/config", []string{"policy", "LRU"}, 400, "Capacity is required."},
		{"capacity 0", "/ui/config", []string{"capacity_mb", "0", "policy", "LRU"}, 400, "Capacity 0 MB is outside 1..1024 MB."},
		{"capacity 1025", "/ui/config", []string{"capacity_mb", "1025", "policy", "RR"}, 400, "Capacity 1025 MB is outside 1..1024 MB."},
		{"capacity negative", "/ui/config", []string{"capacity_mb", "-5", "policy", "RR"}, 400, "Capacity -5 MB is outside 1..1024 MB."},
		{"policy LFU", "/ui/config", []string{"capacity_mb", "128", "policy", "LFU"}, 400, `Policy must be LRU or RR; "LFU" is neither.`},
		{"policy lower case", "/ui/config", []string{"capacity_mb", "128", "policy", "lru"}, 400, `Policy must be LRU or RR; "lru" is neither.`},
		{"policy missing, capacity bad", "/ui/config", []string{"capacity_mb", "2000"}, 400, `Policy must be LRU or RR; "" is neither.`},
		{"mode", "/ui/scaling", []string{"mode", "sometimes"}, 400, `Mode must be manual or auto; "sometimes" is neither.`},
		{"max miss not a number", "/ui/scaling", []string{"mode", "auto", "max_miss", "high"}, 400, `Max miss rate must be a number; "high" is not.`},
		{"max miss NaN", "/ui/scaling", []string{"mode", "auto", "max_miss", "NaN"}, 400, `Max miss rate must be a number; "NaN" is not.`},
		{"min miss Inf", "/ui/scaling", []string{"mode", "auto", "min_miss", "-Inf"}, 400, `Min miss rate must be a number; "-Inf" is not.`},
		{"max miss above 1", "/ui/scaling", []string{"mode", "auto", "max_miss", "1.5"}, 400, "Max miss rate 1.5 must be between 0 and 1."},
		{"min miss below 0", "/ui/scaling", []string{"mode", "auto", "min_miss", "-0.1"}, 400, "Min miss rate -0.1 must be between 0 and 1."},
		{"min equals max", "/ui/scaling", []string{"mode", "auto", "max_miss", "0.5", "min_miss", "0.5"}, 400, "Min miss rate 0.5 must be below max miss rate 0.5."},
		{"min above max", "/ui/scaling", []string{"mode", "auto", "max_miss", "0.3", "min_miss", "0.6"}, 400, "Min miss rate 0.6 must be below max miss rate 0.3."},
		{"min above current max", "/ui/scaling", []string{"mode", "auto", "min_miss", "0.9"}, 400, "Min miss rate 0.9 must be below max miss rate 0.8."},
		{"expand ratio 1", "/ui/scaling", []string{"mode", "auto", "expand_ratio", "1"}, 400, "Expand ratio 1 must be above 1 and at most 8."},
		{"expand ratio 9", "/ui/scaling", []string{"mode", "auto", "expand_ratio", "9"}, 400, "Expand ratio 9 must be above 1 and at most 8."},
		{"shrink ratio 1", "/ui/scaling", []string{"mode", "auto", "shrink_ratio", "1"}, 400, "Shrink ratio 1 must be strictly between 0 and 1."},
		{"shrink ratio 0", "/ui/scaling", []string{"mode", "auto", "shrink_ratio", "0"}, 400, "Shrink ratio 0 must be strictly between 0 and 1."},
		{"shrink ratio text", "/ui/scaling", []string{"mode", "manual", "shrink_ratio", "half"}, 400, `Shrink ratio must be a number; "half" is not.`},
		{"one bad field among good", "/ui/scaling", []string{"mode", "auto", "max_miss", "0.7", "min_miss", "0.1", "expand_ratio", "2", "shrink_ratio", "2"}, 400, "Shrink ratio 2 must be strictly between 0 and 1."},
		{"delete all without confirmation", "/ui/delete-all", nil, 400, "Deleting all data needs the confirmation step"},
		{"delete all with a wrong confirmation", "/ui/delete-all", []string{"confirm", "no"}, 400, "Deleting all data needs the confirmation step"},
		{"shrink at 1 node", "/ui/pool/shrink", nil, 409, "The pool has 1 node, the fewest it may have."},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := s.state()
			r := c.post(tt.path, c.form(tt.kv...))
			if r.code != tt.code || !strings.Contains(r.body, tt.want) {
				t.Errorf("POST %s %v: got %d, want %d with %q:\n%s", tt.path, tt.kv, r.code, tt.code, tt.want, r.body)
			}
			if !strings.Contains(r.body, `id="problem"`) {
				t.Errorf("POST %s: the page shows no problem box:\n%s", tt.path, r.body)
			}
			unchanged(t, s, before, "a refused form")
		})
	}

	t.Run("good values are applied", func(t *testing.T) {
		r := c.post("/ui/config", c.form("capacity_mb", "256", "policy", "RR"))
		if r.code != http.StatusSeeOther || !strings.HasPrefix(r.location, "/ui?done=config&index=") {
			t.Fatalf("config: got %d to %q, want 303 to /ui?done=config", r.code, r.location)
		}
		if got, want := s.state().Cache, (fsm.CacheConfig{CapacityMB: 256, Policy: fsm.PolicyRR}); got != want {
			t.Errorf("cache config: got %+v, want %+v", got, want)
		}
		if r := c.get(r.location); r.code != http.StatusOK || !strings.Contains(r.body, "Cache configuration saved") || !strings.Contains(r.body, `value="256"`) {
			t.Errorf("dashboard after config: got %d, want the notice and capacity 256:\n%s", r.code, r.body)
		}
		r = c.post("/ui/scaling", c.form("mode", "auto", "max_miss", "0.6", "min_miss", "0.05", "expand_ratio", "1.5", "shrink_ratio", "0.75"))
		if r.code != http.StatusSeeOther {
			t.Fatalf("scaling: got %d, want 303:\n%s", r.code, r.body)
		}
		want := fsm.ScalingPolicy{Mode: fsm.ModeAuto, MaxMissRate: 0.6, MinMissRate: 0.05, ExpandRatio: 1.5, ShrinkRatio: 0.75}
		if got := s.state().Scaling; got != want {
			t.Errorf("scaling: got %+v, want %+v", got, want)
		}
	})
}

// TestUIResizeBounds: grow and shrink by one, only in manual mode and
// within 1..8 nodes.
func TestUIResizeBounds(t *testing.T) {
	s := startSystem(t, systemConfig{replicas: 1, nodes: 8, token: testToken})
	c := newClient(t, s.replicas[0].url)
	c.login(testToken)
	ctx := context.Background()

	refused := func(path string, code int, want string) {
		t.Helper()
		before := s.state()
		r := c.post(path, c.form())
		if r.code != code || !strings.Contains(r.body, want) {
			t.Errorf("POST %s with %d nodes: got %d, want %d with %q:\n%s", path, len(before.Members), r.code, code, want, r.body)
		}
		unchanged(t, s, before, "a refused resize")
	}
	resized := func(path string, want int) {
		t.Helper()
		r := c.post(path, c.form())
		if r.code != http.StatusSeeOther {
			t.Fatalf("POST %s: got %d, want 303:\n%s", path, r.code, r.body)
		}
		if got := len(s.state().Members); got != want {
			t.Fatalf("after POST %s: got %d nodes, want %d", path, got, want)
		}
	}

	refused("/ui/pool/shrink", http.StatusConflict, "The pool has 1 node, the fewest it may have.")
	resized("/ui/pool/grow", 2)
	resized("/ui/pool/shrink", 1)

	if _, err := s.leader().pool.Resize(ctx, 7); err != nil {
		t.Fatal(err)
	}
	resized("/ui/pool/grow", 8)
	refused("/ui/pool/grow", http.StatusConflict, "The pool already has 8 nodes, the most it may have.")
	resized("/ui/pool/shrink", 7)

	// Automatic mode: the buttons are disabled on the page and refused.
	if r := c.post("/ui/scaling", c.form("mode", "auto")); r.code != http.StatusSeeOther {
		t.Fatalf("switching to auto: got %d:\n%s", r.code, r.body)
	}
	page := c.get("/ui").body
	for _, id := range []string{"grow", "shrink"} {
		if !regexp.MustCompile(`id="` + id + `" disabled`).MatchString(page) {
			t.Errorf("in auto mode the %s button is not disabled", id)
		}
	}
	refused("/ui/pool/grow", http.StatusConflict, "The pool is in auto mode, where the auto-scaler sizes it. Switch to manual mode")
	refused("/ui/pool/shrink", http.StatusConflict, "The pool is in auto mode")

	// Back in manual mode, they work again.
	if r := c.post("/ui/scaling", c.form("mode", "manual")); r.code != http.StatusSeeOther {
		t.Fatalf("switching to manual: got %d:\n%s", r.code, r.body)
	}
	resized("/ui/pool/shrink", 6)
}

// TestUICSRF: a POST without this session's CSRF token is refused with 403
// and changes nothing.
func TestUICSRF(t *testing.T) {
	s := startSystem(t, systemConfig{replicas: 1, nodes: 2, token: testToken})
	base := s.replicas[0].url
	c := newClient(t, base)
	c.login(testToken)
	other := newClient(t, base)
	other.login(testToken)
	otherToken := other.csrf("/ui")

	posts := []struct {
		path string
		kv   []string
	}{
		{"/ui/config", []string{"capacity_mb", "32", "policy", "RR"}},
		{"/ui/scaling", []string{"mode", "auto"}},
		{"/ui/pool/grow", nil},
		{"/ui/clear", nil},
		{"/ui/delete-all", []string{"confirm", "yes"}},
		{"/ui/logout", nil},
	}
	tokens := []struct {
		name  string
		token *string
	}{
		{"missing", nil},
		{"empty", new("")},
		{"wrong", new("bm90LWEtdG9rZW4")},
		{"not base64", new("!!!")},
		{"another session's", &otherToken},
	}
	for _, p := range posts {
		for _, tok := range tokens {
			t.Run(p.path+" "+tok.name, func(t *testing.T) {
				before := s.state()
				form := url.Values{}
				for i := 0; i+1 < len(p.kv); i += 2 {
					form.Set(p.kv[i], p.kv[i+1])
				}
				if tok.token != nil {
					form.Set("csrf", *tok.token)
				}
				r := c.post(p.path, form)
				if r.code != http.StatusForbidden || !strings.Contains(r.body, "security token (CSRF)") || !strings.Contains(r.body, "Nothing was changed.") {
					t.Errorf("got %d, want 403 explaining the CSRF refusal:\n%s", r.code, r.body)
				}
				unchanged(t, s, before, "a POST without the CSRF token")
			})
		}
	}
	// The refused logout left the session alone.
	if r := c.get("/ui"); r.code != http.StatusOK {
		t.Errorf("GET /ui after refused logouts: got %d, want 200", r.code)
	}
	// The same form with the token goes through.
	before := s.state()
	if r := c.post("/ui/clear", c.form()); r.code != http.StatusSeeOther {
		t.Fatalf("clear with the token: got %d:\n%s", r.code, r.body)
	}
	if got := s.state().ClearGen; got != before.ClearGen+1 {
		t.Errorf("clear generation: got %d, want %d", got, before.ClearGen+1)
	}
}

// TestUIOpenWithoutToken: with no admin token the UI needs no login, and
// its forms still need the CSRF token.
func TestUIOpenWithoutToken(t *testing.T) {
	s := startSystem(t, systemConfig{replicas: 1, nodes: 1, token: ""})
	c := newClient(t, s.replicas[0].url)
	if r := c.get("/ui/login"); r.code != http.StatusSeeOther || r.location != "/ui" {
		t.Errorf("GET /ui/login: got %d to %q, want 303 to /ui", r.code, r.location)
	}
	if r := c.get("/ui"); r.code != http.StatusOK || strings.Contains(r.body, "Log out") {
		t.Errorf("GET /ui: got %d, want 200 without a logout button", r.code)
	}
	before := s.state()
	for _, form := range []url.Values{{}, {"csrf": {"forged"}}} {
		if r := c.post("/ui/clear", form); r.code != http.StatusForbidden {
			t.Errorf("POST /ui/clear %v: got %d, want 403", form, r.code)
		}
	}
	if r := newClient(t, s.replicas[0].url).post("/ui/clear", url.Values{}); r.code != http.StatusForbidden {
		t.Errorf("POST /ui/clear without a session: got %d, want 403", r.code)
	}
	unchanged(t, s, before, "POSTs without the CSRF token")
	if r := c.post("/ui/clear", c.form()); r.code != http.StatusSeeOther {
		t.Errorf("POST /ui/clear with the token: got %d, want 303:\n%s", r.code, r.body)
	}
	if got := s.state().ClearGen; got != before.ClearGen+1 {
		t.Errorf("clear generation: got %d, want %d", got, before.ClearGen+1)
	}
}

// TestUIDeleteAllConfirmation: the confirmation page names what will go;
// only the confirmed POST deletes.
func TestUIDeleteAllConfirmation(t *testing.T) {
	s := startSystem(t, systemConfig{replicas: 1, nodes: 3, token: testToken})
	startFrontend(t, s).run() // carries the deletion out
	c := newClient(t, s.replicas[0].url)
	c.login(testToken)
	if _, err := s.leader().pool.Resize(context.Background(), 2); err != nil {
		t.Fatal(err)
	}
	r := c.get("/ui/delete-all")
	for _, want := range []string{"every image", "in the blob store", "every key", "in the key index", `the caches of the <strong id="delete-nodes">2</strong> pool nodes`, `name="confirm" value="yes"`} {
		if !strings.Contains(r.body, want) {
			t.Errorf("confirmation page lacks %q:\n%s", want, r.body)
		}
	}
	before := s.state()
	r = c.post("/ui/delete-all", url.Values{"csrf": {csrfRE.FindStringSubmatch(r.body)[1]}, "confirm": {"yes"}})
	if r.code != http.StatusSeeOther || !strings.HasPrefix(r.location, "/ui?done=delete") {
		t.Fatalf("confirmed delete: got %d to %q, want 303 to /ui?done=delete", r.code, r.location)
	}
	if got := s.state().DeleteGen; got != before.DeleteGen+1 {
		t.Errorf("delete generation: got %d, want %d", got, before.DeleteGen+1)
	}
}

// dashboardData is the part of /ui/api/dashboard the tests read.
type dashboardData struct {
	Replica struct {
		ID     string `json:"id"`
		State  string `json:"state"`
		Leader struct {
			ID string `json:"id"`
		} `json:"leader"`
		Peers []struct {
			ID string `json:"id"`
		} `json:"peers"`
	} `json:"replica"`
	Cache  fsm.CacheConfig `json:"cache"`
	Series struct {
		Times    []time.Time `json:"times"`
		Nodes    []*int      `json:"nodes"`
		MissRate []*float64  `json:"miss_rate"`
		HitRate  []*float64  `json:"hit_rate"`
		Items    []*int64    `json:"items"`
		Bytes    []*int64    `json:"bytes"`
		Requests []*uint64   `json:"requests"`
	} `json:"series"`
	Pool []struct {
		ID      string `json:"id"`
		HTTP    string `json:"http"`
		Regions []int  `json:"regions"`
		Items   *int64 `json:"items"`
		Bytes   *int64 `json:"bytes"`
		Health  string `json:"health"`
	} `json:"pool"`
	Regions   []string       `json:"regions"`
	Decisions []fsm.Decision `json:"decisions"`
}

func (c *client) dashboard() dashboardData {
	c.t.Helper()
	r := c.get("/ui/api/dashboard")
	if r.code != http.StatusOK {
		c.t.Fatalf("GET /ui/api/dashboard: got %d:\n%s", r.code, r.body)
	}
	var d dashboardData
	if err := json.Unmarshal([]byte(r.body), &d); err != nil {
		c.t.Fatalf("GET /ui/api/dashboard: %v in %s", err, r.body)
	}
	return d
}

func lastNonNil[T any](xs []*T) (T, bool) {
	for i := len(xs) - 1; i >= 0; i-- {
		if xs[i] != nil {
			return *xs[i], true
		}
	}
	var zero T
	return zero, false
}

// TestUIDashboardData: the JSON the dashboard polls carries 30 one-minute
// points of real traffic, the pool with each node's counters and health,
// the region map, the decisions newest first and the raft status.
func TestUIDashboardData(t *testing.T) {
	s := startSystem(t, systemConfig{replicas: 1, nodes: 3, token: testToken})
	startFrontend(t, s).run() // carries the deletion out
	c := newClient(t, s.replicas[0].url)
	c.login(testToken)
	if _, err := s.leader().pool.Resize(context.Background(), 2); err != nil {
		t.Fatal(err)
	}
	s.waitNodesFollow()
	if got := s.traffic("dash", 20, 40, 1000); got != 60 {
		t.Fatalf("traffic: %d of 60 requests answered", got)
	}
	var d dashboardData
	waitfor.True(t, 10*time.Second, "the dashboard to show the traffic", func() bool {
		d = c.dashboard()
		items, _ := lastNonNil(d.Series.Items)
		var reqs uint64
		for _, r := range d.Series.Requests {
			if r != nil {
				reqs += *r
			}
		}
		return items == 20 && reqs >= 60 && len(d.Pool) == 2 && d.Pool[0].Items != nil && d.Pool[1].Items != nil &&
			*d.Pool[0].Items+*d.Pool[1].Items == 20
	})
	if len(d.Series.Times) != 30 || len(d.Series.Nodes) != 30 || len(d.Series.MissRate) != 30 {
		t.Errorf("series: got %d times, %d nodes, %d miss rates; want 30 each", len(d.Series.Times), len(d.Series.Nodes), len(d.Series.MissRate))
	}
	if miss, ok := lastNonNil(d.Series.MissRate); !ok || miss <= 0 || miss >= 1 {
		t.Errorf("miss rate: got %v (ok %v), want between 0 and 1 (20 of 40 GETs missed, plus earlier minutes)", miss, ok)
	}
	if hit, ok := lastNonNil(d.Series.HitRate); !ok || hit <= 0 {
		t.Errorf("hit rate: got %v (ok %v), want above 0", hit, ok)
	}
	if n, _ := lastNonNil(d.Series.Nodes); n != 2 {
		t.Errorf("nodes: got %d, want 2", n)
	}
	if b, _ := lastNonNil(d.Series.Bytes); b != 20*1000 {
		t.Errorf("bytes: got %d, want %d", b, 20*1000)
	}
	st := s.state()
	owned := 0
	for i, row := range d.Pool {
		if row.ID != st.Members[i].ID || row.HTTP != st.Members[i].HTTP || row.Health != "ok" {
			t.Errorf("pool row %d: got %+v, want member %+v, health ok", i, row, st.Members[i])
		}
		owned += len(row.Regions)
	}
	if owned != 16 || len(d.Regions) != 16 {
		t.Errorf("regions: pool rows own %d, map has %d; want 16 and 16", owned, len(d.Regions))
	}
	for r, owner := range d.Regions {
		if owner != st.Regions[r] {
			t.Errorf("region %d: got owner %q, want %q", r, owner, st.Regions[r])
		}
	}
	if d.Replica.ID != "m1" || d.Replica.State != "Leader" || d.Replica.Leader.ID != "m1" || len(d.Replica.Peers) != 1 {
		t.Errorf("raft: got %+v, want m1 leading a group of 1", d.Replica)
	}

	// Decisions come newest first.
	for i := range 3 {
		dec := fsm.Decision{Time: time.Now().UTC().Add(time.Duration(i) * time.Second), Mode: fsm.ModeManual, Nodes: 2, Target: 2,
			Action: fsm.ActionNone, Reason: fmt.Sprintf("decision %d", i)}
		if _, err := s.leader().cluster.Apply(context.Background(), fsm.RecordDecision{Decision: dec}); err != nil {
			t.Fatal(err)
		}
	}
	d = c.dashboard()
	if len(d.Decisions) != 3 || d.Decisions[0].Reason != "decision 2" || d.Decisions[2].Reason != "decision 0" {
		t.Errorf("decisions: got %+v, want decisions 2, 1, 0", d.Decisions)
	}

	// A member that does not answer within the 1 s stats timeout shows
	// that, and the others still show.
	hang := httptest.NewServer(http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) { <-r.Context().Done() }))
	t.Cleanup(hang.Close)
	ghost := fsm.Member{ID: "ghost", HTTP: hang.URL}
	if _, err := s.leader().cluster.Apply(context.Background(), fsm.Resize{Members: append(slices.Clone(st.Members), ghost)}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	d = c.dashboard()
	if took := time.Since(start); took < 900*time.Millisecond || took > 2500*time.Millisecond {
		t.Errorf("dashboard with a silent node took %v, want about the 1 s stats timeout", took)
	}
	for _, row := range d.Pool {
		want := "ok"
		if row.ID == ghost.ID {
			want = "no answer within 1s"
		}
		if row.Health != want {
			t.Errorf("pool row of %s: health %q, want %q", row.ID, row.Health, want)
		}
	}
}

// TestUIFollower: a session from one replica is good on every replica, and
// a follower's forms work as the leader's: config through Apply, grow
// forwarded to the leader with its form intact, refusals and CSRF alike.
func TestUIFollower(t *testing.T) {
	s := startSystem(t, systemConfig{replicas: 3, nodes: 2, token: testToken})
	l := newClient(t, s.leader().url)
	l.login(testToken)
	f := l.at(s.follower().url) // same cookies: 127.0.0.1 on another port
	if r := f.get("/ui"); r.code != http.StatusOK || !strings.Contains(r.body, "Follower") {
		t.Fatalf("follower GET /ui with the leader's session: got %d, want 200 naming it a Follower:\n%s", r.code, r.body)
	}

	r := f.post("/ui/config", f.form("capacity_mb", "96", "policy", "RR"))
	if r.code != http.StatusSeeOther {
		t.Fatalf("follower config: got %d:\n%s", r.code, r.body)
	}
	if r := f.get(r.location); !strings.Contains(r.body, `value="96"`) {
		t.Errorf("follower dashboard after config does not show capacity 96:\n%s", r.body)
	}
	if got := s.waitConverged().Cache; got != (fsm.CacheConfig{CapacityMB: 96, Policy: fsm.PolicyRR}) {
		t.Errorf("cache config: got %+v, want 96 MB RR", got)
	}

	before := s.state()
	if r := f.post("/ui/config", f.form("capacity_mb", "4096", "policy", "RR")); r.code != http.StatusBadRequest || !strings.Contains(r.body, "Capacity 4096 MB is outside 1..1024 MB.") {
		t.Errorf("follower bad config: got %d:\n%s", r.code, r.body)
	}
	if r := f.post("/ui/pool/grow", url.Values{"csrf": {"forged"}}); r.code != http.StatusForbidden {
		t.Errorf("follower grow without the CSRF token: got %d, want 403", r.code)
	}
	unchanged(t, s, before, "refused forms on a follower")

	r = f.post("/ui/pool/grow", f.form())
	if r.code != http.StatusSeeOther || !strings.HasPrefix(r.location, "/ui?done=grow&index=") {
		t.Fatalf("follower grow: got %d to %q, want 303 to /ui?done=grow:\n%s", r.code, r.location, r.body)
	}
	if r := f.get(r.location); !strings.Contains(r.body, "The pool grew by one node.") || !strings.Contains(r.body, `<strong id="pool-size">2</strong>`) {
		t.Errorf("follower dashboard after grow does not show 2 nodes:\n%s", r.body)
	}
	if got := len(s.waitConverged().Members); got != 2 {
		t.Errorf("after grow on a follower: got %d nodes, want 2", got)
	}
	// No third node: the leader's pool says so, readably, and nothing changes.
	before = s.state()
	r = f.post("/ui/pool/grow", f.form())
	if r.code != http.StatusServiceUnavailable || !strings.Contains(r.body, "The pool did not grow.") || !strings.Contains(r.body, "not enough cache nodes") {
		t.Errorf("follower grow with no idle node: got %d, want 503 explaining:\n%s", r.code, r.body)
	}
	unchanged(t, s, before, "a grow with no idle node")
}
