package node

import (
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

var sizes = []struct {
	name string
	n    int
}{{"1KB", 1 << 10}, {"100KB", 100 << 10}}

func BenchmarkCacheGet(b *testing.B) {
	for _, sz := range sizes {
		b.Run(sz.name, func(b *testing.B) {
			c, _ := NewCache(CacheConfig{CapacityMB: 256, Policy: LRU})
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
			c, _ := NewCache(CacheConfig{CapacityMB: 64, Policy: LRU})
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

// loadHTTP sends n GETs of url from clients concurrent clients over
// keep-alive connections and returns the request rate and the 99th
// percentile latency.
func loadHTTP(b *testing.B, url string, n, clients, want int) (float64, time.Duration) {
	tr := &http.Transport{MaxIdleConnsPerHost: clients, MaxConnsPerHost: clients, DisableCompression: true}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}
	lat := make([][]time.Duration, clients)
	var left atomic.Int64
	left.Store(int64(n))
	var wg sync.WaitGroup
	start := time.Now()
	for c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 32<<10)
			for left.Add(-1) >= 0 {
				t0 := time.Now()
				resp, err := client.Get(url)
				if err != nil {
					b.Error(err)
					return
				}
				got, _ := io.CopyBuffer(io.Discard, resp.Body, buf)
				resp.Body.Close()
				if resp.StatusCode != 200 || int(got) != want {
					b.Errorf("GET: %d, %d bytes; want 200, %d", resp.StatusCode, got, want)
					return
				}
				lat[c] = append(lat[c], time.Since(t0))
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	all := slices.Concat(lat...)
	slices.Sort(all)
	if len(all) == 0 {
		return 0, 0
	}
	return float64(len(all)) / elapsed.Seconds(), all[len(all)*99/100]
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
	n, err := New(Config{ID: "bench", Cache: CacheConfig{CapacityMB: 64, Policy: LRU}}, slog.New(slog.DiscardHandler))
	if err != nil {
		b.Fatal(err)
	}
	n.cache.Put("cat.png", Item{Value: value, ContentType: "image/png", ETag: `"x"`})
	node := httptest.NewServer(n.Handler())
	defer node.Close()
	bareURL, nodeURL := bare.URL+"/cat.png", node.URL+"/cache/cat.png"
	for _, tc := range []struct{ name, url string }{{"bare", bareURL}, {"node", nodeURL}} {
		b.Run(tc.name, func(b *testing.B) {
			rate, p99 := loadHTTP(b, tc.url, b.N, clients, size)
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
			r, _ := loadHTTP(b, bareURL, 1000, clients, size)
			bareTime += 1000 / r
			r, _ = loadHTTP(b, nodeURL, 1000, clients, size)
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
		n, err := New(Config{ID: "mem", Cache: CacheConfig{CapacityMB: 256, Policy: LRU}}, slog.New(slog.DiscardHandler))
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
