// Package benchload drives concurrent keep-alive HTTP GETs for benchmarks
// and reports the rate and the 99th percentile latency.
package benchload

import (
	"io"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Get sends n GETs of url from clients concurrent keep-alive clients,
// checking each answer is 200 with want bytes, and returns the request rate
// and the 99th percentile latency.
func Get(tb testing.TB, url string, n, clients, want int) (float64, time.Duration) {
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
					tb.Error(err)
					return
				}
				got, _ := io.CopyBuffer(io.Discard, resp.Body, buf)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK || int(got) != want {
					tb.Errorf("GET %s: %d, %d bytes; want 200, %d", url, resp.StatusCode, got, want)
					return
				}
				lat[c] = append(lat[c], time.Since(t0))
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	all := slices.Concat(lat...)
	if len(all) == 0 {
		return 0, 0
	}
	slices.Sort(all)
	return float64(len(all)) / elapsed.Seconds(), all[len(all)*99/100]
}
