package hosts

// Measurements across network namespaces (issue 9, item 6). They start
// whole systems and take minutes, so they run only when asked:
//
//	MEMCACHE_BENCH_HOSTS=1 MEMCACHE_TEST_REQUIRE_NETNS=1 \
//	    go test -count=1 -run '^TestBench' -v -timeout 30m ./systemtest/hosts
//
// Each logs its figures (t.Logf); BENCHMARKS.md, "Across network
// namespaces (issue 9)", records them. They are tests, not Benchmark
// functions: one round is a fault or a pool change on a seven-host system,
// which b.N cannot scale, and the rounds' distribution (median, p90, p99)
// is the figure, not a mean per op. MEMCACHE_BENCH_ROUNDS scales the round
// counts.

import (
	"bytes"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/memcache/memcache/internal/netns"
	"github.com/memcache/memcache/internal/pool"
)

// benchEnv is the variable that turns the measurements on.
const benchEnv = "MEMCACHE_BENCH_HOSTS"

// requireBench skips t unless MEMCACHE_BENCH_HOSTS=1.
func requireBench(t *testing.T) {
	t.Helper()
	if os.Getenv(benchEnv) != "1" {
		t.Skipf("a measurement across namespaces; set %s=1 to run it", benchEnv)
	}
}

// rounds is n, or MEMCACHE_BENCH_ROUNDS if set.
func rounds(t *testing.T, n int) int {
	if v := os.Getenv("MEMCACHE_BENCH_ROUNDS"); v != "" {
		r, err := strconv.Atoi(v)
		if err != nil || r < 1 {
			t.Fatalf("MEMCACHE_BENCH_ROUNDS=%q: want a positive number", v)
		}
		return r
	}
	return n
}

// quantile returns the q-quantile (nearest rank) of ds, which it sorts.
func quantile(ds []time.Duration, q float64) time.Duration {
	slices.Sort(ds)
	i := int(q*float64(len(ds))+0.999999) - 1
	return ds[min(max(i, 0), len(ds)-1)]
}

// ms formats d in milliseconds with one decimal.
func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond)) }

// TestBenchLeaderLoss measures leader loss → writes accepted again. Each
// round takes the leader's link down and, from that instant, sends cache
// config writes to the two other replicas in turn, each attempt bounded by
// 500 ms (a client that retries); the figure is the time until the first
// 200. Alongside, one write sent at the cut to a survivor with a long
// deadline measures what a client that does not retry waits. Then the link
// comes back and the round waits for the three replicas to agree again.
func TestBenchLeaderLoss(t *testing.T) {
	requireBench(t)
	n := rounds(t, 7)
	s := newSystem(t)
	s.start()
	s.waitRaft()
	s.waitPool()

	retrying := &http.Client{Transport: s.client.Transport, Timeout: 500 * time.Millisecond}
	patient := &http.Client{Transport: s.client.Transport, Timeout: 2 * time.Minute}
	var accepted, single []time.Duration
	for round := range n {
		st := s.waitRaft()
		old := s.managers[s.managerIndex(st.ID)]
		survivors := s.others(old)
		mb := 10 + round

		cut := time.Now()
		old.LinkDown()
		singleDone := make(chan time.Duration, 1)
		go func() {
			// Not s.do's s.t: this goroutine must not fail the test.
			req, _ := http.NewRequest(http.MethodPut, managerURL(survivors[0])+"/v1/config/cache",
				strings.NewReader(fmt.Sprintf(`{"capacity_mb":%d}`, 100+round)))
			code, err := s.send(patient, req)
			if err != nil || code != 200 {
				t.Logf("round %d: the write sent at the cut: %d %v", round, code, err)
			}
			singleDone <- time.Since(cut)
		}()

		var took time.Duration
		for i := 0; took == 0; i++ {
			if time.Since(cut) > wait {
				t.Fatalf("round %d: no write accepted within %v of the cut", round, wait)
			}
			req, _ := http.NewRequest(http.MethodPut, managerURL(survivors[i%2])+"/v1/config/cache",
				strings.NewReader(fmt.Sprintf(`{"capacity_mb":%d}`, mb)))
			if code, err := s.send(retrying, req); err == nil && code == 200 {
				took = time.Since(cut)
			}
		}
		// When the survivors knew the new leader: the first status poll
		// after the accepted write says it (the term rose); the election
		// itself is bounded by took.
		var newLeader string
		var term uint64
		for _, h := range survivors {
			if st2, err := s.status(h); err == nil && st2.State == "Leader" {
				newLeader, term = st2.ID, st2.Term
			}
		}
		old.LinkUp()
		one := <-singleDone
		accepted, single = append(accepted, took), append(single, one)
		t.Logf("round %d: leader %s (term %d) cut; write accepted by %s (term %d) after %v; the write sent at the cut answered after %v",
			round, st.ID, st.Term, newLeader, term, took.Round(time.Millisecond), one.Round(time.Millisecond))
		// The old leader rejoins before the next round.
		s.waitFor(wait, "the old leader to follow again", func() error {
			o, err := s.status(old)
			if err != nil || o.State != "Follower" || o.Leader.ID == "" {
				return fmt.Errorf("%s %v", o.State, err)
			}
			return nil
		})
	}
	t.Logf("leader loss → write accepted, %d rounds, retrying client (500 ms per attempt): median %s, p90 %s, max %s",
		n, ms(quantile(accepted, 0.5)), ms(quantile(accepted, 0.9)), ms(quantile(accepted, 1)))
	t.Logf("leader loss → answer to a write sent at the cut, no client retry: median %s, p90 %s, max %s",
		ms(quantile(single, 0.5)), ms(quantile(single, 0.9)), ms(quantile(single, 1)))
}

// send sends req with c and the admin token (a JSON body), and returns
// the status; the body is read and dropped. Unlike do it uses no s.t, so
// a goroutine may call it.
func (s *system) send(c *http.Client, req *http.Request) (int, error) {
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+s.secrets.adminToken)
	resp, err := c.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	b.ReadFrom(resp.Body)
	return resp.StatusCode, nil
}

// startFrontends starts one more frontend on each of s.spare, named fe1,
// fe2, ... with its own certificate (provision.sh tls adds them to the CA's
// directory) and its own SQLite and blob directory: enough for routing.
func (s *system) startFrontends() []*netns.Host {
	s.t.Helper()
	var entries []string
	for i, h := range s.spare {
		entries = append(entries, fmt.Sprintf("fe%d:frontend:%s", i+1, h.Addr()))
	}
	s.provision("tls", []string{"TLS_HOSTS=" + strings.Join(entries, " ")})
	for i, h := range s.spare {
		name := fmt.Sprintf("fe%d", i+1)
		d := filepath.Join(s.root(h), "var/lib/memcache/frontend")
		s.startRole(name, "frontend", h, s.roleEnv(h, name, "MEMCACHE_DB="+filepath.Join(d, "keys.db"), "MEMCACHE_BLOB_DIR="+filepath.Join(d, "blobs")))
	}
	return append([]*netns.Host{s.frontend}, s.spare...)
}

// TestBenchPoolChange measures a pool change → every frontend routing by
// it, with three frontends on their own hosts. Each round resizes the pool
// (1 and 2 nodes in turn) on the leader's public listener while one poller
// per frontend scrapes its memcache_frontend_pool_epoch every 2 ms; a
// frontend's delay is the end of its first scrape showing the new epoch
// minus the moment the resize's answer arrived (negative: it had the epoch
// before the answer reached the test; clamped to 0 in the quantiles). The
// round's figure is the slowest frontend's.
func TestBenchPoolChange(t *testing.T) {
	requireBench(t)
	n := rounds(t, 60)
	s := newSystemExtra(t, 2)
	s.start()
	fes := s.startFrontends()
	st := s.waitRaft()
	v := s.waitPool()
	for _, h := range fes {
		s.waitReady(h)
	}
	leader := s.managers[s.managerIndex(st.ID)]
	scraper := s.clientWith(s.certificate("test-client"))

	epoch := v.Epoch
	var slowest []time.Duration
	perFE := make([][]time.Duration, len(fes))
	early := 0
	for round := range n {
		want := epoch + 1
		seen := make([]time.Time, len(fes))
		var wg sync.WaitGroup
		stop := make(chan struct{})
		for i, h := range fes {
			wg.Add(1)
			go func() {
				defer wg.Done()
				tick := time.NewTicker(2 * time.Millisecond)
				defer tick.Stop()
				for {
					if e, err := s.frontendEpoch(scraper, h); err == nil && e >= want {
						seen[i] = time.Now()
						return
					}
					select {
					case <-stop:
						return
					case <-tick.C:
					}
				}
			}()
		}
		size := 1 + round%2 // waitPool left 2 nodes: 1, 2, 1, ...
		r, err := s.resize(leader, size)
		answered := time.Now()
		if err != nil || r.Epoch != want {
			close(stop)
			wg.Wait()
			t.Fatalf("round %d: resize to %d: epoch %d (%v), want %d", round, size, r.Epoch, err, want)
		}
		done := make(chan struct{})
		go func() { wg.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(wait):
			close(stop)
			<-done
			t.Fatalf("round %d: not every frontend reached epoch %d within %v: %v", round, want, wait, seen)
		}
		var worst time.Duration
		for i, at := range seen {
			d := at.Sub(answered)
			if d < 0 {
				early++
			}
			d = max(d, 0)
			perFE[i] = append(perFE[i], d)
			worst = max(worst, d)
		}
		slowest = append(slowest, worst)
		epoch = want
	}
	for i, h := range fes {
		t.Logf("frontend %d (%s): p50 %s, p99 %s, max %s", i, h, ms(quantile(perFE[i], 0.5)), ms(quantile(perFE[i], 0.99)), ms(quantile(perFE[i], 1)))
	}
	t.Logf("pool change → all %d frontends at the new epoch, %d changes: p50 %s, p90 %s, p99 %s, max %s (%d of %d observations before the answer)",
		len(fes), n, ms(quantile(slowest, 0.5)), ms(quantile(slowest, 0.9)), ms(quantile(slowest, 0.99)), ms(quantile(slowest, 1)), early, n*len(fes))
}

// insecureEnv is what makes provision.sh's environment file run a role
// without cluster TLS: --insecure, the TLS variables set blank (provision.sh
// keeps a variable that is set, even blank, instead of its default) and
// http:// advertised URLs for the listeners that would have been https.
func insecureEnv(role string, h *netns.Host) []string {
	env := []string{"MEMCACHE_INSECURE=true", "MEMCACHE_TLS_CA=", "MEMCACHE_TLS_CERT=", "MEMCACHE_TLS_KEY="}
	switch role {
	case "manager":
		env = append(env, "MEMCACHE_ADVERTISE_CLUSTER=http://"+h.HostPort(managerClusterPort))
	case "node":
		env = append(env, "MEMCACHE_ADVERTISE_HTTP=http://"+h.HostPort(nodeHTTPPort))
	case "frontend":
		env = append(env, "MEMCACHE_ADVERTISE_CLUSTER=http://"+h.HostPort(frontendClusterPort))
	}
	return env
}

// startInsecure is start with every role's cluster traffic in clear text.
func (s *system) startInsecure() {
	s.t.Helper()
	for i, h := range s.managers {
		s.startRole(fmt.Sprintf("m%d", i), "manager", h, append(s.managerEnv(i), insecureEnv("manager", h)...))
	}
	for i, h := range s.nodes {
		s.startRole(fmt.Sprintf("n%d", i), "node", h, append(s.nodeEnv(i), insecureEnv("node", h)...))
	}
	s.startRole("fe", "frontend", s.frontend, append(s.frontendEnv(), insecureEnv("frontend", s.frontend)...))
}

// sizedImages returns one image of size bytes per key: a PNG padded with
// the key and zeros.
func sizedImages(t *testing.T, keys []string, size int) map[string][]byte {
	imgs := map[string][]byte{}
	for _, k := range keys {
		b := append(pngImage(t), k...)
		if len(b) > size {
			t.Fatalf("an image of %d bytes is too small for the PNG and the key (%d)", size, len(b))
		}
		imgs[k] = append(b, make([]byte, size-len(b))...)
	}
	return imgs
}

// load is the figures of a run of GETs.
type load struct {
	lat     []time.Duration
	elapsed time.Duration
}

// getImages GETs keys round-robin through the frontend at base, total
// requests by workers concurrent clients, checking every answer is the
// image from a cache node; it returns the latencies and the wall time.
func getImages(t *testing.T, c *http.Client, base string, imgs map[string][]byte, keys []string, total, workers int) load {
	t.Helper()
	lats := make([][]time.Duration, workers)
	errs := make(chan error, workers)
	begin := time.Now()
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < total; i += workers {
				k := keys[i%len(keys)]
				t0 := time.Now()
				img, err := readImage(c, base, k)
				lats[w] = append(lats[w], time.Since(t0))
				if err == nil {
					err = img.check(imgs[k], "cache")
				}
				if err != nil {
					errs <- fmt.Errorf("GET /images/%s: %v", k, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(begin)
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	return load{lat: slices.Concat(lats...), elapsed: elapsed}
}

// TestBenchImagePathTLS measures what cluster TLS costs on the image path:
// GET /images/{key} through the frontend, a cache hit, on a system whose
// cluster traffic is mutual TLS and on one started with --insecure (the
// same provision.sh environment files with the TLS variables blank; see
// insecureEnv). Both systems run at once and are measured in alternating
// chunks, with the same client (plain HTTP to the frontend's public
// listener), the same 16 keys (one per region) and the same images. The
// frontend keeps a hot copy of each image and revalidates it with the
// owner node on every read (a 304 with no body), so each hit still makes
// one request to the node, over TLS or not.
func TestBenchImagePathTLS(t *testing.T) {
	requireBench(t)
	chunks := rounds(t, 8)
	const chunk = 250
	systems := map[string]*system{"tls": newSystem(t), "insecure": newSystem(t)}
	systems["tls"].start()
	systems["insecure"].startInsecure()
	for m, s := range systems {
		s.waitRaft()
		s.waitReady(s.frontend)
		// The pool's members are advertised in the system's scheme: the
		// frontend calls the nodes over TLS or in clear text.
		scheme := map[string]string{"tls": "https://", "insecure": "http://"}[m]
		s.waitFor(startWait, "a pool of "+scheme+" nodes", func() error {
			var v pool.View
			code, body, err := s.get(scheme+s.managers[0].HostPort(managerClusterPort)+"/v1/pool", &v)
			if err != nil || code != 200 || len(v.Members) != numNodes {
				return fmt.Errorf("%d %v %s", code, err, body)
			}
			for _, mb := range v.Members {
				if !strings.HasPrefix(mb.HTTP, scheme) {
					return fmt.Errorf("member %s at %s", mb.ID, mb.HTTP)
				}
			}
			return nil
		})
	}
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 16}, Timeout: 10 * time.Second}
	modes := []string{"tls", "insecure"}
	for _, size := range []int{1 << 10, 100 << 10} {
		keys := regionKeys(fmt.Sprintf("bench-%dk", size>>10))
		imgs := sizedImages(t, keys, size)
		for _, s := range systems {
			s.uploadImages(imgs)
			s.waitCached(s.frontend, imgs)
		}
		for _, workers := range []int{1, 8} {
			runs := map[string][]load{}
			for c := range chunks {
				order := modes
				if c%2 == 1 {
					order = []string{modes[1], modes[0]}
				}
				for _, m := range order {
					runs[m] = append(runs[m], getImages(t, client, frontendURL(systems[m].frontend), imgs, keys, chunk*workers, workers))
				}
			}
			for _, m := range modes {
				var lat []time.Duration
				var elapsed time.Duration
				for _, l := range runs[m] {
					lat = append(lat, l.lat...)
					elapsed += l.elapsed
				}
				t.Logf("%3d KB, %d client(s), %-8s: %6.0f req/s, p50 %s, p99 %s (%d GETs)", size>>10, workers, m,
					float64(len(lat))/elapsed.Seconds(), ms(quantile(lat, 0.5)), ms(quantile(lat, 0.99)), len(lat))
			}
		}
	}
}
