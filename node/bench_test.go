package node

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/memcache/memcache/auth"
	"github.com/memcache/memcache/internal/benchload"
	"github.com/memcache/memcache/internal/pool"
)

var sizes = []struct {
	name string
	n    int
}{{"1KB", 1 << 10}, {"100KB", 100 << 10}}

func BenchmarkCacheGet(b *testing.B) {
	for _, sz := range sizes {
		b.Run(sz.name, func(b *testing.B) {
			c, _ := NewCache(pool.CacheConfig{CapacityMB: 256, Policy: pool.LRU})
			const keys = 1000
			for i := range keys {
				c.Put(strconv.Itoa(i), Item{Value: make([]byte, sz.n)})
			}
			var next atomic.Uint64
			b.SetBytes(int64(sz.n))
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				i := next.Add(7919)
				for pb.Next() {
					i++
					if _, ok, _ := c.Get(strconv.Itoa(int(i % keys))); !ok {
						b.Error("miss")
						return
					}
				}
			})
		})
	}
}

func BenchmarkCachePut(b *testing.B) {
	for _, sz := range sizes {
		b.Run(sz.name, func(b *testing.B) {
			// 64 MB: the 100 KB case evicts on most puts once full.
			c, _ := NewCache(pool.CacheConfig{CapacityMB: 64, Policy: pool.LRU})
			val := make([]byte, sz.n)
			var next atomic.Uint64
			b.SetBytes(int64(sz.n))
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if err := c.Put(strconv.Itoa(int(next.Add(1)%5000)), Item{Value: val}); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}

// BenchmarkHTTPGet100KB measures a cache hit of a 100 KB value over
// loopback with 16 concurrent clients: "bare" is a plain net/http handler
// writing a 100 KB slice, the reference; "node" is the node's GET /cache/{key}.
func BenchmarkHTTPGet100KB(b *testing.B) {
	const size, clients = 100 << 10, 16
	value := make([]byte, size)
	bare := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "image/png")
		w.Header().Set("Content-Length", strconv.Itoa(len(value)))
		w.Write(value)
	}))
	defer bare.Close()
	n, err := New(Config{ID: "bench", Cache: pool.CacheConfig{CapacityMB: 64, Policy: pool.LRU}}, slog.New(slog.DiscardHandler))
	if err != nil {
		b.Fatal(err)
	}
	n.cache.Put("cat.png", Item{Value: value, ContentType: "image/png", ETag: `"x"`})
	node := httptest.NewServer(n.Handler())
	defer node.Close()
	bareURL, nodeURL := bare.URL+"/cat.png", node.URL+"/cache/cat.png"
	for _, tc := range []struct{ name, url string }{{"bare", bareURL}, {"node", nodeURL}} {
		b.Run(tc.name, func(b *testing.B) {
			rate, p99 := benchload.Get(b, tc.url, b.N, clients, size)
			b.ReportMetric(rate, "req/s")
			b.ReportMetric(float64(p99.Microseconds()), "p99-µs")
		})
	}
	// Alternating rounds of 1000 requests to each server, so that a change in
	// the machine's load during the run affects both alike; reports the node's
	// rate as a fraction of the bare server's.
	b.Run("interleaved", func(b *testing.B) {
		var bareTime, nodeTime float64
		for done := 0; done < b.N; done += 1000 {
			r, _ := benchload.Get(b, bareURL, 1000, clients, size)
			bareTime += 1000 / r
			r, _ = benchload.Get(b, nodeURL, 1000, clients, size)
			nodeTime += 1000 / r
		}
		b.ReportMetric(bareTime/nodeTime, "node/bare")
	})
}

// BenchmarkMemoryPerCachedByte fills a 256 MB node to capacity with 100 KB
// values through its HTTP API and reports the Go heap in use, and the
// process's resident set, per cached value byte (after a GC).
func BenchmarkMemoryPerCachedByte(b *testing.B) {
	for range b.N {
		n, err := New(Config{ID: "mem", Cache: pool.CacheConfig{CapacityMB: 256, Policy: pool.LRU}}, slog.New(slog.DiscardHandler))
		if err != nil {
			b.Fatal(err)
		}
		srv := httptest.NewServer(n.Handler())
		value := strings.Repeat("x", 100<<10)
		client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 4}}
		for i := 0; n.cache.Len() < int(n.cache.Capacity())/len(value); i++ {
			req, _ := http.NewRequest("PUT", srv.URL+"/cache/img-"+strconv.Itoa(i), strings.NewReader(value))
			resp, err := client.Do(req)
			if err != nil || resp.StatusCode != 204 {
				b.Fatalf("PUT: %v %v", err, resp)
			}
			resp.Body.Close()
		}
		client.CloseIdleConnections()
		srv.Close()
		debug.FreeOSMemory() // a GC that also returns freed pages, so RSS is comparable
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		cached := float64(n.cache.Bytes())
		b.ReportMetric(float64(ms.HeapInuse)/cached, "heap/cached-byte")
		if rss := residentBytes(); rss > 0 {
			b.ReportMetric(float64(rss)/cached, "rss/cached-byte")
		}
		b.ReportMetric(float64(n.cache.Len()), "items")
		runtime.KeepAlive(n)
	}
}

// residentBytes returns the process's resident set size, or 0 where
// /proc is not available.
func residentBytes() int64 {
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return 0
	}
	var size, rss int64
	if _, err := fmt.Sscan(string(b), &size, &rss); err != nil {
		return 0
	}
	return rss * int64(os.Getpagesize())
}

// BenchmarkClientGetMiss measures Client.Get of a key the node does not
// hold (every cold read makes one), reporting allocations per call; the
// node runs in this process, so its allocations count too.
func BenchmarkClientGetMiss(b *testing.B) {
	n, err := New(Config{ID: "bench", Cache: pool.CacheConfig{CapacityMB: 1, Policy: pool.LRU}}, slog.New(slog.DiscardHandler))
	if err != nil {
		b.Fatal(err)
	}
	srv := httptest.NewServer(n.Handler())
	defer srv.Close()
	c := NewClient(ClientConfig{})
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.Get(ctx, srv.URL, "absent", 0, GetOptions{}); !errors.Is(err, ErrMiss) {
			b.Fatalf("Get of an absent key: %v, want ErrMiss", err)
		}
	}
}

// discardWriter is an http.ResponseWriter that keeps the status and drops
// the body; reset clears its header map keeping its storage, so a benchmark
// counts only the handler's own allocations.
type discardWriter struct {
	h      http.Header
	status int
	n      int
}

func (w *discardWriter) Header() http.Header { return w.h }
func (w *discardWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
}

func (w *discardWriter) Write(p []byte) (int, error) {
	w.WriteHeader(http.StatusOK)
	w.n += len(p)
	return len(p), nil
}

func (w *discardWriter) reset() { clear(w.h); w.status, w.n = 0, 0 }

// BenchmarkHandlerGetHit serves GET /cache/{key} hits through the node's
// whole handler (routing, the cluster secret, the role check, the timing
// and the epoch check) as a frontend sends them, and reports allocations
// per request: what the node's own code costs beside net/http's.
func BenchmarkHandlerGetHit(b *testing.B) {
	const secret = "3f1c9a0b7e5d42c8a6f01b2d3e4c5a6978f0e1d2c3b4a596" // as long as `memcache up` makes
	for _, sz := range sizes {
		b.Run(sz.name, func(b *testing.B) {
			n, err := New(Config{ID: "bench", Secret: secret, Cache: pool.CacheConfig{CapacityMB: 64, Policy: pool.LRU}}, slog.New(slog.DiscardHandler))
			if err != nil {
				b.Fatal(err)
			}
			n.cache.Put("images/cat.png", Item{Value: make([]byte, sz.n), ContentType: "image/png", ETag: `"0123456789abcdef"`})
			h := n.Handler()
			req := httptest.NewRequest(http.MethodGet, "/cache/images%2Fcat.png", nil)
			req.Header.Set(auth.Header, secret)
			req.Header.Set(HeaderEpoch, "0")
			w := &discardWriter{h: make(http.Header)}
			b.ReportAllocs()
			for b.Loop() {
				w.reset()
				h.ServeHTTP(w, req)
				if w.status != http.StatusOK || w.n != sz.n {
					b.Fatalf("GET: status %d, %d bytes; want 200, %d bytes", w.status, w.n, sz.n)
				}
			}
		})
	}
}

// BenchmarkClientGetHit measures Client.Get of a cached value, body read,
// from 16 goroutines over one transport, as a frontend reads: over
// HTTP/1.1 (a connection per concurrent request, kept alive; what the
// node client uses) and over HTTP/2 without TLS (h2c: every request
// multiplexed on one connection). Client and node share the 2 cores, so
// ns/op is the cost of a GET to both.
func BenchmarkClientGetHit(b *testing.B) {
	const secret = "3f1c9a0b7e5d42c8a6f01b2d3e4c5a6978f0e1d2c3b4a596"
	for _, sz := range sizes {
		for _, proto := range []string{"http1", "h2c"} {
			b.Run(sz.name+"/"+proto, func(b *testing.B) {
				n, err := New(Config{ID: "bench", Secret: secret, Cache: pool.CacheConfig{CapacityMB: 64, Policy: pool.LRU}}, slog.New(slog.DiscardHandler))
				if err != nil {
					b.Fatal(err)
				}
				n.cache.Put("cat.png", Item{Value: make([]byte, sz.n), ContentType: "image/png", ETag: `"x"`})
				srv := httptest.NewUnstartedServer(n.Handler())
				srv.Config.Protocols = new(http.Protocols)
				srv.Config.Protocols.SetHTTP1(true)
				srv.Config.Protocols.SetUnencryptedHTTP2(true)
				srv.Start()
				defer srv.Close()
				tr := http.DefaultTransport.(*http.Transport).Clone()
				tr.MaxIdleConnsPerHost = 64
				if proto == "h2c" {
					tr.Protocols = new(http.Protocols)
					tr.Protocols.SetUnencryptedHTTP2(true)
				}
				defer tr.CloseIdleConnections()
				// Generous deadlines: a busy machine must not fail the run.
				c := NewClient(ClientConfig{HTTPClient: &http.Client{Transport: &auth.Transport{Secret: secret, Base: tr}}, Timeout: time.Minute})
				b.SetBytes(int64(sz.n))
				b.ReportAllocs()
				b.SetParallelism(8) // 16 goroutines on 2 cores
				b.ResetTimer()
				b.RunParallel(func(pb *testing.PB) {
					buf := make([]byte, 32<<10)
					for pb.Next() {
						e, err := c.Get(context.Background(), srv.URL, "cat.png", 0, GetOptions{})
						if err != nil {
							b.Error(err)
							return
						}
						got, _ := io.CopyBuffer(io.Discard, e.Body, buf)
						e.Body.Close()
						if got != int64(sz.n) {
							b.Errorf("read %d bytes, want %d", got, sz.n)
							return
						}
					}
				})
			})
		}
	}
}
