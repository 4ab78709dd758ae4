package frontend

import (
	"bytes"
	"context"
	"crypto/rand"
	"io"
	"log/slog"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/memcache/memcache/internal/benchload"
	"github.com/memcache/memcache/internal/pool"
	"github.com/memcache/memcache/node"
)

// BenchmarkImageGet100KB measures GET /images/{key} of a 100 KB image on a
// cache hit (frontend -> cache node over loopback -> client), beside a bare
// Go file server serving the same bytes, 16 concurrent clients, in one run.
func BenchmarkImageGet100KB(b *testing.B) {
	dir := b.TempDir()
	img := make([]byte, 100<<10)
	copy(img, mustReadB(b, "red.png")) // a PNG header: content sniffed as image/png
	rand.Read(img[100:])
	if err := os.WriteFile(filepath.Join(dir, "cat.png"), img, 0o644); err != nil {
		b.Fatal(err)
	}
	bare := httptest.NewServer(http.FileServer(http.Dir(dir)))
	defer bare.Close()

	n, err := node.New(node.Config{ID: "n1", Secret: "s"}, slog.New(slog.DiscardHandler))
	if err != nil {
		b.Fatal(err)
	}
	nodeSrv := httptest.NewServer(n.Handler())
	defer nodeSrv.Close()
	st := newStoresB(b)
	f := New(Config{Secret: "s", NearCacheMB: 64}, st.blobs, st.index, slog.New(slog.DiscardHandler))
	view := pool.View{Cache: pool.CacheConfig{CapacityMB: 64, Policy: pool.LRU}}
	view.Index, view.Epoch = 1, 0
	view.Members = []pool.Member{{ID: "n1", HTTP: nodeSrv.URL}}
	for r := range view.Regions {
		view.Regions[r] = "n1"
	}
	f.setPool(view)
	if _, err := f.Put(context.Background(), "cat.png", img); err != nil {
		b.Fatal(err)
	}
	front := httptest.NewServer(f.Handler())
	defer front.Close()
	if got, _ := f.Get(context.Background(), "cat.png"); !got.FromCache {
		b.Fatal("the image is not served from the cache")
	}
	bareURL, frontURL := bare.URL+"/cat.png", front.URL+"/images/cat.png"
	for _, tc := range []struct{ name, url string }{{"bare", bareURL}, {"frontend", frontURL}} {
		b.Run(tc.name, func(b *testing.B) {
			rate, p99 := benchload.Get(b, tc.url, b.N, 16, len(img))
			b.ReportMetric(rate, "req/s")
			b.ReportMetric(float64(p99.Microseconds()), "p99-µs")
		})
	}
	b.Run("interleaved", func(b *testing.B) {
		var bareTime, frontTime float64
		for done := 0; done < b.N; done += 1000 {
			r, _ := benchload.Get(b, bareURL, 1000, 16, len(img))
			bareTime += 1000 / r
			r, _ = benchload.Get(b, frontURL, 1000, 16, len(img))
			frontTime += 1000 / r
		}
		b.ReportMetric(bareTime/frontTime, "frontend/bare")
	})
	if f.misses.Load() > 1 {
		b.Errorf("%d cache misses during the run, want only the first", f.misses.Load())
	}
}

// BenchmarkUpload measures POST /api/upload of 100 KB images to the
// embedded defaults (a blob directory and SQLite), 4 concurrent clients.
func BenchmarkUpload(b *testing.B) {
	st := newStoresB(b)
	f := New(Config{}, st.blobs, st.index, slog.New(slog.DiscardHandler))
	srv := httptest.NewServer(f.Handler())
	defer srv.Close()
	img := make([]byte, 100<<10)
	copy(img, mustReadB(b, "red.png"))
	var body bytes.Buffer
	mw := multipart.NewWriter(&body)
	mw.WriteField("key", "KEY")
	fw, _ := mw.CreateFormFile("file", "x.png")
	fw.Write(img)
	mw.Close()
	form := body.Bytes()
	var next atomic.Int64
	start := time.Now()
	b.SetParallelism(2) // 2 x GOMAXPROCS(2) = 4 clients
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			key := "k" + strconv.FormatInt(next.Add(1), 10)
			req := bytes.Replace(form, []byte("KEY"), []byte(key), 1)
			resp, err := http.Post(srv.URL+"/api/upload", mw.FormDataContentType(), bytes.NewReader(req))
			if err != nil {
				b.Error(err)
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 {
				b.Errorf("upload: %d", resp.StatusCode)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "uploads/s")
}

func mustReadB(b *testing.B, name string) []byte {
	data, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		b.Fatal(err)
	}
	return data
}

// BenchmarkCacheHitRead100KB measures one buffered read (Frontend.Get, as
// /api/key and the retrieve page make) of a 100 KB image the owner node
// holds, without a hot cache, reporting allocations per read. The node
// runs in this process, so its allocations count too; the body read into
// the frontend should cost one exact-size slice and no copy buffer.
func BenchmarkCacheHitRead100KB(b *testing.B) {
	n, err := node.New(node.Config{ID: "n1"}, slog.New(slog.DiscardHandler))
	if err != nil {
		b.Fatal(err)
	}
	nodeSrv := httptest.NewServer(n.Handler())
	defer nodeSrv.Close()
	st := newStoresB(b)
	f := New(Config{MaxUpload: 1 << 20}, st.blobs, st.index, slog.New(slog.DiscardHandler))
	view := pool.View{Cache: pool.CacheConfig{CapacityMB: 64, Policy: pool.LRU}}
	view.Index = 1
	view.Members = []pool.Member{{ID: "n1", HTTP: nodeSrv.URL}}
	for r := range view.Regions {
		view.Regions[r] = "n1"
	}
	f.setPool(view)
	img := make([]byte, 100<<10)
	copy(img, mustReadB(b, "red.png"))
	rand.Read(img[100:])
	ctx := context.Background()
	if _, err := f.Put(ctx, "cat.png", img); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		got, err := f.Get(ctx, "cat.png")
		if err != nil || !got.FromCache || len(got.Data) != len(img) {
			b.Fatalf("read: %d bytes, from the cache %v, %v; want %d from the cache", len(got.Data), got.FromCache, err, len(img))
		}
	}
}
