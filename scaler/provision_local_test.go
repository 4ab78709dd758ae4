package scaler

import (
	"context"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/memcache/memcache/gossip"
	"github.com/memcache/memcache/internal/testbin"
)

// newLocal returns a Local running the test binary, joined to seed; Close
// runs at cleanup.
func newTestLocal(t *testing.T, cfg LocalConfig, members Members) *Local {
	t.Helper()
	if cfg.Binary == "" {
		cfg.Binary = testbin.Path(t)
	}
	cfg.GlobalArgs = append(cfg.GlobalArgs, "--log-level", "warn")
	// The provisioner's own behaviour is under test, not the nodes' TLS
	// (testcluster's local nodes run with certificates).
	cfg.Env = append(cfg.Env, "MEMCACHE_INSECURE=true")
	l, err := NewLocal(cfg, members, provisionLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// healthy reports whether GET <url>/healthz answers 200.
func nodeHealthy(url string) bool {
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get(url + "/healthz")
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

func nodeIDs(nodes []Node) []string {
	out := make([]string, 0, len(nodes))
	for _, n := range nodes {
		out = append(out, n.ID)
	}
	return out
}

func TestLocal(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*provisionWait)
	defer cancel()
	mgr := startGossipMember(t, "mgr", gossip.RoleManager)
	l := newTestLocal(t, LocalConfig{Join: []string{mgr.Addr()}, LogDir: t.TempDir()}, mgr)

	// Three new processes.
	nodes, err := l.Acquire(ctx, 3, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(nodes) != 3 {
		t.Fatalf("Acquire(3) returned %d nodes, want 3", len(nodes))
	}
	started := nodeIDs(nodes)
	slices.Sort(started)
	if got := l.Started(); !reflect.DeepEqual(got, started) {
		t.Fatalf("Started() = %v, want %v", got, started)
	}
	for _, n := range nodes {
		if !strings.HasPrefix(n.ID, "node-") || len(n.ID) != len("node-")+8 {
			t.Errorf("id %q, want node-<8 hex digits>", n.ID)
		}
		if !nodeHealthy(n.HTTP) {
			t.Errorf("node %s: GET %s/healthz did not answer 200", n.ID, n.HTTP)
		}
		if !hasAlive(mgr.Members(), n.ID, gossip.RoleNode) {
			t.Errorf("node %s is not an alive node member in gossip", n.ID)
		}
		if _, err := os.Stat(filepath.Join(l.cfg.LogDir, n.ID+".log")); err != nil {
			t.Errorf("node %s: log file: %v", n.ID, err)
		}
	}

	// Releasing one stops it; it leaves gossip.
	gone, pool := nodes[0], nodes[1:]
	if err := l.Release(ctx, []string{gone.ID, "unknown"}); err != nil {
		t.Fatal(err)
	}
	if got, want := l.Started(), nodeIDs(pool); !reflect.DeepEqual(got, sortedIDs(want)) {
		t.Fatalf("Started() after Release = %v, want %v", got, sortedIDs(want))
	}
	if nodeHealthy(gone.HTTP) {
		t.Errorf("released node %s still answers /healthz", gone.ID)
	}
	waitUntil(t, "the released node to leave gossip", func() bool { return !hasAlive(mgr.Members(), gone.ID, gossip.RoleNode) })

	// An idle node started elsewhere is reused, not a new process.
	other := newTestLocal(t, LocalConfig{Join: []string{mgr.Addr()}, IDPrefix: "ext", LogDir: t.TempDir()}, mgr)
	ext, err := other.Acquire(ctx, 1, nodeIDs(pool))
	if err != nil {
		t.Fatal(err)
	}
	if len(ext) != 1 || !strings.HasPrefix(ext[0].ID, "ext-") {
		t.Fatalf("other.Acquire(1) = %v, want one new ext- node", ext)
	}
	got, err := l.Acquire(ctx, 1, nodeIDs(pool))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, ext) {
		t.Fatalf("Acquire(1) with an idle node = %v, want the idle %v", got, ext)
	}
	if got, want := l.Started(), nodeIDs(pool); !reflect.DeepEqual(got, sortedIDs(want)) {
		t.Fatalf("Started() after reusing an idle node = %v, want %v (nothing new)", got, sortedIDs(want))
	}
	// Releasing a node it did not start leaves it running.
	if err := l.Release(ctx, nodeIDs(ext)); err != nil {
		t.Fatal(err)
	}
	if !nodeHealthy(ext[0].HTTP) || !slices.Equal(other.Started(), nodeIDs(ext)) {
		t.Fatalf("releasing a node Local did not start stopped it")
	}

	// Close stops everything each provisioner started.
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if got := l.Started(); len(got) != 0 {
		t.Fatalf("Started() after Close = %v, want none", got)
	}
	for _, n := range pool {
		if nodeHealthy(n.HTTP) {
			t.Errorf("node %s still answers /healthz after Close", n.ID)
		}
	}
	if _, err := l.Acquire(ctx, 1, nil); !errors.Is(err, ErrClosed) {
		t.Errorf("Acquire after Close: err = %v, want ErrClosed", err)
	}
	if err := other.Close(); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "no node members left in gossip", func() bool {
		for _, m := range mgr.Members() {
			if m.Meta.Role == gossip.RoleNode {
				return false
			}
		}
		return true
	})
}

func sortedIDs(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}

// TestLocalStartFails checks that a failed Acquire reports why, quickly,
// and leaves nothing running.
func TestLocalStartFails(t *testing.T) {
	noNodes := staticView{} // nothing ever joins this view
	tests := []struct {
		name     string
		cfg      LocalConfig
		ctx      time.Duration // Acquire's context timeout, if set
		wantText string
	}{
		{
			name:     "binary exits at once",
			cfg:      LocalConfig{Binary: "/bin/false"},
			wantText: "exited before joining gossip: exit status 1",
		},
		{
			name:     "node rejects its flags, log in LogDir",
			cfg:      LocalConfig{ExtraArgs: []string{"--policy", "bogus"}, LogDir: "dir"},
			wantText: `policy "bogus" is not LRU or RR`,
		},
		{
			name:     "node rejects its flags, no LogDir",
			cfg:      LocalConfig{ExtraArgs: []string{"--policy", "bogus"}},
			wantText: `policy "bogus" is not LRU or RR`,
		},
		{
			name:     "node never appears in gossip",
			cfg:      LocalConfig{StartTimeout: 500 * time.Millisecond},
			wantText: "not alive in gossip after 500ms",
		},
		{
			name:     "context ends",
			ctx:      500 * time.Millisecond,
			wantText: context.DeadlineExceeded.Error(),
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.cfg.Join = []string{"127.0.0.1:1"}
			if tc.cfg.LogDir != "" {
				tc.cfg.LogDir = t.TempDir()
			}
			l := newTestLocal(t, tc.cfg, noNodes)
			ctx := context.Background()
			if tc.ctx > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, tc.ctx)
				defer cancel()
			}
			start := time.Now()
			nodes, err := l.Acquire(ctx, 2, nil)
			if !errors.Is(err, ErrNoCapacity) {
				t.Fatalf("Acquire = %v, %v; want ErrNoCapacity", nodes, err)
			}
			t.Logf("Acquire error: %v", err)
			if !strings.Contains(err.Error(), tc.wantText) {
				t.Errorf("error %q does not contain %q", err, tc.wantText)
			}
			if d := time.Since(start); d > provisionWait/2 {
				t.Errorf("Acquire took %v, want a quick failure", d)
			}
			if got := l.Started(); len(got) != 0 {
				t.Errorf("Started() after a failed Acquire = %v, want none", got)
			}
		})
	}
}

// TestLocalCloseDuringAcquire checks that Close aborts a pending Acquire
// and stops what it started.
func TestLocalCloseDuringAcquire(t *testing.T) {
	l := newTestLocal(t, LocalConfig{Join: []string{"127.0.0.1:1"}}, staticView{})
	errc := make(chan error, 1)
	go func() {
		_, err := l.Acquire(context.Background(), 1, nil)
		errc <- err
	}()
	waitUntil(t, "a node process to start", func() bool { return len(l.Started()) == 1 })
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; !errors.Is(err, ErrClosed) {
		t.Fatalf("pending Acquire returned %v, want ErrClosed", err)
	}
	if got := l.Started(); len(got) != 0 {
		t.Fatalf("Started() after Close = %v, want none", got)
	}
}

func TestNewLocalConfig(t *testing.T) {
	ok := LocalConfig{Binary: testbin.Path(t), Join: []string{"127.0.0.1:1"}}
	tests := []struct {
		name   string
		modify func(*LocalConfig)
		want   string // substring of the error; "" for success
	}{
		{"defaults", func(*LocalConfig) {}, ""},
		{"no join", func(c *LocalConfig) { c.Join = nil }, "Join is empty"},
		{"bad join", func(c *LocalConfig) { c.Join = []string{"nohost"} }, "Join"},
		{"missing binary", func(c *LocalConfig) { c.Binary = "/nonexistent/memcache" }, "node binary"},
		{"bad key", func(c *LocalConfig) { c.GossipKey = "!!" }, "not base64"},
		{"short key", func(c *LocalConfig) { c.GossipKey = "AAAA" }, "3 bytes"},
		{"host name", func(c *LocalConfig) { c.Host = "localhost" }, "not an IP"},
		{"negative timeout", func(c *LocalConfig) { c.StartTimeout = -time.Second }, "negative"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := ok
			tc.modify(&cfg)
			l, err := NewLocal(cfg, staticView{}, nil)
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				defer l.Close()
				if l.cfg.IDPrefix != "node" || l.cfg.Host != "127.0.0.1" || l.cfg.StartTimeout != 30*time.Second {
					t.Errorf("defaults: got prefix %q host %q timeout %v, want node 127.0.0.1 30s",
						l.cfg.IDPrefix, l.cfg.Host, l.cfg.StartTimeout)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("NewLocal err = %v, want one containing %q", err, tc.want)
			}
		})
	}
}
