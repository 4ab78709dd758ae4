// Command memchurn measures a cache node's memory the way an operator sees
// it: it starts a real `memcache node` process, fills it past its capacity
// with uploads of fixed-size values (so it evicts), keeps uploading new keys
// (every PUT evicts) while readers GET recent ones, and samples every second
// the process's resident set size (/proc/PID/status VmRSS) and the node's
// cached bytes (memcache_node_bytes on /metrics). It prints one row per
// sample and a summary of RSS per cached byte in the steady state.
//
// Usage (from the module root):
//
//	go build -o /tmp/memcache . && go run ./bench/memchurn -bin /tmp/memcache
//
// See BENCHMARKS.md, "Memory under eviction churn (issue 12)".
package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/memcache/memcache/node"
)

func main() {
	var (
		bin      = flag.String("bin", "", "the memcache binary to start as the node (required)")
		capMB    = flag.Int("capacity-mb", 128, "the node's --capacity-mb")
		size     = flag.Int("size", 100<<10, "bytes per value")
		fill     = flag.Int("fill", 1400, "uploads before the churn starts (past capacity: the node evicts)")
		writers  = flag.Int("writers", 2, "concurrent uploaders during the churn")
		readers  = flag.Int("readers", 2, "concurrent readers during the churn (GETs of recent keys)")
		putRate  = flag.Int("put-rate", 100, "uploads per second during the churn, over all writers (0: as fast as they go)")
		duration = flag.Duration("duration", 90*time.Second, "how long the churn runs (sampled every second)")
		env      = flag.String("env", "", "extra environment for the node, comma-separated NAME=VALUE (e.g. GOGC=100)")
		extra    = flag.String("node-flags", "", "extra flags for the node, space-separated (e.g. --memory-limit=false)")
	)
	flag.Parse()
	if *bin == "" {
		fmt.Fprintln(os.Stderr, "memchurn: -bin is required")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *bin, *capMB, *size, *fill, *writers, *readers, *putRate, *duration, *env, strings.Fields(*extra)); err != nil {
		fmt.Fprintln(os.Stderr, "memchurn:", err)
		os.Exit(1)
	}
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

func run(ctx context.Context, bin string, capMB, size, fill, writers, readers, putRate int, duration time.Duration, env string, extra []string) error {
	httpPort, err := freePort()
	if err != nil {
		return err
	}
	gossipPort, err := freePort()
	if err != nil {
		return err
	}
	base := fmt.Sprintf("http://127.0.0.1:%d", httpPort)
	args := append([]string{"--log-level", "warn", "node", "--insecure", "--name", "memchurn",
		"--http-addr", fmt.Sprintf("127.0.0.1:%d", httpPort),
		"--gossip-addr", fmt.Sprintf("127.0.0.1:%d", gossipPort),
		"--capacity-mb", strconv.Itoa(capMB)}, extra...)
	cmd := exec.Command(bin, args...)
	cmd.Env = os.Environ()
	if env != "" {
		cmd.Env = append(cmd.Env, strings.Split(env, ",")...)
	}
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		return err
	}
	defer func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
	}()
	pid := cmd.Process.Pid

	client := node.NewClient(node.ClientConfig{Timeout: 10 * time.Second})
	for deadline := time.Now().Add(30 * time.Second); ; {
		if _, err := client.Config(ctx, base); err == nil {
			break
		} else if time.Now().After(deadline) {
			return fmt.Errorf("node did not answer within 30 s: %w", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	m, err := scrape(ctx, base)
	if err != nil {
		return err
	}
	rss0, anon0, _ := rss(pid)
	fmt.Printf("%s %s\n", bin, strings.Join(args, " "))
	fmt.Printf("node pid %d, %s, capacity %d MB, %d-byte values; idle RSS %.1f MB (anon %.1f MB); GOGC %s, GOMEMLIMIT %s\n",
		pid, base, capMB, size, mb(rss0), mb(anon0), fmtGOGC(m["go_gc_gogc_percent"]), fmtLimit(m["go_gc_gomemlimit_bytes"]))

	value := bytes.Repeat([]byte("memchurn"), size/8+1)[:size]
	var next atomic.Int64 // the next key to upload
	var puts, gets, hits, errs atomic.Int64
	put := func() {
		k := next.Add(1) - 1
		if err := client.Put(ctx, base, "k"+strconv.FormatInt(k, 10), value, node.PutOptions{}); err != nil {
			if ctx.Err() == nil {
				errs.Add(1)
			}
			return
		}
		puts.Add(1)
	}

	// The fill: the 1,400 uploads of 100 KB into 128 MB.
	start := time.Now()
	var wg sync.WaitGroup
	for range max(writers, 1) {
		wg.Go(func() {
			for next.Load() < int64(fill) && ctx.Err() == nil {
				put()
			}
		})
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return err
	}
	fmt.Printf("fill: %d uploads in %v\n", fill, time.Since(start).Round(time.Millisecond))

	// The churn.
	churn, cancel := context.WithTimeout(ctx, duration)
	defer cancel()
	var tick <-chan time.Time
	if putRate > 0 {
		t := time.NewTicker(time.Second / time.Duration(putRate))
		defer t.Stop()
		tick = t.C
	}
	for range writers {
		wg.Go(func() {
			for churn.Err() == nil {
				if tick != nil {
					select {
					case <-tick:
					case <-churn.Done():
						return
					}
				}
				put()
			}
		})
	}
	recent := int64(capMB<<20) / int64(size) / 2 // keys surely still cached
	for r := range readers {
		wg.Go(func() {
			for i := int64(r); churn.Err() == nil; i++ {
				k := next.Load() - 1 - i%recent
				e, err := client.Get(churn, base, "k"+strconv.FormatInt(k, 10), 0, node.GetOptions{})
				gets.Add(1)
				if err != nil {
					if !errors.Is(err, node.ErrMiss) && churn.Err() == nil {
						errs.Add(1)
					}
					continue
				}
				io.Copy(io.Discard, e.Body)
				e.Body.Close()
				hits.Add(1)
			}
		})
	}

	fmt.Println()
	fmt.Println("| t (s) | RSS (MB) | anon RSS (MB) | cached (MB) | RSS / cached | anon RSS / cached | heap in use (MB) | GCs | node CPU % | PUT/s | GET/s |")
	fmt.Println("|---|---|---|---|---|---|---|---|---|---|---|")
	var ratios, anonRatios []float64
	lastPuts, lastGets := puts.Load(), gets.Load()
	lastCPU, err := cpuTime(pid)
	if err != nil {
		return err
	}
	var cpus []float64
	var peak float64
	sample := time.NewTicker(time.Second)
	defer sample.Stop()
	churnStart := time.Now()
loop:
	for {
		select {
		case <-churn.Done():
			break loop
		case <-sample.C:
		}
		r, anon, err := rss(pid)
		if err != nil {
			return err
		}
		m, err := scrape(ctx, base)
		if err != nil {
			return err
		}
		cached := m["memcache_node_bytes"]
		cpu, err := cpuTime(pid)
		if err != nil {
			return err
		}
		ratio, anonRatio := float64(r)/cached, float64(anon)/cached
		p, g := puts.Load(), gets.Load()
		t := int(time.Since(churnStart).Round(time.Second) / time.Second)
		fmt.Printf("| %d | %.1f | %.1f | %.1f | %.3f | %.3f | %.1f | %.0f | %.0f | %d | %d |\n", t, mb(r), mb(anon), cached/(1<<20), ratio, anonRatio,
			m["go_memstats_heap_inuse_bytes"]/(1<<20), m["go_gc_duration_seconds_count"], (cpu-lastCPU).Seconds()*100, p-lastPuts, g-lastGets)
		cpus = append(cpus, (cpu-lastCPU).Seconds()*100)
		lastCPU = cpu
		lastPuts, lastGets = p, g
		if t > 10 { // steady state: the first 10 s of churn are the warm-up
			ratios = append(ratios, ratio)
			anonRatios = append(anonRatios, anonRatio)
			peak = max(peak, float64(r))
		}
	}
	cancel()
	wg.Wait()
	if len(ratios) == 0 {
		return errors.New("no steady-state samples: run longer than 10 s")
	}
	slices.Sort(ratios)
	slices.Sort(anonRatios)
	elapsed := time.Since(churnStart).Seconds()
	fmt.Printf("\nsteady state (t > 10 s, %d samples): RSS / cached byte median %.3f, p90 %.3f, max %.3f; anon RSS / cached byte median %.3f, max %.3f; peak RSS %.1f MB\n",
		len(ratios), ratios[len(ratios)/2], ratios[len(ratios)*9/10], ratios[len(ratios)-1],
		anonRatios[len(anonRatios)/2], anonRatios[len(anonRatios)-1], mb(int64(peak)))
	var cpuSum float64
	for _, c := range cpus {
		cpuSum += c
	}
	fmt.Printf("churn: %.0f PUT/s, %.0f GET/s (%d hits), %d errors; node CPU %.0f %% (mean of the samples)\n",
		float64(puts.Load()-int64(fill))/elapsed, float64(gets.Load())/elapsed, hits.Load(), errs.Load(), cpuSum/float64(len(cpus)))
	return nil
}

// rss returns the resident set size of process pid (VmRSS) and its
// anonymous part (RssAnon: what is not the binary's or a library's file
// pages), in bytes.
func rss(pid int) (total, anon int64, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	kb := func(field string) (int64, error) {
		for line := range strings.Lines(string(b)) {
			if rest, ok := strings.CutPrefix(line, field+":"); ok {
				v, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
				return v << 10, err
			}
		}
		return 0, fmt.Errorf("no %s in /proc/%d/status", field, pid)
	}
	if total, err = kb("VmRSS"); err != nil {
		return 0, 0, err
	}
	anon, err = kb("RssAnon")
	return total, anon, err
}

// cpuTime returns the CPU time (user and system) process pid has used.
func cpuTime(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The fields after the command name, which is in parentheses; utime
	// and stime are fields 14 and 15, in clock ticks (USER_HZ, 100 on Linux).
	i := bytes.LastIndexByte(b, ')')
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: too few fields", pid)
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, err
	}
	return time.Duration(utime+stime) * 10 * time.Millisecond, nil
}

// scrape reads the node's /metrics: every unlabelled sample, and the
// go_gc_duration_seconds summary's count.
func scrape(ctx context.Context, base string) (map[string]float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	m := make(map[string]float64)
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			continue
		}
		name, val, ok := strings.Cut(line, " ")
		if !ok || strings.Contains(name, "{") {
			continue
		}
		if v, err := strconv.ParseFloat(val, 64); err == nil {
			m[name] = v
		}
	}
	return m, sc.Err()
}

func mb(b int64) float64 { return float64(b) / (1 << 20) }

func fmtGOGC(v float64) string {
	if v == 0 {
		return "(not exported)"
	}
	return strconv.FormatFloat(v, 'f', 0, 64)
}

func fmtLimit(v float64) string {
	if v == 0 || v >= 1<<62 {
		return "off"
	}
	return fmt.Sprintf("%.1f MB", v/(1<<20))
}
