package auth

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
)

// TestValidComparesTheWholeSecret: only the exact secret passes; a
// prefix, an extension, a same-length guess, a different case, an empty or
// missing header are refused. An empty secret lets everything through.
func TestValidComparesTheWholeSecret(t *testing.T) {
	const secret = "s3cret-Value"
	for _, tc := range []struct {
		name, secret string
		header       *string
		want         bool
	}{
		{"exact", secret, ptr(secret), true},
		{"missing header", secret, nil, false},
		{"empty header", secret, ptr(""), false},
		{"prefix", secret, ptr(secret[:len(secret)-1]), false},
		{"extended", secret, ptr(secret + "x"), false},
		{"same length, last byte differs", secret, ptr(secret[:len(secret)-1] + "f"), false},
		{"same length, first byte differs", secret, ptr("t" + secret[1:]), false},
		{"different case", secret, ptr(strings.ToUpper(secret)), false},
		{"no secret configured, no header", "", nil, true},
		{"no secret configured, any header", "", ptr("anything"), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := httptest.NewRequest(http.MethodGet, "/", nil)
			if tc.header != nil {
				r.Header.Set(Header, *tc.header)
			}
			if got := Valid(r, tc.secret); got != tc.want {
				t.Errorf("Valid: got %v, want %v", got, tc.want)
			}
			var called atomic.Bool
			rec := httptest.NewRecorder()
			Require(tc.secret)(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
				called.Store(true)
				io.WriteString(w, "ok")
			})).ServeHTTP(rec, r)
			if tc.want {
				if rec.Code != http.StatusOK || !called.Load() {
					t.Errorf("Require: got %d, handler called %v; want 200 from the handler", rec.Code, called.Load())
				}
				return
			}
			var body struct {
				Error struct {
					Code    int    `json:"code"`
					Message string `json:"message"`
				} `json:"error"`
			}
			if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil || rec.Code != http.StatusUnauthorized || called.Load() ||
				body.Error.Code != http.StatusUnauthorized || !strings.Contains(body.Error.Message, Header) {
				t.Errorf("Require: got %d %q, handler called %v; want a 401 JSON error naming %s, handler not called",
					rec.Code, rec.Body, called.Load(), Header)
			}
		})
	}
}

func ptr(s string) *string { return &s }

// TestTransportCarriesTheSecret: every request through the transport
// carries the secret (so a Require'd server admits it), the caller's
// request is not modified, and with no secret no header is sent.
func TestTransportCarriesTheSecret(t *testing.T) {
	srv := httptest.NewServer(Require("sec")(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {})))
	defer srv.Close()
	for _, tc := range []struct {
		name   string
		tr     *Transport
		status int
	}{
		{"secret, default base", &Transport{Secret: "sec"}, http.StatusOK},
		{"secret, explicit base", &Transport{Secret: "sec", Base: http.DefaultTransport}, http.StatusOK},
		{"wrong secret", &Transport{Secret: "nope"}, http.StatusUnauthorized},
		{"no secret", &Transport{}, http.StatusUnauthorized},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest(http.MethodGet, srv.URL, nil)
			resp, err := (&http.Client{Transport: tc.tr}).Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tc.status {
				t.Errorf("got %d, want %d", resp.StatusCode, tc.status)
			}
			if h := req.Header.Get(Header); h != "" {
				t.Errorf("the caller's request was modified: %s %q", Header, h)
			}
		})
	}
	// With no secret the transport sends no header at all.
	var got atomic.Value
	srv2 := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got.Store(r.Header.Values(Header))
	}))
	defer srv2.Close()
	resp, err := (&http.Client{Transport: &Transport{}}).Get(srv2.URL)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if v := got.Load().([]string); len(v) != 0 {
		t.Errorf("no secret: sent %s %q, want no header", Header, v)
	}
}

// TestBearerAndTokenEqual: the bearer token is what follows "Bearer "
// exactly; the token comparison is exact.
func TestBearerAndTokenEqual(t *testing.T) {
	for _, tc := range []struct {
		header, token string
		ok            bool
	}{
		{"Bearer abc", "abc", true},
		{"Bearer ", "", true},
		{"bearer abc", "", false},
		{"Basic abc", "", false},
		{"", "", false},
		{"Bearerabc", "", false},
	} {
		r := httptest.NewRequest(http.MethodGet, "/", nil)
		if tc.header != "" {
			r.Header.Set("Authorization", tc.header)
		}
		token, ok := Bearer(r)
		if ok != tc.ok || (ok && token != tc.token) {
			t.Errorf("Bearer(%q): %q %v, want %q %v", tc.header, token, ok, tc.token, tc.ok)
		}
	}
	for _, tc := range []struct {
		got, want string
		equal     bool
	}{
		{"t0k", "t0k", true},
		{"t0k", "t0K", false},
		{"t0", "t0k", false},
		{"t0kk", "t0k", false},
		{"", "t0k", false},
		{"x0k", "t0k", false},
	} {
		if eq := TokenEqual(tc.got, tc.want); eq != tc.equal {
			t.Errorf("TokenEqual(%q, %q) = %v, want %v", tc.got, tc.want, eq, tc.equal)
		}
	}
}

// TestRequireAdminChallenges: a refused admin call gets 401 with a Bearer
// challenge and a JSON error, and never reaches the handler.
func TestRequireAdminChallenges(t *testing.T) {
	var called atomic.Bool
	h := RequireAdmin("t0k")(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { called.Store(true) }))
	rec := httptest.NewRecorder()
	r := httptest.NewRequest(http.MethodPost, "/api/getRate", nil)
	r.Header.Set("Authorization", "Bearer t0")
	h.ServeHTTP(rec, r)
	if rec.Code != http.StatusUnauthorized || called.Load() || !strings.HasPrefix(rec.Header().Get("WWW-Authenticate"), "Bearer") ||
		!strings.Contains(rec.Body.String(), "admin token") {
		t.Errorf("wrong token: %d, handler called %v, WWW-Authenticate %q, body %q; want 401 with a Bearer challenge",
			rec.Code, called.Load(), rec.Header().Get("WWW-Authenticate"), rec.Body)
	}
	rec = httptest.NewRecorder()
	r.Header.Set("Authorization", "Bearer t0k")
	h.ServeHTTP(rec, r)
	if rec.Code != http.StatusOK || !called.Load() {
		t.Errorf("right token: %d, handler called %v; want it through", rec.Code, called.Load())
	}
}
