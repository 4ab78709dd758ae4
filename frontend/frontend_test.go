package frontend

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/memcache/memcache/blob"
	"github.com/memcache/memcache/internal/pool"
	"github.com/memcache/memcache/internal/waitfor"
	"github.com/memcache/memcache/keyindex"
	"github.com/memcache/memcache/node"
)

func mustRead(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// stores are the real embedded stores: a directory and an SQLite file.
type stores struct {
	dir   string
	blobs *blob.Dir
	index *keyindex.Index
}

func newStores(t *testing.T) stores { return newStoresB(t) }

func newStoresB(t testing.TB) stores {
	t.Helper()
	dir := t.TempDir()
	b, err := blob.NewDir(filepath.Join(dir, "blobs"))
	if err != nil {
		t.Fatal(err)
	}
	ix, err := keyindex.Open(context.Background(), filepath.Join(dir, "keys.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ix.Close() })
	return stores{dir: filepath.Join(dir, "blobs"), blobs: b, index: ix}
}

func newTestFrontend(t *testing.T, blobs Blobs, index Index) (*Frontend, *httptest.Server) {
	t.Helper()
	f := New(Config{MaxUpload: 64 << 10}, blobs, index, slog.New(slog.DiscardHandler))
	srv := httptest.NewServer(f.Handler())
	t.Cleanup(srv.Close)
	return f, srv
}

// upload posts a multipart form; fields with a nil value are left out.
func upload(t *testing.T, base, path string, key *string, file []byte) (int, map[string]any) {
	t.Helper()
	var body bytes.Buffer
	mw := multipart.NewWriter(&body)
	if key != nil {
		mw.WriteField("key", *key)
	}
	if file != nil {
		fw, _ := mw.CreateFormFile("file", "photo.png")
		fw.Write(file)
	}
	mw.Close()
	resp, err := http.Post(base+path, mw.FormDataContentType(), &body)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	b, _ := io.ReadAll(resp.Body)
	json.Unmarshal(b, &out)
	if out == nil {
		out = map[string]any{"body": string(b)}
	}
	return resp.StatusCode, out
}

// uploadRequest returns a multipart upload of file under key to u.
func uploadRequest(t *testing.T, u, key string, file []byte) *http.Request {
	t.Helper()
	var body bytes.Buffer
	mw := multipart.NewWriter(&body)
	mw.WriteField("key", key)
	fw, _ := mw.CreateFormFile("file", "photo.png")
	fw.Write(file)
	mw.Close()
	req, err := http.NewRequest(http.MethodPost, u, &body)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", mw.FormDataContentType())
	return req
}

func ptr(s string) *string { return &s }

func post(t *testing.T, u string) (int, map[string]any) {
	t.Helper()
	resp, err := http.Post(u, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	json.NewDecoder(resp.Body).Decode(&out)
	return resp.StatusCode, out
}

// countFiles counts the objects in the blob directory.
func countFiles(t *testing.T, dir string) int {
	t.Helper()
	n := 0
	filepath.WalkDir(dir, func(_ string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			n++
		}
		return nil
	})
	return n
}

func TestUploadRetrieveReplaceListFromTheStores(t *testing.T) {
	st := newStores(t)
	_, srv := newTestFrontend(t, st.blobs, st.index)
	red, blue := mustRead(t, "red.png"), mustRead(t, "blue.png")
	keys := []string{"plain", "a/b/c.png", "../../etc/passwd", "with space", "猫 ☕", `'; DROP TABLE images; --`, "100%", "?q=1#x"}
	for _, k := range keys {
		if code, out := upload(t, srv.URL, "/api/upload", ptr(k), red); code != 200 || out["success"] != "true" || out["key"] != k {
			t.Fatalf("upload %q: %d %v", k, code, out)
		}
	}
	// Byte-exact through the API and the image path.
	for _, k := range keys {
		code, out := post(t, srv.URL+"/api/key/"+url.PathEscape(k))
		got, _ := base64.StdEncoding.DecodeString(fmt.Sprint(out["content"]))
		if code != 200 || out["success"] != "true" || !bytes.Equal(got, red) {
			t.Fatalf("key %q: %d, %d bytes, want 200 and the uploaded bytes", k, code, len(got))
		}
		resp, err := http.Get(srv.URL + "/images/" + url.PathEscape(k))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !bytes.Equal(b, red) || resp.Header.Get("Content-Type") != "image/png" || resp.Header.Get("ETag") == "" {
			t.Fatalf("GET /images/%q: %d %s etag %q", k, resp.StatusCode, resp.Header.Get("Content-Type"), resp.Header.Get("ETag"))
		}
	}
	// Nothing escaped the blob directory: one object per key, none named by the key.
	if n := countFiles(t, st.dir); n != len(keys) {
		t.Errorf("%d objects in the blob dir, want %d", n, len(keys))
	}
	// Replace: new bytes, old blob removed, ETag changes, 304 on the new one.
	resp, _ := http.Get(srv.URL + "/images/plain")
	oldETag := resp.Header.Get("ETag")
	resp.Body.Close()
	if code, _ := upload(t, srv.URL, "/api/upload", ptr("plain"), blue); code != 200 {
		t.Fatalf("replace: %d", code)
	}
	_, out := post(t, srv.URL+"/api/key/plain")
	if got, _ := base64.StdEncoding.DecodeString(fmt.Sprint(out["content"])); !bytes.Equal(got, blue) {
		t.Fatal("replaced key still returns the old image")
	}
	if n := countFiles(t, st.dir); n != len(keys) {
		t.Errorf("after replace: %d objects, want %d (the old blob removed)", n, len(keys))
	}
	req, _ := http.NewRequest("GET", srv.URL+"/images/plain", nil)
	req.Header.Set("If-None-Match", oldETag)
	resp, _ = http.DefaultClient.Do(req)
	resp.Body.Close()
	newETag := resp.Header.Get("ETag")
	if resp.StatusCode != 200 || newETag == oldETag {
		t.Fatalf("old ETag after replace: %d, etag %q (old %q); want 200 with a new ETag", resp.StatusCode, newETag, oldETag)
	}
	req.Header.Set("If-None-Match", newETag)
	resp, _ = http.DefaultClient.Do(req)
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotModified {
		t.Fatalf("matching If-None-Match: got %d, want 304", resp.StatusCode)
	}
	// List: every key, sorted.
	_, out = post(t, srv.URL+"/api/list_keys")
	list, _ := out["keys"].([]any)
	if len(list) != len(keys) {
		t.Fatalf("list_keys: %v, want %d keys", out, len(keys))
	}
	for i := 1; i < len(list); i++ {
		if fmt.Sprint(list[i-1]) > fmt.Sprint(list[i]) {
			t.Errorf("list not sorted: %v", list)
		}
	}
}

func TestBadInputGetsA4xxAndChangesNothing(t *testing.T) {
	st := newStores(t)
	_, srv := newTestFrontend(t, st.blobs, st.index)
	red := mustRead(t, "red.png")
	upload(t, srv.URL, "/api/upload", ptr("keep"), red)
	big := append(append([]byte{}, red...), make([]byte, 70<<10)...) // a PNG header, over the 64 KB limit
	cases := []struct {
		name string
		key  *string
		file []byte
		code int
		msg  string
	}{
		{"missing key", nil, red, 400, "key is empty"},
		{"empty key", ptr(""), red, 400, "key is empty"},
		{"key over 250 bytes", ptr(strings.Repeat("k", 251)), red, 400, "longer than 250"},
		{"key with control characters", ptr("bad\x00key"), red, 400, "control characters"},
		{"key with a newline", ptr("bad\nkey"), red, 400, "control characters"},
		{"key not UTF-8", ptr("bad\xffkey"), red, 400, "not valid UTF-8"},
		{"missing file", ptr("k"), nil, 400, "missing file"},
		{"empty file", ptr("k"), []byte{}, 400, "empty"},
		{"text named .png", ptr("k"), []byte("hello, I am not an image"), 400, "not an image"},
		{"html", ptr("k"), []byte("<html><body>x</body></html>"), 400, "not an image"},
		{"over the upload limit", ptr("k"), big, 413, "limit"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			code, out := upload(t, srv.URL, "/api/upload", tc.key, tc.file)
			e, _ := out["error"].(map[string]any)
			if code != tc.code || out["success"] != "false" || e == nil || fmt.Sprint(e["code"]) != fmt.Sprint(tc.code) ||
				!strings.Contains(fmt.Sprint(e["message"]), tc.msg) {
				t.Fatalf("got %d %v, want %d with a message containing %q", code, out, tc.code, tc.msg)
			}
		})
	}
	t.Run("malformed form", func(t *testing.T) {
		resp, err := http.Post(srv.URL+"/api/upload", "application/json", strings.NewReader(`{"key":"k"}`))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 400 {
			t.Fatalf("JSON body: got %d, want 400", resp.StatusCode)
		}
	})
	t.Run("truncated multipart", func(t *testing.T) {
		resp, err := http.Post(srv.URL+"/api/upload", "multipart/form-data; boundary=xyz", strings.NewReader("--xyz\r\nContent-Disposition: form-data; name=\"key\"\r\n\r\nk"))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 400 {
			t.Fatalf("truncated multipart: got %d, want 400", resp.StatusCode)
		}
	})
	for _, tc := range []struct {
		path, msg string
		code      int
	}{
		{"/api/key/unknown", "not found", 404},
		{"/api/key/" + strings.Repeat("k", 251), "longer than 250", 400},
		{"/api/key/bad%0Akey", "control characters", 400},
	} {
		code, out := post(t, srv.URL+tc.path)
		e, _ := out["error"].(map[string]any)
		if code != tc.code || e == nil || !strings.Contains(fmt.Sprint(e["message"]), tc.msg) {
			t.Errorf("POST %s: got %d %v, want %d with %q", tc.path, code, out, tc.code, tc.msg)
		}
	}
	if resp, _ := http.Get(srv.URL + "/images/unknown"); resp.StatusCode != 404 {
		t.Errorf("GET /images/unknown: got %d, want 404", resp.StatusCode)
	}
	// Nothing changed: one key, one object.
	if n, _ := st.index.Count(context.Background()); n != 1 {
		t.Errorf("%d rows after bad input, want 1", n)
	}
	if n := countFiles(t, st.dir); n != 1 {
		t.Errorf("%d objects after bad input, want 1", n)
	}
}

// failingBlobs fails every Put; failingIndex fails every Put after the blob is written.
type failingBlobs struct{ Blobs }

func (failingBlobs) Put(context.Context, string, []byte, string) error {
	return errors.New("injected: disk full")
}

type failingIndex struct{ Index }

func (failingIndex) Put(context.Context, keyindex.Entry) (string, int64, error) {
	return "", 0, errors.New("injected: database unavailable")
}

func TestFailedWritesLeaveNothingDangling(t *testing.T) {
	red := mustRead(t, "red.png")
	t.Run("blob write fails", func(t *testing.T) {
		st := newStores(t)
		_, srv := newTestFrontend(t, failingBlobs{st.blobs}, st.index)
		if code, _ := upload(t, srv.URL, "/api/upload", ptr("k"), red); code != 500 {
			t.Fatalf("upload with a failing blob store: got %d, want 500", code)
		}
		if n, _ := st.index.Count(context.Background()); n != 0 {
			t.Errorf("%d rows after a failed blob write, want 0", n)
		}
	})
	t.Run("row write fails", func(t *testing.T) {
		st := newStores(t)
		_, srv := newTestFrontend(t, st.blobs, failingIndex{st.index})
		if code, _ := upload(t, srv.URL, "/api/upload", ptr("k"), red); code != 500 {
			t.Fatalf("upload with a failing index: got %d, want 500", code)
		}
		if n := countFiles(t, st.dir); n != 0 {
			t.Errorf("%d objects left after a failed row write, want 0", n)
		}
	})
}

// countingIndex counts Get calls and holds each until gate is closed.
type countingIndex struct {
	Index
	gets atomic.Int64
	gate chan struct{}
}

func (c *countingIndex) Get(ctx context.Context, key string) (keyindex.Entry, error) {
	c.gets.Add(1)
	<-c.gate
	return c.Index.Get(ctx, key)
}

// countingBlobs counts Get calls.
type countingBlobs struct {
	Blobs
	gets atomic.Int64
}

func (c *countingBlobs) Get(ctx context.Context, name string) ([]byte, error) {
	c.gets.Add(1)
	return c.Blobs.Get(ctx, name)
}

// flightWaiters counts the goroutines blocked in flights.do waiting for a
// load (theirs to start, or another's to end).
func flightWaiters() int {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	waiting := 0
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "frontend.(*flights).do") && strings.Contains(g, "[chan receive") {
			waiting++
		}
	}
	return waiting
}

// TestConcurrentMissesLoadOnce: one read misses and loads (held at the
// index); 19 more reads of the key miss while it loads. They must not
// share the running load (it began before them), and they share one load
// of their own: exactly two index reads and two blob reads in all, every
// read answering the image.
func TestConcurrentMissesLoadOnce(t *testing.T) {
	st := newStores(t)
	red := mustRead(t, "red.png")
	f, _ := newTestFrontend(t, st.blobs, st.index)
	if _, err := f.Put(context.Background(), "k", red); err != nil {
		t.Fatal(err)
	}
	ci := &countingIndex{Index: st.index, gate: make(chan struct{})}
	cb := &countingBlobs{Blobs: st.blobs}
	f.index, f.blobs = ci, cb
	const readers = 20
	var wg sync.WaitGroup
	read := func() {
		defer wg.Done()
		img, err := f.Get(context.Background(), "k")
		if err != nil || !bytes.Equal(img.Data, red) {
			t.Errorf("Get: %d bytes, %v; want the image", len(img.Data), err)
		}
	}
	wg.Add(1)
	go read()
	waitfor.True(t, 30*time.Second, "the first read to load", func() bool { return ci.gets.Load() == 1 })
	for range readers - 1 {
		wg.Add(1)
		go read()
	}
	// Barrier: every later read waits in flights.do before the load ends.
	waitfor.True(t, 30*time.Second, "every later read to wait for a load", func() bool {
		return flightWaiters() >= readers-1
	})
	close(ci.gate)
	wg.Wait()
	if n, b := ci.gets.Load(), cb.gets.Load(); n != 2 || b != 2 {
		t.Errorf("%d concurrent misses made %d index reads and %d blob reads, want 2 and 2 (the first read's load, and one shared by the rest)", readers, n, b)
	}
	if m := f.misses.Load(); m != readers {
		t.Errorf("frontend counted %d misses, want %d", m, readers)
	}
}

// TestReadFillNeverReplacesANewerUpload replays the race of a read that
// loaded the old image, then filled the cache after an upload replaced it.
func TestReadFillNeverReplacesANewerUpload(t *testing.T) {
	st := newStores(t)
	n, err := node.New(node.Config{ID: "n1"}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	nodeSrv := httptest.NewServer(n.Handler())
	defer nodeSrv.Close()
	f, _ := newTestFrontend(t, st.blobs, st.index)
	view := pool.View{Cache: pool.CacheConfig{CapacityMB: 64, Policy: pool.LRU}}
	view.Index = 1
	view.Members = []pool.Member{{ID: "n1", HTTP: nodeSrv.URL}}
	for r := range view.Regions {
		view.Regions[r] = "n1"
	}
	f.setPool(view)
	red, blue := mustRead(t, "red.png"), mustRead(t, "blue.png")
	ctx := context.Background()
	old, err := f.Put(ctx, "k", red)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Put(ctx, "k", blue); err != nil {
		t.Fatal(err)
	}
	// The slow read's fill of the old image arrives now.
	f.toCache(ctx, "k", Image{Data: red, ContentType: "image/png", ETag: etagOf(old.SHA256)}, cacheWrite{onlyIfAbsent: true, version: old.Version}, &view, view.Generation())
	img, err := f.Get(ctx, "k")
	if err != nil || !img.FromCache || !bytes.Equal(img.Data, blue) {
		t.Fatalf("after a late fill: cache %v, %d bytes, err %v; want the new image from the cache", img.FromCache, len(img.Data), err)
	}
}

func TestReadyzChecksTheKeyIndex(t *testing.T) {
	st := newStores(t)
	_, srv := newTestFrontend(t, st.blobs, st.index)
	if resp, err := http.Get(srv.URL + "/readyz"); err != nil || resp.StatusCode != 200 {
		t.Fatalf("readyz with a working index: %v %v", err, resp)
	}
	st.index.Close()
	resp, err := http.Get(srv.URL + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("readyz with a closed index: %d, want 503", resp.StatusCode)
	}
}
