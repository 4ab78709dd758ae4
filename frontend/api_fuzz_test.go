package frontend

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/memcache/memcache/internal/pool"
	"github.com/memcache/memcache/keyindex"
)

// fuzzMaxUpload is the fuzzed frontends' upload limit: small, so that
// fuzzed files reach it.
const fuzzMaxUpload = 2 << 10

// fuzzFrontend is a frontend over the real embedded stores, routing by an
// empty pool (it needs no cache node), with one manager replica that
// echoes every admin call it gets (echoManager).
type fuzzFrontend struct {
	st stores
	f  *Frontend
	h  http.Handler
}

// managerEcho is the answer of echoManager: the call as the manager got
// it (bytes, which JSON carries exactly, where strings may not be UTF-8).
type managerEcho struct {
	Method                                string
	URI, Authorization, ContentType, Body []byte
}

// echoManager answers every call with 200 and the call, as JSON.
func echoManager(tb testing.TB) string {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(managerEcho{r.Method, []byte(r.RequestURI), []byte(r.Header.Get("Authorization")), []byte(r.Header.Get("Content-Type")), body})
	}))
	tb.Cleanup(srv.Close)
	return srv.URL
}

func newFuzzFrontend(tb testing.TB) *fuzzFrontend {
	tb.Helper()
	mgr := echoManager(tb)
	st := newStoresB(tb)
	f := New(Config{MaxUpload: fuzzMaxUpload, Managers: func() []string { return []string{mgr} }}, st.blobs, st.index, slog.New(slog.DiscardHandler))
	f.storeView(pool.View{Members: []pool.Member{}})
	ff := &fuzzFrontend{st: st, f: f, h: f.Handler()}
	ff.reset(tb)
	return ff
}

// fuzzImages are the images every fuzz run starts with.
var fuzzImages = map[string]string{"keep": "red.png", "a/b c": "blue.png"}

// reset empties the stores and uploads fuzzImages again.
func (ff *fuzzFrontend) reset(tb testing.TB) {
	tb.Helper()
	ctx := context.Background()
	if _, err := ff.st.index.DeleteAll(ctx); err != nil {
		tb.Fatal(err)
	}
	if _, err := ff.st.blobs.DeleteAll(ctx); err != nil {
		tb.Fatal(err)
	}
	for k, name := range fuzzImages {
		b, err := os.ReadFile(filepath.Join("testdata", name))
		if err != nil {
			tb.Fatal(err)
		}
		if _, err := ff.f.Put(ctx, k, b); err != nil {
			tb.Fatal(err)
		}
	}
}

// storesState is what the stores hold: every row, and every object's
// SHA-256.
type storesState struct {
	Rows    []keyindex.Entry
	Objects map[string]string
}

func (ff *fuzzFrontend) state(t *testing.T) storesState {
	t.Helper()
	rows, err := ff.st.index.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	objs := map[string]string{}
	err = filepath.WalkDir(ff.st.dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		sum := sha256.Sum256(b)
		rel, _ := filepath.Rel(ff.st.dir, p)
		objs[rel] = hex.EncodeToString(sum[:])
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return storesState{rows, objs}
}

// blob returns the bytes stored for key, and whether it has a row.
func (ff *fuzzFrontend) blob(t *testing.T, key string) ([]byte, keyindex.Entry, bool) {
	t.Helper()
	e, err := ff.st.index.Get(context.Background(), key)
	if err != nil {
		return nil, e, false
	}
	b, err := ff.st.blobs.Get(context.Background(), e.Object)
	if err != nil {
		t.Fatalf("row %q points at object %s: %v", key, e.Object, err)
	}
	return b, e, true
}

// httpRequest reads the request a client sends as these bytes, as the
// frontend's HTTP server would; ok is false for bytes the server itself
// refuses (its handler never sees them).
func httpRequest(method, target string, hdr [][2]string, body []byte) (*http.Request, bool) {
	if method == "" || strings.ContainsAny(method, " \r\n\t") || target == "" || strings.ContainsAny(target, " \r\n\t") {
		return nil, false
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "%s %s HTTP/1.1\r\nHost: frontend.test\r\n", method, target)
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

// testerError checks that body is the tester API's error envelope for code.
func testerError(t *testing.T, what string, code int, body []byte) {
	t.Helper()
	var e struct {
		Success string `json:"success"`
		Error   struct {
			Code    int    `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	if err := json.Unmarshal(body, &e); err != nil || e.Success != "false" || e.Error.Code != code || e.Error.Message == "" {
		t.Fatalf("%s: got %d %q, want the tester's error envelope with code %d and a message", what, code, body, code)
	}
}

var adminPaths = map[string]bool{"/api/delete_all": true, "/api/configure_cache": true, "/api/getNumNodes": true, "/api/getRate": true}

// FuzzFrontendAPI sends one fuzzed request (method, path and query,
// Authorization, Content-Type, If-None-Match, body) to a frontend over the
// real stores holding two images. It never panics and never answers 5xx;
// a 4xx changes no row and no object, and on /api/ it is the tester's
// error envelope; a read that succeeds returns the stored bytes; an admin
// call reaches the manager as it was sent, and its answer comes back as
// the manager gave it.
// go test -run '^$' -fuzz '^FuzzFrontendAPI$' ./frontend.
func FuzzFrontendAPI(f *testing.F) {
	type seed struct{ method, target, auth, ctype, inm, body string }
	for _, s := range []seed{
		{"POST", "/api/list_keys", "", "", "", ""},
		{"POST", "/api/key/keep", "", "", "", ""},
		{"POST", "/api/key/a%2Fb%20c", "", "", "", ""},
		{"POST", "/api/key/a/b%20c", "", "", "", ""},
		{"POST", "/api/key/", "", "", "", ""},
		{"POST", "/api/key/%zz", "", "", "", ""},
		{"POST", "/api/key/bad%0Akey", "", "", "", ""},
		{"POST", "/api/key/" + strings.Repeat("k", 251), "", "", "", ""},
		{"GET", "/api/key/keep", "", "", "", ""},
		{"GET", "/images/keep", "", "", "", ""},
		{"GET", "/images/keep", "", "", `W/"x", *`, ""},
		{"HEAD", "/images/a%2Fb%20c", "", "", "", ""},
		{"GET", "/images/%2E%2E", "", "", "", ""},
		{"GET", "/retrieve?key=keep", "", "", "", ""},
		{"GET", "/retrieve?key=%ff", "", "", "", ""},
		{"GET", "/retrieve?key=", "", "", "", ""},
		{"GET", "/keys", "", "", "", ""},
		{"GET", "/", "", "", "", ""},
		{"POST", "/api/upload", "", "application/json", "", `{"key":"k"}`},
		{"POST", "/api/upload", "", "multipart/form-data; boundary=xyz", "", "--xyz\r\nContent-Disposition: form-data; name=\"key\"\r\n\r\nk"},
		{"POST", "/upload", "", "multipart/form-data", "", ""},
		{"POST", "/api/configure_cache?numNodes=3&cacheSize=5", "Bearer tok", "", "", ""},
		{"POST", "/api/configure_cache", "Bearer tok", "application/x-www-form-urlencoded", "", "mode=manual&numNodes=2"},
		{"POST", "/api/getRate?rate=miss", "", "", "", ""},
		{"POST", "/api/getNumNodes", "Bearer x", "", "", ""},
		{"POST", "/api/delete_all", "", "", "", ""},
		{"GET", "/api/delete_all", "", "", "", ""},
		// A form over the 64 KB the frontend forwards.
		{"POST", "/api/configure_cache", "Bearer tok", "application/x-www-form-urlencoded", "", "mode=manual&policy=" + strings.Repeat("R", 64<<10) + "&numNodes=8"},
		{"GET", "/healthz", "", "", "", ""},
		{"GET", "/readyz", "", "", "", ""},
		{"DELETE", "/images/keep", "", "", "", ""},
	} {
		f.Add(s.method, s.target, s.auth, s.ctype, s.inm, []byte(s.body))
	}
	ff := newFuzzFrontend(f)
	f.Fuzz(func(t *testing.T, method, target, auth, ctype, inm string, body []byte) {
		r, ok := httpRequest(method, target, [][2]string{{"Authorization", auth}, {"Content-Type", ctype}, {"If-None-Match", inm}}, body)
		if !ok {
			return
		}
		before := ff.state(t)
		w := httptest.NewRecorder()
		ff.h.ServeHTTP(w, r)
		after := ff.state(t)
		code, out := w.Code, w.Body.Bytes()
		what := fmt.Sprintf("%s %s (%d bytes)", method, target, len(body))
		if !reflect.DeepEqual(before, after) {
			// Only an upload changes the stores; start the next input afresh.
			defer ff.reset(t)
		}
		if code >= 500 {
			t.Fatalf("%s: got %d %s, want no 5xx", what, code, out)
		}
		path := r.URL.Path
		if adminPaths[path] && r.Method == http.MethodPost {
			var echo managerEcho
			if code >= 400 {
				// Refused before it was forwarded: only a body too large to forward.
				if code != http.StatusRequestEntityTooLarge {
					t.Fatalf("%s: got %d %s, want the manager's answer", what, code, out)
				}
				testerError(t, what, code, out)
			} else if err := json.Unmarshal(out, &echo); err != nil || code != http.StatusOK {
				t.Fatalf("%s: got %d %q, want the manager's answer, 200 and the call", what, code, out)
			} else if want := (managerEcho{http.MethodPost, []byte(r.URL.RequestURI()), []byte(r.Header.Get("Authorization")), []byte(r.Header.Get("Content-Type")), body}); !reflect.DeepEqual(echo, want) {
				t.Fatalf("%s: the manager got %s %q auth %q type %q and %d bytes %.60q, want the call as sent: %s %q auth %q type %q and %d bytes %.60q", what,
					echo.Method, echo.URI, echo.Authorization, echo.ContentType, len(echo.Body), echo.Body,
					want.Method, want.URI, want.Authorization, want.ContentType, len(want.Body), want.Body)
			}
		}
		if code >= 400 {
			if !reflect.DeepEqual(before, after) {
				t.Fatalf("%s: answered %d %s but changed the stores:\nbefore %+v\nafter  %+v", what, code, out, before, after)
			}
			if strings.HasPrefix(path, "/api/") && code != http.StatusMethodNotAllowed && !(code == http.StatusNotFound && bytes.HasPrefix(out, []byte("404 page not found"))) {
				testerError(t, what, code, out)
			}
			return
		}
		switch {
		case r.Method == http.MethodPost && strings.HasPrefix(path, "/api/key/"):
			key, _ := pathKey(r, "/api/key/")
			want, _, ok := ff.blob(t, key)
			var ans struct{ Success, Content string }
			json.Unmarshal(out, &ans)
			got, err := base64.StdEncoding.DecodeString(ans.Content)
			if !ok || err != nil || ans.Success != "true" || !bytes.Equal(got, want) {
				t.Fatalf("%s: got %d %q, want the stored bytes of %q", what, code, out, key)
			}
		case r.Method == http.MethodGet && strings.HasPrefix(path, "/images/") && code == http.StatusOK:
			key, _ := pathKey(r, "/images/")
			want, e, ok := ff.blob(t, key)
			if !ok || !bytes.Equal(out, want) || w.Header().Get("Etag") != etagOf(e.SHA256) {
				t.Fatalf("%s: got %d, %d bytes, ETag %s, want the stored bytes of %q", what, code, len(out), w.Header().Get("Etag"), key)
			}
		case r.Method == http.MethodPost && (path == "/api/upload" || path == "/upload"):
			// FuzzUpload checks what a successful upload stored.
		default:
			if !reflect.DeepEqual(before, after) {
				t.Fatalf("%s: answered %d but changed the stores:\nbefore %+v\nafter  %+v", what, code, before, after)
			}
		}
	})
}
