package web_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/memcache/memcache/fsm"
	"github.com/memcache/memcache/gossip"
	"github.com/memcache/memcache/internal/netns"
	"github.com/memcache/memcache/internal/testcluster"
	"github.com/memcache/memcache/internal/waitfor"
	"github.com/memcache/memcache/metrics"
	"github.com/memcache/memcache/scaler"
)

// Browser tests: Debian's chromium, driven headless with chromedp, uses the
// manager UI of a 3-replica cluster with real cache nodes and traffic.

const chromiumPath = "/usr/bin/chromium"

// stepTimeout bounds one browser step (an action and what it waits for).
const stepTimeout = 90 * time.Second

// browser is one headless chromium.
type browser struct {
	ctx context.Context // the browser's first tab; has run once, no deadline

	mu       sync.Mutex // guards problems
	problems []string   // console errors and uncaught exceptions
}

// newBrowser starts chromium, or skips the test when it is not installed
// (fails instead when MEMCACHE_TEST_REQUIRE_BROWSER=1).
func newBrowser(t *testing.T) *browser {
	t.Helper()
	if _, err := os.Stat(chromiumPath); err != nil {
		if os.Getenv("MEMCACHE_TEST_REQUIRE_BROWSER") == "1" {
			t.Fatal("chromium not installed; run .ci/install-chromium.sh")
		}
		t.Skipf("%s not found (run .ci/install-chromium.sh; MEMCACHE_TEST_REQUIRE_BROWSER=1 makes this a failure)", chromiumPath)
	}
	// Chromium aborts the requests in flight, form submissions included,
	// when the machine's interfaces change: no network-namespace test
	// (of any package running beside this one) builds a network meanwhile.
	netns.Quiet(t)
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(chromiumPath),
		chromedp.Headless,
		chromedp.NoSandbox, // tests may run as root
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-extensions", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.Flag("hide-scrollbars", true),
		chromedp.Flag("mute-audio", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1440, 1000),
	}
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(allocCtx)
	// The first run starts the browser; it must have no deadline.
	if err := chromedp.Do(ctx, chromedp.Navigate("about:blank")); err != nil {
		cancel()
		cancelAlloc()
		t.Fatalf("starting chromium: %v", err)
	}
	b := &browser{ctx: ctx}
	t.Cleanup(func() {
		cancel()
		cancelAlloc()
	})
	return b
}

// tab is one tab in its own browser context (its own cookies), whose
// console errors are recorded.
type tab struct {
	*browser
	t    *testing.T // the (sub)test using the tab
	ctx  context.Context
	base string // the replica's URL
}

func (b *browser) newTab(t *testing.T, base string) *tab {
	t.Helper()
	ctx, cancel := chromedp.NewContext(b.ctx, chromedp.WithNewBrowserContext())
	if err := chromedp.Do(ctx, chromedp.Navigate("about:blank")); err != nil {
		cancel()
		t.Fatal(err)
	}
	msgs := chromedp.Console(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for m, err := range msgs {
			if err != nil {
				return
			}
			if m.IsException() || m.Type == chromedp.ConsoleError {
				b.mu.Lock()
				b.problems = append(b.problems, m.String())
				b.mu.Unlock()
			}
		}
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return &tab{browser: b, t: t, ctx: ctx, base: base}
}

// consoleProblems returns the console errors seen so far, except the
// failed loads of the pages the test makes fail on purpose and the
// requests Chromium aborts when the host's network changes.
func (b *browser) consoleProblems() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []string
	for _, p := range b.problems {
		if strings.Contains(p, "status of 401") || strings.Contains(p, "status of 403") {
			continue
		}
		// Chromium aborts the requests in flight when the host's network
		// interfaces change (netns.Quiet keeps this suite's own tests from
		// changing them, not the rest of the machine). Not the page's
		// error (its poll retries), so not this test's.
		if strings.Contains(p, "net::ERR_NETWORK_CHANGED") {
			continue
		}
		out = append(out, p)
	}
	return out
}

// do runs actions within stepTimeout, failing the test with the page's text.
//
// A step whose element was replaced between chromedp finding it and acting
// on it (the page redrew it) fails before it acted, with CDP's "Could not
// find node with given id"; such a step is run again.
func (tb *tab) do(what string, actions ...chromedp.Action[chromedp.Void]) {
	tb.t.Helper()
	ctx, cancel := context.WithTimeout(tb.ctx, stepTimeout)
	defer cancel()
	err := chromedp.Do(ctx, actions...)
	for try := 1; err != nil && try < 3 && strings.Contains(err.Error(), "Could not find node with given id"); try++ {
		tb.t.Logf("%s: %v; the element was redrawn, running the step again", what, err)
		err = chromedp.Do(ctx, actions...)
	}
	if err != nil {
		tb.fail(what, err)
	}
}

func (tb *tab) fail(what string, err error) {
	tb.t.Helper()
	ctx, cancel := context.WithTimeout(tb.ctx, 5*time.Second)
	defer cancel()
	loc, _ := chromedp.Run(ctx, chromedp.Location())
	text, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`document.body ? document.body.innerText : ''`))
	tb.t.Fatalf("%s: %v\nat %s, the page says:\n%s", what, err, loc, text)
}

// wait polls a JavaScript condition until it is true.
func (tb *tab) wait(what, expr string) {
	tb.t.Helper()
	ctx, cancel := context.WithTimeout(tb.ctx, stepTimeout)
	defer cancel()
	if _, err := chromedp.Run(ctx, chromedp.Poll[bool](expr, chromedp.WithPollingInterval(50*time.Millisecond), chromedp.WithPollingTimeout(stepTimeout))); err != nil {
		tb.fail("waiting for "+what, err)
	}
}

func (tb *tab) text(sel string) string {
	tb.t.Helper()
	ctx, cancel := context.WithTimeout(tb.ctx, stepTimeout)
	defer cancel()
	s, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(sel)))
	if err != nil {
		tb.fail("reading "+sel, err)
	}
	return s
}

// markStale marks the current document, so that waiting for an element of
// the next one cannot be satisfied by this one.
var markStale = chromedp.Evaluate[chromedp.Void](`document.body.setAttribute('data-stale', '1')`)

// fresh prefixes a selector so it matches only in a document loaded after markStale.
func fresh(sel string) chromedp.CSS { return chromedp.CSS("body:not([data-stale]) " + sel) }

// settled waits until the dashboard's script has drawn the page's data (at
// once on a page without it). Until then the pool table grows from its
// "loading…" row and moves the forms below it: chromedp clicks at an
// element's coordinates, as a user does, and a click made as the page moves
// lands beside its target (a radio button left unchecked, a form submitted
// with the value the page was rendered with).
var settled = chromedp.Poll[chromedp.Void](`!window.memcacheDashboard || window.memcacheDashboard.state.updates > 0`,
	chromedp.WithPollingInterval(50*time.Millisecond), chromedp.WithPollingTimeout(stepTimeout))

// submit clicks a form's button and waits for the dashboard that says the
// write named done succeeded.
func (tb *tab) submit(button, done string) {
	tb.t.Helper()
	tb.do("submitting "+button, settled, markStale, chromedp.Click(chromedp.CSS(button)),
		chromedp.WaitVisible(fresh(`#notice[data-done="`+done+`"]`)))
}

// choose clicks a radio button and checks that it is checked; a click that
// landed beside it (a refresh redrew a table above it between chromedp
// finding it and clicking) is made again, as a user would.
func (tb *tab) choose(radio string) {
	tb.t.Helper()
	for try := 1; ; try++ {
		tb.do("choosing "+radio, settled, chromedp.Click(chromedp.CSS(radio)))
		ctx, cancel := context.WithTimeout(tb.ctx, stepTimeout)
		checked, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`document.querySelector('`+radio+`').checked`))
		cancel()
		if err != nil {
			tb.fail("reading "+radio, err)
		}
		if checked {
			return
		}
		if try == 3 {
			tb.fail("choosing "+radio, fmt.Errorf("not checked after %d clicks", try))
		}
		tb.t.Logf("choosing %s: the click landed beside it; clicking again", radio)
	}
}

// chartsHaveData is true when app.js has drawn the six charts, each with 30
// points of which at least one is not null.
const chartsHaveData = `(() => {
	const ids = ['nodes', 'miss', 'hit', 'items', 'bytes', 'requests'];
	return typeof Chart !== 'undefined' && window.memcacheDashboard && window.memcacheDashboard.state.updates > 0 &&
		document.querySelectorAll('canvas').length === 6 &&
		ids.every(id => {
			const c = Chart.getChart('chart-' + id);
			return c && c.data.datasets[0].data.length === 30 && c.data.datasets[0].data.some(v => v !== null);
		});
})()`

// poolShown is true when the pool table shows n healthy nodes and the region
// map 16 owned regions.
func poolShown(n int) string {
	return fmt.Sprintf(`(() => {
	const rows = [...document.querySelectorAll('#pool-body tr[data-node]')];
	return rows.length === %d && rows.every(r => r.querySelector('td.health-ok') !== null && r.querySelector('td.handoff') !== null) &&
		document.querySelectorAll('#regions .region:not(.unowned)').length === 16;
})()`, n)
}

// screenshotDir is where dashboard screenshots go: web/testdata/screenshots
// with MEMCACHE_SCREENSHOTS=1 (for the README), else a temporary directory.
func screenshotDir(t *testing.T) string {
	if os.Getenv("MEMCACHE_SCREENSHOTS") == "1" {
		dir := filepath.Join("testdata", "screenshots")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		return dir
	}
	return t.TempDir()
}

func (tb *tab) screenshot(path string) {
	tb.t.Helper()
	ctx, cancel := context.WithTimeout(tb.ctx, stepTimeout)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		tb.fail("screenshot", err)
	}
	if err := os.WriteFile(path, png, 0o644); err != nil {
		tb.t.Fatal(err)
	}
	tb.t.Logf("dashboard screenshot: %s", path)
}

// waitMetrics waits until r's embedded metrics hold traffic in the current
// minute: items and a miss rate.
func waitMetrics(t *testing.T, r *replica) {
	t.Helper()
	waitfor.True(t, testcluster.Wait, r.name+"'s metrics to show the traffic", func() bool {
		pts, err := r.metrics.History(context.Background(), time.Now(), 2)
		if err != nil {
			return false
		}
		p := pts[len(pts)-1]
		return p.Items > 0 && p.MissRate != nil && p.HitRate != nil && p.Requests > 0
	})
}

// TestBrowser drives the UI the way an operator does, on the leader and on
// a follower: log in, see six charts with data, change the config, switch
// to manual and grow by one, clear caches, delete all with confirmation; a
// form without its CSRF token is refused.
func TestBrowser(t *testing.T) {
	b := newBrowser(t)
	s := startSystem(t, systemConfig{replicas: 3, nodes: 5, token: testToken})
	startFrontend(t, s).run() // carries delete-all out
	if got := s.traffic("warm", 30, 60, 20<<10); got != 90 {
		t.Fatalf("traffic: %d of 90 requests answered", got)
	}
	dir := screenshotDir(t)

	t.Run("leader", func(t *testing.T) {
		l := s.leader()
		waitMetrics(t, l)
		flow(t, s, b.newTab(t, l.url), l, flowConfig{
			raftState: "Leader", capacity: 128, policy: fsm.PolicyRR,
			screenshot: filepath.Join(dir, "dashboard.png"),
			// The real auto-scaler, one round, on the leader while the
			// pool is in automatic mode: the miss rate (30 of 60 GETs)
			// is above 0.3, so it grows the pool.
			whileAuto: func() {
				// The static provisioner grows the pool from nodes the
				// leader's gossip shows alive and idle: on a busy machine
				// gossip may take a while to show them all.
				waitfor.True(t, testcluster.Wait, "an idle cache node alive in the leader's gossip", func() bool {
					st := l.cluster.State()
					for _, m := range l.cluster.Gossip().Members() {
						if _, inPool := st.Member(m.Meta.ID); m.Meta.Role == gossip.RoleNode && m.State == gossip.StateAlive && !inPool {
							return true
						}
					}
					return false
				})
				as := scaler.NewAutoScaler(scaler.AutoScalerConfig{Interval: time.Minute}, l.cluster, l.pool, l.metrics, testLogger())
				grow := as.Tick(context.Background())
				if grow.Action != fsm.ActionGrow || !grow.Applied {
					t.Fatalf("auto-scaler round: got %+v, want an applied grow", grow)
				}
				// The next round's window includes that resize: discounted.
				if d := as.Tick(context.Background()); d.Discounted != fsm.DiscountResize || d.Action != fsm.ActionNone {
					t.Fatalf("auto-scaler round after the grow: got %+v, want a discounted window, no action", d)
				}
				// A round after the warm-up (its clock three minutes on)
				// whose window misses 1 GET in 100 shrinks back, and the
				// guard does not take the shrink: at the size before the
				// grow the pool measured the grow's miss rate, above max.
				later := scaler.NewAutoScaler(scaler.AutoScalerConfig{Interval: time.Minute,
					Now: func() time.Time { return time.Now().Add(3 * time.Minute) }},
					l.cluster, l.pool, totalsReader{metrics.Totals{Gets: 100, Hits: 99, Misses: 1, Requests: 100}}, testLogger())
				if d := later.Tick(context.Background()); d.Action != fsm.ActionNone || d.Estimate == nil || d.EstimateNodes != grow.Nodes {
					t.Fatalf("auto-scaler round after the warm-up: got %+v, want the shrink to %d not taken, with the estimate", d, grow.Nodes)
				}
			},
			// The guard's estimate at the size before the grow, and
			// where it comes from, beside the decision.
			wantEstimate: func(tb *tab) {
				tb.wait("the discounted window marked", `!!document.querySelector('#decisions-body td.discounted .tag.warmup')`)
				tb.wait("the estimate beside the decision", `Array.from(document.querySelectorAll('#decisions-body td.estimate')).some(function (td) {
					return /^\d+\.\d% at \d/.test(td.textContent) && /measured at \d nodes? at \d\d:\d\d:\d\d UTC/.test(td.textContent);
				})`)
			},
		})
	})
	t.Run("follower", func(t *testing.T) {
		f := s.follower()
		if got := s.traffic("follower", 30, 60, 10<<10); got != 90 {
			t.Fatalf("traffic: %d of 90 requests answered", got)
		}
		waitMetrics(t, f)
		flow(t, s, b.newTab(t, f.url), f, flowConfig{
			raftState: "Follower", capacity: 256, policy: fsm.PolicyLRU,
			screenshot: filepath.Join(dir, "dashboard-follower.png"),
		})
	})
	if p := b.consoleProblems(); len(p) > 0 {
		t.Errorf("the browser console reported errors:\n%s", strings.Join(p, "\n"))
	}
}

type flowConfig struct {
	raftState  string     // what the header must say
	capacity   int        // MB to set
	policy     fsm.Policy // policy to set
	screenshot string     // where to save the dashboard
	whileAuto  func()     // run while the pool is in automatic mode
	// wantEstimate, if not nil, checks the decision log after whileAuto.
	wantEstimate func(tb *tab)
}

func flow(t *testing.T, s *system, tb *tab, r *replica, cfg flowConfig) {
	// Log in: a wrong token first.
	tb.do("opening the UI", chromedp.Navigate(tb.base+"/ui"), chromedp.WaitVisible(chromedp.CSS("#token")))
	if loc, _ := chromedp.Run(tb.ctx, chromedp.Location()); loc != tb.base+"/ui/login" {
		t.Errorf("without a session /ui went to %s, want the login page", loc)
	}
	tb.do("logging in with a wrong token", chromedp.SendKeys(chromedp.CSS("#token"), "not-the-token"), markStale,
		chromedp.Click(chromedp.CSS("#login")), chromedp.WaitVisible(fresh("#problem")))
	if got := tb.text("#problem"); !strings.Contains(got, "not the admin token") {
		t.Errorf("wrong token: the page says %q, want that it is not the admin token", got)
	}
	tb.do("logging in", chromedp.SendKeys(chromedp.CSS("#token"), testToken), markStale,
		chromedp.Click(chromedp.CSS("#login")), chromedp.WaitVisible(fresh("#chart-requests")))

	// The dashboard: six charts with data, the pool, the regions, raft.
	tb.wait("six charts with data", chartsHaveData)
	tb.wait("the pool table and region map", poolShown(len(s.state().Members)))
	// The header shows the replica's state. On a busy machine an election
	// may have moved the leadership since the replica was picked: then its
	// new state is right too (the forms below work on either).
	states := []string{cfg.raftState}
	if now := r.cluster.Raft().State().String(); now != cfg.raftState {
		t.Logf("%s is %s now, not %s: an election happened during the test", r.name, now, cfg.raftState)
		states = append(states, now)
	}
	shown, _ := json.Marshal(states)
	tb.wait("the raft state in the header", fmt.Sprintf(`%s.includes(document.getElementById('raft-state').textContent) &&
		document.getElementById('replica-name').textContent === %q && document.querySelectorAll('#raft-peers li').length === 3`, shown, r.name))

	// Change the config.
	tb.do("filling in the config", chromedp.SetValue(chromedp.CSS("#capacity"), fmt.Sprint(cfg.capacity)),
		chromedp.SetValue(chromedp.CSS("#policy"), string(cfg.policy)))
	tb.submit("#save-config", "config")
	want := fsm.CacheConfig{CapacityMB: cfg.capacity, Policy: cfg.policy}
	if got := s.waitConverged().Cache; got != want {
		t.Errorf("cache config: got %+v, want %+v", got, want)
	}
	waitfor.True(t, 10*time.Second, "the pool's nodes to apply the config", func() bool {
		for _, m := range s.state().Members {
			c := s.node(m.ID).Node().Cache().Config()
			if c.CapacityMB != cfg.capacity || c.Policy != cfg.policy {
				return false
			}
		}
		return true
	})
	tb.wait("the summary to show the config", fmt.Sprintf(`document.getElementById('sum-cache').textContent === '%d MB · %s'`, cfg.capacity, cfg.policy))

	// Automatic mode: grow and shrink are disabled.
	tb.choose("#mode-auto")
	tb.do("setting the miss-rate band",
		chromedp.SetValue(chromedp.CSS("#max-miss"), "0.3"), chromedp.SetValue(chromedp.CSS("#min-miss"), "0.05"))
	tb.submit("#save-scaling", "scaling")
	if got := s.waitConverged().Scaling; got.Mode != fsm.ModeAuto || got.MaxMissRate != 0.3 || got.MinMissRate != 0.05 {
		t.Errorf("scaling: got %+v, want auto with 0.3 and 0.05", got)
	}
	tb.wait("grow and shrink disabled in auto mode", `document.getElementById('grow').disabled && document.getElementById('shrink').disabled`)
	if cfg.whileAuto != nil {
		cfg.whileAuto()
		tb.wait("the scaler's decision in the table", `!!document.querySelector('#decisions-body .action-grow')`)
	}
	if cfg.wantEstimate != nil {
		cfg.wantEstimate(tb)
	}

	// Manual mode, grow by one.
	tb.choose("#mode-manual")
	tb.submit("#save-scaling", "scaling")
	if got := s.waitConverged().Scaling.Mode; got != fsm.ModeManual {
		t.Errorf("mode: got %s, want manual", got)
	}
	n := len(s.state().Members)
	tb.wait("grow enabled in manual mode", `!document.getElementById('grow').disabled`)
	tb.submit("#grow", "grow")
	if got := len(s.waitConverged().Members); got != n+1 {
		t.Fatalf("after grow: got %d nodes, want %d", got, n+1)
	}
	if got := tb.text("#pool-size"); got != fmt.Sprint(n+1) {
		t.Errorf("pool size on the page: got %s, want %d", got, n+1)
	}
	s.waitNodesFollow()
	if got := s.traffic("after-grow-"+r.name, 40, 80, 30<<10); got != 120 {
		t.Fatalf("traffic: %d of 120 requests answered", got)
	}
	tb.wait("the grown pool in the table", poolShown(n+1))
	tb.wait("items on every node", `[...document.querySelectorAll('#pool-body tr[data-node] td.num')].every(td => td.textContent !== '0' && td.textContent !== '—')`)
	tb.wait("six charts with data", chartsHaveData)
	tb.screenshot(cfg.screenshot)

	// A form without its CSRF token is refused, and changes nothing.
	before := s.state()
	tb.do("clearing caches without the CSRF token",
		chromedp.Evaluate[chromedp.Void](`document.querySelector('form[action="/ui/clear"] input[name=csrf]').remove()`),
		settled, markStale, chromedp.Click(chromedp.CSS("#clear-caches")), chromedp.WaitVisible(fresh("#problem-heading")))
	if got := tb.text("#problem"); !strings.Contains(got, "Nothing was changed") {
		t.Errorf("form without CSRF: the page says %q, want that nothing was changed", got)
	}
	if got := s.state().ClearGen; got != before.ClearGen {
		t.Errorf("clear generation after a refused form: got %d, want %d", got, before.ClearGen)
	}

	// Clear caches.
	tb.do("back to the dashboard", chromedp.Navigate(tb.base+"/ui"), chromedp.WaitVisible(chromedp.CSS("#clear-caches")))
	term := r.cluster.Raft().CurrentTerm()
	tb.submit("#clear-caches", "clear")
	generationMoved(t, "clear", s.waitConverged().ClearGen, before.ClearGen, term, r)
	waitfor.True(t, 10*time.Second, "the pool's caches to be empty", func() bool {
		for _, m := range s.state().Members {
			if s.node(m.ID).Node().Cache().Len() != 0 {
				return false
			}
		}
		return true
	})

	// Delete all, with confirmation. The page names the pool as it is: on
	// a busy machine gossip may have taken a starved node for failed since
	// the grow (the pool then changed epoch), so the size is the state's.
	opened := s.state()
	tb.do("opening the delete confirmation", settled, markStale, chromedp.Click(chromedp.CSS("#delete-all")),
		chromedp.WaitVisible(fresh("#confirm-delete")))
	list := tb.text("#delete-list")
	sizes := []int{len(opened.Members)}
	if now := s.state(); now.Epoch != opened.Epoch {
		t.Logf("the pool changed while the confirmation page opened: %d nodes, then %d", len(opened.Members), len(now.Members))
		sizes = append(sizes, len(now.Members))
	}
	if sizes[0] != n+1 {
		t.Logf("the pool has %d nodes, not the %d it grew to: a node was taken for failed since", sizes[0], n+1)
	}
	for _, want := range []string{"every image in the blob store", "every key in the key index"} {
		if !strings.Contains(list, want) {
			t.Errorf("confirmation page says %q, want it to name %q", list, want)
		}
	}
	if !slices.ContainsFunc(sizes, func(k int) bool { return strings.Contains(list, fmt.Sprintf("the caches of the %d pool nodes", k)) }) {
		t.Errorf("confirmation page says %q, want it to name the caches of the pool's %v nodes", list, sizes)
	}
	term = r.cluster.Raft().CurrentTerm()
	tb.submit("#confirm-delete", "delete")
	generationMoved(t, "delete", s.waitConverged().DeleteGen, before.DeleteGen, term, r)
}

// generationMoved checks that one form moved a generation from before by
// one. By two only if an election happened meanwhile: a command whose
// commit was uncertain (leadership lost, the leader silent) is sent again,
// and clearing or deleting twice within one request is harmless.
func generationMoved(t *testing.T, what string, got, before, term uint64, r *replica) {
	t.Helper()
	switch now := r.cluster.Raft().CurrentTerm(); {
	case got == before+1:
	case got == before+2 && now > term:
		t.Logf("%s generation moved by 2: sent again across an election (term %d -> %d)", what, term, now)
	default:
		t.Errorf("%s generation: got %d, want %d (term %d -> %d)", what, got, before+1, term, now)
	}
}
