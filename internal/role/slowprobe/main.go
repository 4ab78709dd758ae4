// Command slowprobe measures a server under slow clients (BENCHMARKS.md,
// "Slow clients"): it opens -n slow connections to a frontend (-mode
// header: half send nothing, half trickle a header one byte a second;
// -mode body: a complete upload header, then the body one byte a second),
// runs ordinary GETs of -path meanwhile, and samples the server process's
// (-pid) open descriptors and RSS before, during and after, until the
// server has closed every slow connection or -hold has passed.
//
//	go run ./internal/role/slowprobe -url http://127.0.0.1:8080 -pid PID -path /images/KEY
package main

import (
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

func sample(pid int) string {
	ents, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	st, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	rss := ""
	for _, l := range strings.Split(string(st), "\n") {
		if strings.HasPrefix(l, "VmRSS:") {
			rss = strings.TrimSpace(strings.TrimPrefix(l, "VmRSS:"))
		}
	}
	return fmt.Sprintf("fds=%d rss=%s", len(ents), rss)
}

func main() {
	base := flag.String("url", "", "frontend base URL")
	path := flag.String("path", "/images/slow", "ordinary GET path")
	pid := flag.Int("pid", 0, "server pid")
	n := flag.Int("n", 2000, "slow connections")
	during := flag.Duration("during", 8*time.Second, "ordinary GETs for this long")
	hold := flag.Duration("hold", 60*time.Second, "wait at most this long for the server to close them")
	clients := flag.Int("clients", 8, "ordinary clients")
	mode := flag.String("mode", "header", "header: half silent, half trickling a header; body: a full upload header, then a trickled body")
	flag.Parse()
	addr := strings.TrimPrefix(*base, "http://")
	fmt.Println("before:", sample(*pid))
	var closed atomic.Int64
	conns := make([]net.Conn, 0, *n)
	t0 := time.Now()
	var closedAt sync.Map
	for i := range *n {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			fmt.Println("dial", i, err)
			os.Exit(1)
		}
		if *mode == "body" {
			io.WriteString(c, "POST /api/upload HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=XX\r\nContent-Length: 1000000\r\n\r\n--XX\r\n")
		} else if i%2 == 1 {
			io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
		}
		conns = append(conns, c)
		go func() {
			buf := make([]byte, 512)
			for {
				if _, err := c.Read(buf); err != nil {
					closed.Add(1)
					closedAt.Store(i, time.Since(t0))
					return
				}
			}
		}()
	}
	fmt.Printf("opened %d slow connections in %v\n", *n, time.Since(t0).Round(time.Millisecond))
	stop := make(chan struct{})
	go func() {
		tk := time.NewTicker(time.Second)
		for {
			select {
			case <-stop:
				return
			case <-tk.C:
			}
			step := 2
			if *mode == "body" {
				step = 1
			}
			for i := 1; i < len(conns); i += step {
				conns[i].SetWriteDeadline(time.Now().Add(time.Second))
				conns[i].Write([]byte("a"))
			}
		}
	}()
	time.Sleep(500 * time.Millisecond)
	fmt.Println("during:", sample(*pid))
	var mu sync.Mutex
	var lat []time.Duration
	var errs atomic.Int64
	var wg sync.WaitGroup
	end := time.Now().Add(*during)
	for range *clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cl := &http.Client{Timeout: 30 * time.Second}
			for time.Now().Before(end) {
				s := time.Now()
				resp, err := cl.Get(*base + *path)
				if err != nil {
					errs.Add(1)
					continue
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					errs.Add(1)
					continue
				}
				d := time.Since(s)
				mu.Lock()
				lat = append(lat, d)
				mu.Unlock()
			}
		}()
	}
	time.Sleep(*during / 2)
	fmt.Println("during (mid GETs):", sample(*pid), "slow closed so far:", closed.Load())
	wg.Wait()
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	if len(lat) > 0 {
		fmt.Printf("ordinary GETs: %d ok, %d errors, p50 %v p99 %v max %v\n", len(lat), errs.Load(),
			lat[len(lat)/2].Round(10*time.Microsecond), lat[len(lat)*99/100].Round(10*time.Microsecond), lat[len(lat)-1].Round(10*time.Microsecond))
	} else {
		fmt.Printf("ordinary GETs: 0 ok, %d errors\n", errs.Load())
	}
	deadline := time.Now().Add(*hold)
	for closed.Load() < int64(*n) && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	var last time.Duration
	closedAt.Range(func(_, v any) bool { last = max(last, v.(time.Duration)); return true })
	fmt.Printf("server closed %d of %d slow connections; last at %v after the first dial\n", closed.Load(), *n, last.Round(100*time.Millisecond))
	time.Sleep(2 * time.Second)
	fmt.Println("after:", sample(*pid))
	close(stop)
	for _, c := range conns {
		c.Close()
	}
	time.Sleep(2 * time.Second)
	fmt.Println("after the client closed its side:", sample(*pid))
}
