// Package testcluster runs a memcache cluster inside a test: manager
// replicas, cache nodes and frontends started through package role, as
// main starts them, on 127.0.0.1 with free ports and t.TempDir(); every
// system test starts its cluster here.
//
// Everything waits on conditions with generous deadlines (a busy 2-core
// machine running the race detector is slow, not broken), and writes retry
// across a Raft election as a client would.
package testcluster

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/memcache/memcache/auth"
	"github.com/memcache/memcache/cluster"
	"github.com/memcache/memcache/frontend"
	"github.com/memcache/memcache/fsm"
	"github.com/memcache/memcache/gossip"
	"github.com/memcache/memcache/internal/role"
	"github.com/memcache/memcache/internal/testbin"
	"github.com/memcache/memcache/internal/waitfor"
	"github.com/memcache/memcache/node"
	"github.com/memcache/memcache/pki"
	"github.com/memcache/memcache/scaler"
)

// Secrets every test cluster uses.
const (
	// Secret is the cluster secret of every role.
	Secret = "test-cluster-secret"
	// Token is an admin token for Options.AdminToken.
	Token = "test-admin-token"
)

// Deadlines of the condition waits. They are generous: they bound a
// failure, not a success, which comes as soon as the condition holds.
const (
	// Wait bounds the wait for one ordinary condition (a replica applying a
	// change, a node following the pool).
	Wait = 30 * time.Second
	// StartWait bounds the wait for a cluster to come up (a leader, the
	// first pool nodes, node processes started and alive in gossip).
	StartWait = 60 * time.Second
)

// Logger discards logs unless MEMCACHE_TEST_LOG is set, then logs at debug
// level to stderr.
func Logger() *slog.Logger {
	if os.Getenv("MEMCACHE_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// Options shape a test cluster.
type Options struct {
	// Managers is the number of manager replicas, which bootstrap one Raft
	// group. If zero, 1.
	Managers int
	// Nodes is the number of in-process cache nodes (role.StartNode), named
	// n1, n2, ...; the managers use the static provisioner.
	Nodes int
	// LocalNodes makes the managers share one local provisioner that starts
	// real `memcache node` processes (the binary from testbin) instead.
	LocalNodes bool
	// NodeArgs are extra flags for the local provisioner's nodes.
	NodeArgs []string
	// AdminToken is the managers' admin token. If blank, the admin API is open.
	AdminToken string
	// InitialNodes is the pool size the leader creates. If zero, 1.
	InitialNodes int
	// DeadGrace is how long a pool node may be missing from gossip before its
	// regions are reassigned. If zero, 10 s.
	DeadGrace time.Duration
	// ScalerInterval is the auto-scaler's tick. If zero, 1 minute.
	ScalerInterval time.Duration
	// ScrapeInterval is the embedded metrics' scrape period. If zero, 5 s.
	ScrapeInterval time.Duration
	// SampleInterval is the in-process nodes' sampling period. If zero, 5 s.
	SampleInterval time.Duration
	// WatchWait is how long the in-process nodes' watch requests block. If
	// zero, 1 s.
	WatchWait time.Duration
}

// Cluster is a running test cluster. Its roles close when the test ends:
// frontends first, then nodes, then managers and the local provisioner.
type Cluster struct {
	t    testing.TB
	opts Options

	// Managers are the replicas, in start order; Manager i is named m<i+1>.
	Managers []*role.Manager
	// Nodes are the in-process cache nodes, in start order.
	Nodes []*role.Node
	// Frontends are the frontends started with StartFrontend.
	Frontends []*role.Frontend

	// TLSDir holds the cluster's CA and a certificate per role (named
	// after it) for 127.0.0.1: every member talks mutual TLS.
	TLSDir string

	local   *role.SharedLocal
	stopped map[*role.Manager]bool // replicas closed by StopManager
}

// TLS returns the cluster's certificate for role r.
func (c *Cluster) TLS(r pki.Role) *pki.TLS {
	c.t.Helper()
	t, err := pki.Dir(c.TLSDir, string(r))
	if err != nil {
		c.t.Fatal(err)
	}
	return t
}

// NodeClient talks to the cache nodes as a frontend does: with the
// frontend's certificate and the cluster secret.
func (c *Cluster) NodeClient() *node.Client {
	return node.NewClient(node.ClientConfig{Secret: Secret, TLS: c.TLS(pki.RoleFrontend), Timeout: Wait})
}

// HTTPClient calls the cluster's internal routes as a frontend does.
func (c *Cluster) HTTPClient() *http.Client { return c.ClientAs(pki.RoleFrontend) }

// ClientAs calls the cluster's internal routes with role r's certificate
// and the cluster secret.
func (c *Cluster) ClientAs(r pki.Role) *http.Client {
	return &http.Client{Transport: &auth.Transport{Secret: Secret, Base: pki.Transport(c.TLS(r))}, Timeout: Wait}
}

// Start starts a cluster and waits until a leader has created the pool and
// every replica holds it, with every member alive in gossip and every
// in-process member following the pool's region map.
func Start(t testing.TB, opts Options) *Cluster {
	t.Helper()
	if opts.Managers <= 0 {
		opts.Managers = 1
	}
	if opts.InitialNodes <= 0 {
		opts.InitialNodes = 1
	}
	if opts.WatchWait <= 0 {
		opts.WatchWait = time.Second
	}
	c := &Cluster{t: t, opts: opts, stopped: map[*role.Manager]bool{}, TLSDir: t.TempDir()}
	if err := pki.Ensure(c.TLSDir, []string{"127.0.0.1", "::1", "localhost"}, pki.RoleManager, pki.RoleNode, pki.RoleFrontend); err != nil {
		t.Fatal(err)
	}
	log := Logger()
	prov := role.Static()
	var logDir string
	if opts.LocalNodes {
		logDir = t.TempDir()
		c.local = role.NewSharedLocal(scaler.LocalConfig{
			Binary: testbin.Path(t), GlobalArgs: []string{"--log-level", "debug"}, ExtraArgs: opts.NodeArgs,
			LogDir: logDir, Env: c.nodeEnv(),
		}, log)
		prov = c.local.Provisioner()
	}
	// Registered first, so it runs last: managers close after the nodes
	// and frontends have left.
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), Wait)
		defer cancel()
		for i := len(c.Managers) - 1; i >= 0; i-- {
			c.Managers[i].Close(ctx)
		}
		if c.local != nil {
			c.local.Close()
			if t.Failed() {
				logs, _ := filepath.Glob(filepath.Join(logDir, "*.log"))
				for _, f := range logs {
					b, _ := os.ReadFile(f)
					t.Logf("%s:\n%s", filepath.Base(f), LastLines(string(b), 20))
				}
			}
		}
	})
	for i := range opts.Managers {
		name := fmt.Sprintf("m%d", i+1)
		var join []string
		if i > 0 {
			join = []string{c.Managers[0].Gossip().Addr()}
		}
		m, err := role.StartManager(context.Background(), role.ManagerConfig{
			Name: name, DataDir: t.TempDir(),
			Gossip:          gossip.Config{Join: join, Fast: true},
			BootstrapExpect: opts.Managers, Timing: cluster.FastTiming(),
			Secret: Secret, TLS: c.TLS(pki.RoleManager), AdminToken: opts.AdminToken, Provisioner: prov,
			InitialNodes: opts.InitialNodes, DeadGrace: opts.DeadGrace,
			ScalerInterval: opts.ScalerInterval, ScrapeInterval: opts.ScrapeInterval,
		}, log.With("replica", name))
		if err != nil {
			t.Fatal(err)
		}
		c.Managers = append(c.Managers, m)
	}
	for i := range opts.Nodes {
		c.StartNode(fmt.Sprintf("n%d", i+1))
	}
	c.WaitPool(opts.InitialNodes, StartWait)
	c.WaitNodesFollow()
	c.waitNodesAlive()
	return c
}

// waitNodesAlive waits until every replica's gossip sees every in-process
// node alive, so a test may resize the pool up to all of them at once.
func (c *Cluster) waitNodesAlive() {
	c.t.Helper()
	waitfor.True(c.t, StartWait, "every node alive in every replica's gossip", func() bool {
		for _, m := range c.running() {
			alive := map[string]bool{}
			for _, mb := range m.Gossip().Members() {
				alive[mb.Meta.ID] = mb.Meta.Role == gossip.RoleNode && mb.State == gossip.StateAlive
			}
			for _, n := range c.Nodes {
				if !alive[n.Name()] {
					return false
				}
			}
		}
		return true
	})
}

// nodeEnv is the environment of the local provisioner's node processes:
// the cluster secret and the node certificate.
func (c *Cluster) nodeEnv() []string {
	cert, key := pki.CertFiles(c.TLSDir, string(pki.RoleNode))
	return []string{"MEMCACHE_CLUSTER_SECRET=" + Secret, "MEMCACHE_TLS_CA=" + filepath.Join(c.TLSDir, pki.CAFile),
		"MEMCACHE_TLS_CERT=" + cert, "MEMCACHE_TLS_KEY=" + key}
}

// StartNode starts an in-process cache node that joins the cluster's
// gossip; it closes before the managers when the test ends.
func (c *Cluster) StartNode(name string) *role.Node {
	c.t.Helper()
	n, err := role.StartNode(context.Background(), role.NodeConfig{
		Name: name, Secret: Secret, TLS: c.TLS(pki.RoleNode), SampleInterval: c.opts.SampleInterval, WatchWait: c.opts.WatchWait,
		Gossip: gossip.Config{Join: []string{c.Managers[0].Gossip().Addr()}, Fast: true},
	}, Logger())
	if err != nil {
		c.t.Fatal(err)
	}
	c.Nodes = append(c.Nodes, n)
	c.t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), Wait)
		defer cancel()
		n.Close(ctx)
	})
	return n
}

// StartFrontend starts a frontend from cfg with the cluster's blanks filled
// in: Name "fe", the cluster secret, gossip joining the first replica, an
// SQLite key index and a blob directory in t.TempDir(), 1 MB uploads. It
// closes first when the test ends.
func (c *Cluster) StartFrontend(cfg role.FrontendConfig) *role.Frontend {
	c.t.Helper()
	if cfg.Name == "" {
		cfg.Name = "fe"
	}
	if cfg.Secret == "" {
		cfg.Secret = Secret
	}
	if cfg.TLS == nil {
		cfg.TLS = c.TLS(pki.RoleFrontend)
	}
	if len(cfg.Gossip.Join) == 0 {
		cfg.Gossip.Join = []string{c.Managers[0].Gossip().Addr()}
	}
	cfg.Gossip.Fast = true
	if cfg.DB == "" {
		cfg.DB = filepath.Join(c.t.TempDir(), "keys.db")
	}
	if cfg.BlobDir == "" && cfg.S3.Bucket == "" {
		cfg.BlobDir = filepath.Join(c.t.TempDir(), "blobs")
	}
	if cfg.MaxUpload == 0 {
		cfg.MaxUpload = 1 << 20
	}
	if cfg.WatchWait == 0 {
		cfg.WatchWait = c.opts.WatchWait
	}
	fe, err := role.StartFrontend(context.Background(), cfg, Logger().With("id", cfg.Name))
	if err != nil {
		c.t.Fatal(err)
	}
	c.Frontends = append(c.Frontends, fe)
	c.t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), Wait)
		defer cancel()
		fe.Close(ctx)
	})
	return fe
}

// Local returns the shared local provisioner (with Options.LocalNodes), or nil.
func (c *Cluster) Local() *scaler.Local {
	if c.local == nil {
		return nil
	}
	return c.local.Local()
}

// running returns the replicas not stopped by StopManager.
func (c *Cluster) running() []*role.Manager {
	var ms []*role.Manager
	for _, m := range c.Managers {
		if !c.stopped[m] {
			ms = append(ms, m)
		}
	}
	return ms
}

// StopManager closes replica m (as a crash would, to the others: it does
// not leave the Raft configuration); the helpers then skip it.
func (c *Cluster) StopManager(m *role.Manager) {
	c.t.Helper()
	c.stopped[m] = true
	ctx, cancel := context.WithTimeout(context.Background(), Wait)
	defer cancel()
	if err := m.Close(ctx); err != nil {
		c.t.Logf("closing %s: %v", m.Name(), err)
	}
}

// Leader returns the running replica that leads at this instant, or nil.
func (c *Cluster) Leader() *role.Manager {
	for _, m := range c.running() {
		if m.Cluster().IsLeader() {
			return m
		}
	}
	return nil
}

// WaitLeader waits for a running replica that leads and returns it.
func (c *Cluster) WaitLeader() *role.Manager {
	c.t.Helper()
	var l *role.Manager
	waitfor.True(c.t, Wait, "a leader", func() bool {
		l = c.Leader()
		return l != nil
	})
	return l
}

// Follower returns a running replica that does not lead (once there is a
// leader), or fails the test if there is none.
func (c *Cluster) Follower() *role.Manager {
	c.t.Helper()
	l := c.WaitLeader()
	for _, m := range c.running() {
		if m != l {
			return m
		}
	}
	c.t.Fatal("no follower: the cluster has one running replica")
	return nil
}

// State returns the leader's state.
func (c *Cluster) State() fsm.State {
	c.t.Helper()
	return c.WaitLeader().Cluster().State()
}

// WaitConverged waits until every running replica has applied the
// leader's state, and returns it.
func (c *Cluster) WaitConverged() fsm.State {
	c.t.Helper()
	var st fsm.State
	waitfor.True(c.t, Wait, "every replica to apply the leader's state", func() bool {
		l := c.Leader()
		if l == nil {
			return false
		}
		st = l.Cluster().State()
		for _, m := range c.running() {
			if m.Cluster().State().Index != st.Index {
				return false
			}
		}
		return true
	})
	return st
}

// WaitPool waits until there is a leader, every running replica holds a
// pool of n members, and every member is alive in gossip; it returns the
// leader's state.
func (c *Cluster) WaitPool(n int, timeout time.Duration) fsm.State {
	c.t.Helper()
	var st fsm.State
	waitfor.True(c.t, timeout, fmt.Sprintf("a leader and a pool of %d live nodes on every replica", n), func() bool {
		l := c.Leader()
		if l == nil {
			return false
		}
		st = l.Cluster().State()
		if len(st.Members) != n {
			return false
		}
		for _, m := range c.running() {
			if len(m.Cluster().State().Members) != n {
				return false
			}
		}
		alive := map[string]bool{}
		for _, g := range l.Gossip().Members() {
			alive[g.Meta.ID] = g.Meta.Role == gossip.RoleNode && g.State == gossip.StateAlive
		}
		for _, m := range st.Members {
			if !alive[m.ID] {
				return false
			}
		}
		return true
	})
	return st
}

// Node returns the in-process node named id, or fails the test.
func (c *Cluster) Node(id string) *role.Node {
	c.t.Helper()
	for _, n := range c.Nodes {
		if n.Name() == id {
			return n
		}
	}
	c.t.Fatalf("no in-process node %s", id)
	return nil
}

// WaitNodesFollow waits until every in-process pool member holds the
// pool's region map (nodes started by the local provisioner are not
// checked).
func (c *Cluster) WaitNodesFollow() {
	c.t.Helper()
	if len(c.Nodes) == 0 {
		return
	}
	waitfor.True(c.t, Wait, "the pool's nodes to hold its region map and serve their regions", func() bool {
		st := c.State()
		for _, m := range st.Members {
			n := c.nodeNamed(m.ID)
			// A region moving to a node is served there once its previous
			// owner holds the map too (node/handoff.go).
			if n == nil || n.Node().Epoch() != st.Epoch || len(n.Node().Handoffs().Waiting) > 0 {
				return false
			}
		}
		return true
	})
}

func (c *Cluster) nodeNamed(id string) *role.Node {
	for _, n := range c.Nodes {
		if n.Name() == id {
			return n
		}
	}
	return nil
}

// Call sends one request carrying the cluster secret and Token (the admin
// token of a cluster started with Options.AdminToken = Token) and, for a 2xx answer
// with a body, decodes its JSON into out (if not nil). It returns the
// status, failing the test if the request cannot be sent.
func Call(t testing.TB, method, url string, body []byte, out any) int {
	t.Helper()
	code, _, err := call(method, url, body, out, map[string]string{auth.Header: Secret, "Authorization": "Bearer " + Token})
	if err != nil {
		t.Fatal(err)
	}
	return code
}

// Call is the package's Call with the cluster's client certificate, for
// the cluster listeners (nodes, the managers' and frontends' cluster URLs).
func (c *Cluster) Call(t testing.TB, method, url string, body []byte, out any) int {
	t.Helper()
	code, _, err := callWith(c.HTTPClient(), method, url, body, out, map[string]string{auth.Header: Secret, "Authorization": "Bearer " + Token})
	if err != nil {
		t.Fatal(err)
	}
	return code
}

// CallToken is Call with another admin token.
func CallToken(t testing.TB, token, method, url string, body []byte, out any) int {
	t.Helper()
	code, _, err := call(method, url, body, out, map[string]string{auth.Header: Secret, "Authorization": "Bearer " + token})
	if err != nil {
		t.Fatal(err)
	}
	return code
}

// Write is Call retried as a client would retry a write: while the answer
// is 503 Service Unavailable (no leader during an election) or the request
// cannot be sent, until Wait has passed. It returns the last status.
func Write(t testing.TB, method, url string, body []byte, out any) int {
	t.Helper()
	return retry(t, method, url, body, out, map[string]string{auth.Header: Secret, "Authorization": "Bearer " + Token})
}

// WriteToken is Write with an admin token as a bearer token (the
// managers' /v1 API requires it; `memcache up` makes its own).
func WriteToken(t testing.TB, token, method, url string, body []byte, out any) int {
	t.Helper()
	return retry(t, method, url, body, out, map[string]string{"Authorization": "Bearer " + token})
}

// Admin posts to a tester admin endpoint (base+path, such as
// /api/configure_cache?numNodes=2) with the admin token as a bearer token
// (none if token is blank), retrying while the answer is 503 as Write does.
// It returns the status and the decoded JSON body (an error's too).
func Admin(t testing.TB, base, path, token string) (int, map[string]any) {
	t.Helper()
	h := map[string]string{}
	if token != "" {
		h["Authorization"] = "Bearer " + token
	}
	var out map[string]any
	code := retry(t, http.MethodPost, base+path, nil, &out, h)
	return code, out
}

func retry(t testing.TB, method, url string, body []byte, out any, header map[string]string) int {
	t.Helper()
	var (
		code int
		err  error
	)
	waitfor.True(t, Wait, fmt.Sprintf("%s %s to be answered by other than a retryable 503", method, url), func() bool {
		var hdr http.Header
		code, hdr, err = call(method, url, body, out, header)
		if err != nil && code != 0 {
			t.Fatal(err) // sent and answered, but the answer is malformed
		}
		// A 503 that says the command is committed is an answer: sending it
		// again would commit it again.
		return err == nil && (code != http.StatusServiceUnavailable || hdr.Get(frontend.HeaderCommitted) != "")
	})
	return code
}

// call sends one request; out receives the JSON body of a 2xx answer, or
// of any answer if out is a *map[string]any (to read tester errors).
func call(method, url string, body []byte, out any, header map[string]string) (int, http.Header, error) {
	return callWith(&http.Client{Timeout: Wait}, method, url, body, out, header)
}

func callWith(client *http.Client, method, url string, body []byte, out any, header map[string]string) (int, http.Header, error) {
	req, err := http.NewRequest(method, url, bytes.NewReader(body))
	if err != nil {
		return 0, nil, err
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, nil, err
	}
	_, anyStatus := out.(*map[string]any)
	if out != nil && len(b) > 0 && (resp.StatusCode < 300 || anyStatus) {
		if err := json.Unmarshal(b, out); err != nil && resp.StatusCode < 300 {
			return resp.StatusCode, resp.Header, fmt.Errorf("%s %s: %v in %s", method, url, err, b)
		}
	}
	return resp.StatusCode, resp.Header, nil
}

// LastLines returns the last n lines of s, for a failure message.
func LastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
