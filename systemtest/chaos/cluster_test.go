package chaos

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/memcache/memcache/auth"
	"github.com/memcache/memcache/cluster"
	"github.com/memcache/memcache/internal/netns"
	"github.com/memcache/memcache/internal/systemd"
	"github.com/memcache/memcache/internal/testbin"
	"github.com/memcache/memcache/pki"
)

// Ports of the roles: deploy/provision.sh's defaults. Every machine has its
// own address, so every role listens on its default port there.
const (
	managerHTTPPort  = 7200
	nodeHTTPPort     = 7100
	raftPort         = 7300
	managerGossip    = 7400
	frontendHTTPPort = 8080
)

// Layout of the campaign's cluster: three Raft replicas, a pool of two
// nodes out of four node machines (the static provisioner takes the spares
// when the pool grows or a node dies) and two frontends on shared stores.
const (
	numManagers  = 3
	numNodes     = 4
	initialPool  = 2
	numFrontends = 2
)

// startWait bounds the wait for the cluster to form or come back; it bounds
// a failure, not a success.
const startWait = 3 * time.Minute

// machine is one role's host: a network namespace of internal/netns, or a
// loopback address of the test's own host.
type machine struct {
	name string // m0.., n0.., fe0..
	role string // manager, node, frontend
	addr netip.Addr
	host *netns.Host // nil on loopback
	root string      // where provision.sh installed the role

	mu   sync.Mutex
	proc *netns.Process // the running process, nil while down
	runs int
}

func (m *machine) String() string { return m.name }

func (m *machine) hostPort(port int) string { return netip.AddrPortFrom(m.addr, uint16(port)).String() }

// process returns the running process, or nil.
func (m *machine) process() *netns.Process {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.proc
}

// system is the campaign's cluster.
type system struct {
	t       *testing.T
	bin     string
	dir     string
	logDir  string
	net     *netns.Network // nil on loopback
	secrets struct{ gossipKey, clusterSecret, adminToken string }
	tlsDir  string

	managers, nodes, frontends []*machine

	// client speaks to the public listeners (plain HTTP) and, with the
	// test's client certificate, to cluster listeners.
	client *http.Client
}

// newSystem provisions the machines (secrets, certificates, each role
// installed under its root by deploy/provision.sh) and starts nothing.
// useNetns chooses namespaces over loopback addresses.
func newSystem(t *testing.T, useNetns bool) *system {
	s := &system{t: t, bin: testbin.Path(t), dir: t.TempDir(), logDir: t.TempDir()}
	total := numManagers + numNodes + numFrontends
	var addrs []netip.Addr
	var hosts []*netns.Host
	if useNetns {
		s.net = netns.NewWith(t, netns.Options{Hosts: total})
		hosts = s.net.Hosts()
		for _, h := range hosts {
			addrs = append(addrs, h.Addr())
		}
	} else {
		// A /24 of 127/8 of its own, so that two runs on one machine do
		// not meet on the roles' fixed ports.
		a, _ := rand.Int(rand.Reader, big.NewInt(150))
		b, _ := rand.Int(rand.Reader, big.NewInt(250))
		for i := range total {
			addrs = append(addrs, netip.AddrFrom4([4]byte{127, byte(100 + a.Int64()), byte(1 + b.Int64()), byte(10 + i)}))
		}
	}
	mk := func(i int, name, role string) *machine {
		m := &machine{name: name, role: role, addr: addrs[i], root: filepath.Join(s.dir, "hosts", name)}
		if hosts != nil {
			m.host = hosts[i]
		}
		return m
	}
	i := 0
	for k := range numManagers {
		s.managers = append(s.managers, mk(i, fmt.Sprintf("m%d", k), "manager"))
		i++
	}
	for k := range numNodes {
		s.nodes = append(s.nodes, mk(i, fmt.Sprintf("n%d", k), "node"))
		i++
	}
	for k := range numFrontends {
		s.frontends = append(s.frontends, mk(i, fmt.Sprintf("fe%d", k), "frontend"))
		i++
	}

	secretsDir := filepath.Join(s.dir, "secrets")
	s.tlsDir = filepath.Join(s.dir, "tls")
	s.provision("secrets", nil)
	var tlsHosts []string
	for _, m := range s.all() {
		tlsHosts = append(tlsHosts, fmt.Sprintf("%s:%s:%s", m.name, m.role, m.addr))
	}
	s.provision("tls", []string{"TLS_HOSTS=" + strings.Join(tlsHosts, " ")})
	if err := pki.CreateCert(s.tlsDir, pki.CertRequest{Name: "chaos-client", Role: pki.RoleClient}); err != nil {
		t.Fatal(err)
	}
	cert, err := pki.Dir(s.tlsDir, "chaos-client")
	if err != nil {
		t.Fatal(err)
	}
	tr := pki.Transport(cert)
	tr.MaxIdleConnsPerHost = 64
	s.client = &http.Client{Transport: tr, Timeout: 10 * time.Second}
	read := func(name string) string {
		b, err := os.ReadFile(filepath.Join(secretsDir, name))
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(b))
	}
	s.secrets.gossipKey, s.secrets.clusterSecret, s.secrets.adminToken = read("gossip-key"), read("cluster-secret"), read("admin-token")

	// The frontends share their stores, as two frontends on one
	// PostgreSQL and one bucket do: one SQLite file (WAL, busy timeout)
	// and one blob directory on the machine's filesystem, which every
	// namespace sees.
	stores := filepath.Join(s.dir, "stores")
	if err := os.MkdirAll(filepath.Join(stores, "blobs"), 0o700); err != nil {
		t.Fatal(err)
	}
	for i, m := range s.managers {
		_ = i
		s.provision("manager", s.roleEnv(m, "MEMCACHE_BOOTSTRAP_EXPECT="+fmt.Sprint(numManagers),
			"MEMCACHE_PROVISIONER=static", "MEMCACHE_INITIAL_NODES="+fmt.Sprint(initialPool), "MEMCACHE_DEAD_GRACE=3s"))
	}
	for _, m := range s.nodes {
		s.provision("node", s.roleEnv(m))
	}
	for _, m := range s.frontends {
		s.provision("frontend", s.roleEnv(m, "MEMCACHE_DB="+filepath.Join(stores, "keys.db"),
			"MEMCACHE_BLOB_DIR="+filepath.Join(stores, "blobs")))
	}
	return s
}

func (s *system) all() []*machine {
	return slices.Concat(s.managers, s.nodes, s.frontends)
}

// provision runs deploy/provision.sh step with env.
func (s *system) provision(step string, env []string) {
	s.t.Helper()
	script, err := filepath.Abs(filepath.Join("..", "..", "deploy", "provision.sh"))
	if err != nil {
		s.t.Fatal(err)
	}
	cmd := exec.Command("bash", script, step)
	env0 := slices.DeleteFunc(os.Environ(), func(kv string) bool { return strings.HasPrefix(kv, "AWS_") })
	cmd.Env = append(env0, "MEMCACHE_BIN="+s.bin, "SECRETS_DIR="+filepath.Join(s.dir, "secrets"), "TLS_DIR="+s.tlsDir)
	cmd.Env = append(cmd.Env, env...)
	if out, err := cmd.CombinedOutput(); err != nil {
		s.t.Fatalf("provision.sh %s: %v\n%s", step, err, out)
	}
}

// roleEnv is what provision.sh is told for machine m: its address, name
// and certificate, and the managers' gossip to join; extra overrides.
func (s *system) roleEnv(m *machine, extra ...string) []string {
	var join []string
	for _, mg := range s.managers {
		join = append(join, mg.hostPort(managerGossip))
	}
	return append([]string{"PREFIX=" + m.root, "ADDR=" + m.addr.String(), "TLS_NAME=" + m.name,
		"MEMCACHE_NAME=" + m.name, "MEMCACHE_JOIN=" + strings.Join(join, ","), "MEMCACHE_LOG_LEVEL=info"}, extra...)
}

// start starts m's role as its unit would, on its machine.
func (s *system) start(m *machine) {
	s.t.Helper()
	cmd, err := systemd.Command(m.root, "memcache-"+m.role+".service", s.bin)
	if err != nil {
		s.t.Fatal(err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.runs++
	if m.host != nil {
		in := m.host.Command(context.Background(), cmd.Path, cmd.Args[1:]...)
		in.Env, in.Dir = cmd.Env, cmd.Dir
		m.proc = m.host.StartCmd(in)
		return
	}
	m.proc = netns.Spawn(s.t, cmd, m.name+"/memcache", filepath.Join(s.logDir, fmt.Sprintf("%s-%d.log", m.name, m.runs)), 20*time.Second)
}

// kill kills m's process (SIGKILL) and waits for it to exit.
func (s *system) kill(m *machine) {
	m.mu.Lock()
	p := m.proc
	m.proc = nil
	m.mu.Unlock()
	if p != nil {
		p.Kill(s.t)
	}
}

// startAll starts every role at once (each retries its joins until its
// peers are up) and waits until the cluster serves: a leader, the pool,
// both frontends ready.
func (s *system) startAll() {
	s.t.Helper()
	for _, m := range s.all() {
		s.start(m)
	}
	s.waitServing()
}

// waitServing waits until some replica has a leader, the pool holds its
// nodes and every frontend is ready.
func (s *system) waitServing() {
	s.t.Helper()
	s.waitFor(startWait, "a Raft leader", func() error {
		_, err := s.leader()
		return err
	})
	for _, fe := range s.frontends {
		s.waitFor(startWait, fe.name+" to be ready", func() error {
			code, body, err := s.get("http://"+fe.hostPort(frontendHTTPPort)+"/readyz", nil)
			if err != nil || code != 200 {
				return fmt.Errorf("%d %v %s", code, err, body)
			}
			return nil
		})
	}
}

// leader returns the manager every answering replica names as leader.
func (s *system) leader() (*machine, error) {
	var id string
	var last []string
	for _, m := range s.managers {
		if m.process() == nil {
			continue
		}
		var st cluster.Status
		code, body, err := s.get("http://"+m.hostPort(managerHTTPPort)+"/raft/status", &st)
		if err != nil || code != 200 {
			last = append(last, fmt.Sprintf("%s: %d %v %s", m, code, err, body))
			continue
		}
		if st.Leader.ID == "" || (id != "" && st.Leader.ID != id) {
			return nil, fmt.Errorf("%s sees leader %q, others %q", m, st.Leader.ID, id)
		}
		id = st.Leader.ID
	}
	for _, m := range s.managers {
		if m.name == id {
			return m, nil
		}
	}
	return nil, fmt.Errorf("no leader: %s", strings.Join(last, "; "))
}

// waitFor polls cond until it returns nil, failing the test after timeout
// with cond's last error.
func (s *system) waitFor(timeout time.Duration, what string, cond func() error) {
	s.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("timed out after %v waiting for %s; last: %v", timeout, what, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// do sends req with the admin token and the cluster secret and decodes a
// 2xx JSON answer into out.
func (s *system) do(req *http.Request, out any) (int, []byte, error) {
	req.Header.Set(auth.Header, s.secrets.clusterSecret)
	req.Header.Set("Authorization", "Bearer "+s.secrets.adminToken)
	resp, err := s.client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return resp.StatusCode, nil, err
	}
	if out != nil && resp.StatusCode/100 == 2 {
		if err := json.Unmarshal(b, out); err != nil {
			return resp.StatusCode, b, fmt.Errorf("%s %s: %v in %s", req.Method, req.URL, err, b)
		}
	}
	return resp.StatusCode, b, nil
}

func (s *system) get(url string, out any) (int, []byte, error) {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return 0, nil, err
	}
	return s.do(req, out)
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}
