package chaos

import (
	"context"
	"flag"
	"fmt"
	"math/rand/v2"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/memcache/memcache/internal/history"
	"github.com/memcache/memcache/internal/netns"
	"github.com/memcache/memcache/internal/testbin"
	"github.com/memcache/memcache/node"
)

var (
	flagDuration    = flag.Duration("chaos.duration", 75*time.Second, "how long the clients and the nemesis run")
	flagSeed        = flag.Uint64("chaos.seed", 0, "the nemesis's and clients' seed (0: a random one, printed)")
	flagMode        = flag.String("chaos.mode", "auto", "where the roles run: netns, loopback, or auto (netns where available)")
	flagKeys        = flag.Int("chaos.keys", 24, "how many keys the clients share")
	flagClients     = flag.Int("chaos.clients", 8, "how many data clients run at once")
	flagArtefacts   = flag.String("chaos.artefacts", "", "directory to keep the seed, history and visualisations in (default: a new temporary directory, kept when the run fails)")
	flagKeep        = flag.Bool("chaos.keep", false, "keep the artefacts even when the run passes")
	flagRegressions = flag.Bool("chaos.regressions", false, "run TestRegressions: the campaigns of testdata/regressions.txt")
)

func TestMain(m *testing.M) {
	code := m.Run()
	testbin.Remove()
	os.Exit(code)
}

// TestCampaign runs the campaign: the cluster of three managers, two of
// four cache nodes and two frontends; data clients and an admin client
// through every entry point; the nemesis; then every fault healed, a final
// read of every key from both frontends, and the check. It fails if any
// history is not linearizable, or any write is lost or any read stale.
func TestCampaign(t *testing.T) {
	if testing.Short() {
		t.Skip("the fault campaign runs real clusters for minutes")
	}
	seed := *flagSeed
	if seed == 0 {
		seed = rand.Uint64()
	}
	runCampaign(t, campaign{seed: seed, duration: *flagDuration, keys: *flagKeys, clients: *flagClients})
}

// TestRegressions reruns the campaigns of testdata/regressions.txt, one
// line each: "seed duration keys clients # what it found". Each found a
// defect, fixed since and kept as a focused test too (the line says
// which); timings differ from run to run, so a rerun is a campaign with the
// same schedule of faults and operations, not a replay. They take minutes
// each: run them with -chaos.regressions.
func TestRegressions(t *testing.T) {
	if !*flagRegressions {
		t.Skip("run with -chaos.regressions (minutes per campaign)")
	}
	b, err := os.ReadFile(filepath.Join("testdata", "regressions.txt"))
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(string(b)) {
		line, _, _ = strings.Cut(line, "#")
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		if len(f) != 4 {
			t.Fatalf("regressions.txt: %q: want seed duration keys clients", line)
		}
		var c campaign
		d, err1 := time.ParseDuration(f[1])
		_, err2 := fmt.Sscan(f[0]+" "+f[2]+" "+f[3], &c.seed, &c.keys, &c.clients)
		if err1 != nil || err2 != nil {
			t.Fatalf("regressions.txt: %q: %v %v", line, err1, err2)
		}
		c.duration = d
		t.Run(f[0], func(t *testing.T) { runCampaign(t, c) })
	}
}

// campaign is one run's parameters.
type campaign struct {
	seed          uint64
	duration      time.Duration
	keys, clients int
}

func runCampaign(t *testing.T, c campaign) {
	useNetns := false
	switch *flagMode {
	case "netns":
		netns.Require(t)
		useNetns = true
	case "loopback":
	case "auto":
		if err := netns.Available(); err == nil {
			useNetns = true
		} else if os.Getenv("MEMCACHE_TEST_REQUIRE_NETNS") == "1" {
			t.Fatalf("MEMCACHE_TEST_REQUIRE_NETNS=1 and %v", err)
		} else {
			t.Logf("network namespaces unavailable (%v): roles run on loopback addresses, without partitions", err)
		}
	default:
		t.Fatalf("-chaos.mode %q: want netns, loopback or auto", *flagMode)
	}
	seed := c.seed
	t.Logf("chaos seed %d (rerun: go test ./systemtest/chaos -run TestCampaign -chaos.seed %d -chaos.duration %v -chaos.keys %d -chaos.clients %d)", seed, seed, c.duration, c.keys, c.clients)

	art := *flagArtefacts
	if art == "" {
		d, err := os.MkdirTemp("", "memcache-chaos-*")
		if err != nil {
			t.Fatal(err)
		}
		art = d
	}
	if err := os.MkdirAll(art, 0o755); err != nil {
		t.Fatal(err)
	}

	s := newSystem(t, useNetns)
	begin := time.Now()
	s.startAll()
	t.Logf("cluster serving after %v (%s)", time.Since(begin).Round(time.Millisecond), map[bool]string{true: "namespaces", false: "loopback"}[useNetns])

	rec := history.NewRecorder()
	w := newWorkload(s, rec, c.keys)
	// The configuration register starts from a known value, written (and
	// recorded) before anything else.
	setup := rand.New(rand.NewPCG(seed, 1))
	s.waitFor(startWait, "the first configuration write", func() error {
		w.setConfig(-1, setup, map[string]string{"capacity_mb": "64", "policy": "LRU"})
		if ops := rec.Ops(); ops[len(ops)-1].Outcome != history.OK {
			return fmt.Errorf("%s", ops[len(ops)-1].Err)
		}
		return nil
	})

	ctx, stop := context.WithTimeout(context.Background(), c.duration)
	defer stop()
	var wg sync.WaitGroup
	for i := range c.clients {
		wg.Go(func() { w.client(ctx, i, rand.New(rand.NewPCG(seed, uint64(100+i)))) })
	}
	wg.Go(func() { w.admin(ctx, 99, rand.New(rand.NewPCG(seed, 99)), 15*time.Second) })
	nem := newNemesis(s, rec, seed)
	nemDone := make(chan struct{})
	go func() { defer close(nemDone); nem.run(ctx) }()
	wg.Wait()
	<-nemDone

	// Heal, let the cluster come back, read every key from both frontends.
	nem.healAll()
	nem.logf("everything healed")
	s.waitServing()
	final := 1000
	for _, k := range w.keys {
		for fe := range s.frontends {
			w.readImage(final, fe, k, true)
			w.readAPI(final, fe, k, true)
		}
	}
	for fe := range s.frontends {
		w.list(final, fe, true)
	}

	// What the warm handoffs of the resizes did (node/handoff.go), summed
	// over the nodes (each counts since it started).
	var handoff node.HandoffStatus
	for _, m := range s.nodes {
		var st node.Stats
		if code, body, err := s.get("https://"+m.hostPort(nodeHTTPPort)+"/stats?since="+url.QueryEscape(time.Now().Format(time.RFC3339Nano)), &st); err != nil || code != 200 {
			t.Logf("%s: stats: %d %v %s", m, code, err, body)
			continue
		}
		handoff.Entries += st.Handoff.Entries
		handoff.Bytes += st.Handoff.Bytes
		handoff.WarmReads += st.Handoff.WarmReads
		handoff.Refused += st.Handoff.Refused
	}
	handoffs := fmt.Sprintf("%d entries (%d bytes) installed from previous owners, %d warm reads, %d copies refused",
		handoff.Entries, handoff.Bytes, handoff.WarmReads, handoff.Refused)
	t.Logf("handoffs: %s", handoffs)

	ops := rec.Ops()
	if err := history.WriteJSON(filepath.Join(art, "history.json"), ops); err != nil {
		t.Error(err)
	}
	os.WriteFile(filepath.Join(art, "seed"), fmt.Appendf(nil, "%d\n", seed), 0o644)
	nem.mu.Lock()
	os.WriteFile(filepath.Join(art, "nemesis.log"), []byte(strings.Join(nem.log, "\n")+"\n"), 0o644)
	byKind := nem.byKind
	nem.mu.Unlock()

	checkBegin := time.Now()
	// porcupine's time per history grows with the run: a minute, and a
	// second more per 5,000 operations.
	rep := history.Check(ops, time.Minute+time.Duration(len(ops)/5000)*time.Second)
	t.Logf("checked %d operations in %v", len(ops), time.Since(checkBegin).Round(time.Millisecond))
	t.Logf("faults: %s", formatCounts(byKind))
	t.Logf("answers: %s", formatCounts(w.answers))
	t.Logf("report:\n%s", rep)
	os.WriteFile(filepath.Join(art, "report.txt"), []byte(fmt.Sprintf("seed %d\nfaults: %s\nanswers: %s\nhandoffs: %s\n%s\n", seed, formatCounts(byKind), formatCounts(w.answers), handoffs, rep)), 0o644)

	for _, k := range slices.Concat(rep.NonLinearizable, keysOf(rep.Lost), keysOf(rep.Stale)) {
		p := filepath.Join(art, "visual-"+strings.ReplaceAll(k, "/", "_")+".html")
		if err := history.Visualize(ops, k, p); err != nil {
			t.Logf("visualising %s: %v", k, err)
		}
	}
	failed := !rep.Linearizable || len(rep.Lost) > 0 || len(rep.Stale) > 0
	for _, a := range rep.Lost {
		t.Errorf("lost: %s %s", a.Key, a.Why)
	}
	for _, a := range rep.Stale {
		t.Errorf("stale: %s %s", a.Key, a.Why)
	}
	if !rep.Linearizable {
		t.Errorf("not linearizable: %v", rep.NonLinearizable)
	}
	if failed || t.Failed() || *flagKeep {
		if err := os.CopyFS(filepath.Join(art, "logs"), os.DirFS(s.logDir)); err != nil {
			t.Logf("keeping the roles' logs: %v", err)
		}
		t.Logf("artefacts (seed, history.json, nemesis.log, report.txt, visualisations, the roles' logs) kept in %s", art)
	} else {
		os.RemoveAll(art)
	}
}

func keysOf(as []history.Anomaly) []string {
	var ks []string
	for _, a := range as {
		if !slices.Contains(ks, a.Key) {
			ks = append(ks, a.Key)
		}
	}
	return ks
}

func formatCounts[V int](m map[string]V) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s=%d", k, m[k]))
	}
	return strings.Join(parts, " ")
}
