package hosts

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"io"
	"mime/multipart"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/memcache/memcache/auth"
	"github.com/memcache/memcache/cluster"
	"github.com/memcache/memcache/internal/netns"
	"github.com/memcache/memcache/internal/pool"
	"github.com/memcache/memcache/internal/testbin"
	"github.com/memcache/memcache/node"
	"github.com/memcache/memcache/region"
)

func TestMain(m *testing.M) {
	code := m.Run()
	testbin.Remove()
	os.Exit(code)
}

// Ports of the roles: the defaults of the issue-9 contract. Every host has
// its own address, so every role listens on its default port there.
const (
	managerHTTPPort    = 7200
	raftPort           = 7300
	managerGossipPort  = 7400
	nodeHTTPPort       = 7100
	nodeGossipPort     = 7946
	frontendHTTPPort   = 8080
	frontendGossipPort = 7500
)

// Deadlines of the condition waits, generous for a busy 2-core machine:
// they bound a failure, not a success.
const (
	// startWait bounds the wait for the cluster to form: processes
	// started, gossip joined, a Raft election, the pool created.
	startWait = 2 * time.Minute
	// wait bounds one ordinary condition.
	wait = 30 * time.Second
)

// Layout of the seven hosts.
const (
	numManagers = 3
	numNodes    = 2
)

// system is a cluster whose roles run as processes on their own hosts.
type system struct {
	t   *testing.T
	bin string // the memcache binary
	net *netns.Network
	dir string // data directories and secret files, one subdirectory per host

	managers []*netns.Host
	nodes    []*netns.Host
	frontend *netns.Host
	// services will run the frontend's stores (PostgreSQL, versitygw); see
	// frontendStoreArgs.
	services *netns.Host

	secrets secrets
	client  *http.Client // the test's client for every role's HTTP

	procs map[string]*netns.Process // by role name: m0.., n0.., fe
}

// secrets are the cluster's shared secrets, each also in a file the roles
// read (so that no secret shows in ps, as in a deployment).
type secrets struct {
	gossipKey, clusterSecret, adminToken             string
	gossipKeyFile, clusterSecretFile, adminTokenFile string
}

// newSystem builds the seven hosts and the secrets; it starts nothing.
func newSystem(t *testing.T) *system {
	t.Helper()
	nw := netns.New(t, numManagers+numNodes+2)
	hs := nw.Hosts()
	s := &system{
		t: t, bin: testbin.Path(t), net: nw, dir: t.TempDir(),
		managers: hs[:numManagers],
		nodes:    hs[numManagers : numManagers+numNodes],
		frontend: hs[numManagers+numNodes],
		services: hs[numManagers+numNodes+1],
		client:   &http.Client{Timeout: 10 * time.Second},
		procs:    map[string]*netns.Process{},
	}
	s.secrets = s.writeSecrets()
	for i, h := range s.managers {
		t.Logf("manager m%d on %s (%s)", i, h, h.Addr())
	}
	for i, h := range s.nodes {
		t.Logf("node n%d on %s (%s)", i, h, h.Addr())
	}
	t.Logf("frontend on %s (%s), services on %s (%s)", s.frontend, s.frontend.Addr(), s.services, s.services.Addr())
	return s
}

func (s *system) writeSecrets() secrets {
	key := make([]byte, 32)
	rand.Read(key)
	sec := secrets{
		gossipKey:     base64.StdEncoding.EncodeToString(key),
		clusterSecret: randomHex(24),
		adminToken:    randomHex(24),
	}
	dir := filepath.Join(s.dir, "secrets")
	if err := os.Mkdir(dir, 0o700); err != nil {
		s.t.Fatal(err)
	}
	write := func(name, value string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(value+"\n"), 0o600); err != nil {
			s.t.Fatal(err)
		}
		return p
	}
	sec.gossipKeyFile = write("gossip-key", sec.gossipKey)
	sec.clusterSecretFile = write("cluster-secret", sec.clusterSecret)
	sec.adminTokenFile = write("admin-token", sec.adminToken)
	return sec
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// dataDir returns a fresh directory for the role on host h.
func (s *system) dataDir(h *netns.Host, role string) string {
	d := filepath.Join(s.dir, h.Name(), role)
	if err := os.MkdirAll(d, 0o700); err != nil {
		s.t.Fatal(err)
	}
	return d
}

// managerGossip returns the managers' gossip addresses, every role's --join.
func (s *system) managerGossip() []string {
	var addrs []string
	for _, h := range s.managers {
		addrs = append(addrs, h.HostPort(managerGossipPort))
	}
	return addrs
}

// The flags of each role are built in one function per role, so that the
// TLS listeners of issue 9 (--cluster-addr, --advertise-cluster,
// --tls-ca/--tls-cert/--tls-key or --insecure) are a change here only.

// globalArgs go before the role's subcommand.
func globalArgs() []string { return []string{"--log-level", "info"} }

// clusterArgs are the flags every role shares: joining the managers' gossip
// and the shared secrets.
func (s *system) clusterArgs() []string {
	return []string{
		"--join", strings.Join(s.managerGossip(), ","),
		"--gossip-key-file", s.secrets.gossipKeyFile,
		"--cluster-secret-file", s.secrets.clusterSecretFile,
	}
}

// managerArgs are manager i's flags: every listener on its host's address,
// advertised as such; the three replicas bootstrap one Raft group and pool
// the nodes that join by gossip.
func (s *system) managerArgs(i int) []string {
	h := s.managers[i]
	args := append(globalArgs(), "manager",
		"--name", fmt.Sprintf("m%d", i),
		"--data-dir", s.dataDir(h, "manager"),
		"--http-addr", h.HostPort(managerHTTPPort),
		"--advertise-http", "http://"+h.HostPort(managerHTTPPort),
		"--raft-addr", h.HostPort(raftPort),
		"--raft-advertise", h.HostPort(raftPort),
		"--gossip-addr", h.HostPort(managerGossipPort),
		"--gossip-advertise", h.HostPort(managerGossipPort),
		"--bootstrap-expect", fmt.Sprint(numManagers),
		"--provisioner", "static",
		"--initial-nodes", fmt.Sprint(numNodes),
		"--admin-token-file", s.secrets.adminTokenFile,
	)
	return append(args, s.clusterArgs()...)
}

// nodeArgs are cache node i's flags.
func (s *system) nodeArgs(i int) []string {
	h := s.nodes[i]
	args := append(globalArgs(), "node",
		"--name", fmt.Sprintf("n%d", i),
		"--http-addr", h.HostPort(nodeHTTPPort),
		"--advertise-http", "http://"+h.HostPort(nodeHTTPPort),
		"--gossip-addr", h.HostPort(nodeGossipPort),
		"--gossip-advertise", h.HostPort(nodeGossipPort),
	)
	return append(args, s.clusterArgs()...)
}

// frontendArgs are the frontend's flags.
func (s *system) frontendArgs() []string {
	h := s.frontend
	args := append(globalArgs(), "frontend",
		"--name", "fe",
		"--http-addr", h.HostPort(frontendHTTPPort),
		"--advertise-http", "http://"+h.HostPort(frontendHTTPPort),
		"--gossip-addr", h.HostPort(frontendGossipPort),
		"--gossip-advertise", h.HostPort(frontendGossipPort),
	)
	args = append(args, s.clusterArgs()...)
	return append(args, s.frontendStoreArgs()...)
}

// frontendStoreArgs are the frontend's store flags.
//
// TODO(services host): start PostgreSQL and versitygw on s.services,
// listening on its bridge address (s.services.HostPort(5432), ...), wait
// for them, and return
//
//	--db postgres://...@<services>:5432/memcache?sslmode=disable
//	--s3-endpoint http://<services>:7070 --s3-bucket ... --s3-region us-east-1
//
// (with the S3 credentials in the frontend's environment), so that the
// key index and the images live on their own host as in a deployment. Until
// then the frontend keeps SQLite and a blob directory on its own host.
func (s *system) frontendStoreArgs() []string {
	d := s.dataDir(s.frontend, "frontend")
	return []string{"--db", filepath.Join(d, "keys.db"), "--blob-dir", filepath.Join(d, "blobs")}
}

// startRole starts `memcache args...` on host h as role name: the one place
// roles are started. (Later: through internal/systemd, as the deploy/ units
// start them.)
func (s *system) startRole(name string, h *netns.Host, args []string) {
	s.t.Helper()
	s.procs[name] = h.Start(s.bin, args...)
}

// start starts every role: the managers, the nodes, then the frontend, all
// at once (each retries its joins until its peers are up).
func (s *system) start() {
	s.t.Helper()
	for i, h := range s.managers {
		s.startRole(fmt.Sprintf("m%d", i), h, s.managerArgs(i))
	}
	for i, h := range s.nodes {
		s.startRole(fmt.Sprintf("n%d", i), h, s.nodeArgs(i))
	}
	s.startRole("fe", s.frontend, s.frontendArgs())
}

// waitFor polls cond every 50 ms until it returns nil, failing the test
// after timeout (with cond's last error) or as soon as a role's process
// exits (with the end of its log).
func (s *system) waitFor(timeout time.Duration, what string, cond func() error) {
	s.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		for name, p := range s.procs {
			select {
			case <-p.Exited():
				s.t.Fatalf("waiting for %s: %s (%s) exited: %v; its log ends:\n%s", what, name, p, p.Err(), lastLines(p.Log(), 30))
			default:
			}
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("timed out after %v waiting for %s; last: %v", timeout, what, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// do sends one request from the test process (in the root namespace, to a
// host's bridge address) carrying the cluster secret, and decodes a 2xx
// JSON answer into out. It returns the status, or an error if the request
// could not be sent or the answer read.
func (s *system) do(req *http.Request, out any) (int, []byte, error) {
	req.Header.Set(auth.Header, s.secrets.clusterSecret)
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

// get is do for a GET of url.
func (s *system) get(url string, out any) (int, []byte, error) {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		s.t.Fatal(err)
	}
	return s.do(req, out)
}

func managerURL(h *netns.Host) string { return "http://" + h.HostPort(managerHTTPPort) }
func nodeURL(h *netns.Host) string    { return "http://" + h.HostPort(nodeHTTPPort) }
func frontendURL(h *netns.Host) string {
	return "http://" + h.HostPort(frontendHTTPPort)
}

// waitRaft waits until every replica reports the same leader and a Raft
// configuration of the three managers, all voters, at their hosts'
// addresses. It returns the leader's status.
func (s *system) waitRaft() cluster.Status {
	s.t.Helper()
	var want []string
	for i, h := range s.managers {
		want = append(want, fmt.Sprintf("m%d=%s=Voter", i, h.HostPort(raftPort)))
	}
	var leader cluster.Status
	s.waitFor(startWait, "a leader and three voters on every replica", func() error {
		var last []string
		ok := true
		var leaderID string
		for _, h := range s.managers {
			var st cluster.Status
			code, body, err := s.get(managerURL(h)+"/raft/status", &st)
			if err != nil || code != 200 {
				last = append(last, fmt.Sprintf("%s: %d %v %s", h.Addr(), code, err, body))
				ok = false
				continue
			}
			var peers []string
			for _, p := range st.Peers {
				peers = append(peers, p.ID+"="+p.Address+"="+p.Suffrage)
			}
			slices.Sort(peers)
			last = append(last, fmt.Sprintf("%s: %s leader %q peers %v", st.ID, st.State, st.Leader.ID, peers))
			if st.Leader.ID == "" || (leaderID != "" && st.Leader.ID != leaderID) || !slices.Equal(peers, want) {
				ok = false
			}
			leaderID = st.Leader.ID
			if st.State == "Leader" {
				leader = st
			}
		}
		if !ok || leader.ID != leaderID {
			return fmt.Errorf("replicas: %s", strings.Join(last, "; "))
		}
		return nil
	})
	return leader
}

// waitPool waits until the pool holds both node hosts, as the managers
// serve it to the data plane, and returns the view.
func (s *system) waitPool() pool.View {
	s.t.Helper()
	var want []pool.Member
	for i, h := range s.nodes {
		want = append(want, pool.Member{ID: fmt.Sprintf("n%d", i), HTTP: nodeURL(h)})
	}
	var v pool.View
	s.waitFor(startWait, "the pool of both node hosts on every replica", func() error {
		for _, h := range s.managers {
			v = pool.View{}
			code, body, err := s.get(managerURL(h)+"/v1/pool", &v)
			members := slices.Clone(v.Members)
			slices.SortFunc(members, func(a, b pool.Member) int { return strings.Compare(a.ID, b.ID) })
			if err != nil || code != 200 || !slices.Equal(members, want) {
				return fmt.Errorf("%s: %d %v %s", h.Addr(), code, err, body)
			}
		}
		return nil
	})
	return v
}

// waitNodesFollow waits until every node has installed the pool's epoch.
func (s *system) waitNodesFollow(v pool.View) {
	s.t.Helper()
	for _, h := range s.nodes {
		var r node.Regions
		s.waitFor(wait, fmt.Sprintf("node on %s to install epoch %d", h, v.Epoch), func() error {
			code, body, err := s.get(nodeURL(h)+"/regions", &r)
			if err != nil || code != 200 || r.Epoch < v.Epoch {
				return fmt.Errorf("%d %v %s", code, err, body)
			}
			return nil
		})
	}
}

// upload posts key with data to the frontend's /api/upload.
func (s *system) upload(key string, data []byte) (int, []byte, error) {
	var body bytes.Buffer
	mw := multipart.NewWriter(&body)
	mw.WriteField("key", key)
	fw, _ := mw.CreateFormFile("file", key+".png")
	fw.Write(data)
	mw.Close()
	req, err := http.NewRequest(http.MethodPost, frontendURL(s.frontend)+"/api/upload", &body)
	if err != nil {
		s.t.Fatal(err)
	}
	req.Header.Set("Content-Type", mw.FormDataContentType())
	return s.do(req, nil)
}

// pngImage returns a small PNG.
func pngImage(t *testing.T) []byte {
	t.Helper()
	img := image.NewRGBA(image.Rect(0, 0, 8, 8))
	for i := range img.Pix {
		img.Pix[i] = byte(i)
	}
	img.Set(0, 0, color.RGBA{R: 255, A: 255})
	var b bytes.Buffer
	if err := png.Encode(&b, img); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// TestClusterFormsAcrossHosts starts 3 managers, 2 cache nodes and a
// frontend, each on its own host, and checks from the test process that the
// Raft group forms over the hosts' addresses, the pool takes both node
// hosts, and an image uploaded through the frontend is read back through
// it, from the node that owns its region.
func TestClusterFormsAcrossHosts(t *testing.T) {
	s := newSystem(t) // builds the binary first
	begin := time.Now()
	s.start()

	leader := s.waitRaft()
	t.Logf("Raft: leader %s (term %d) after %v", leader.ID, leader.Term, time.Since(begin).Round(time.Millisecond))
	v := s.waitPool()
	t.Logf("pool: epoch %d, members %v after %v", v.Epoch, v.Members, time.Since(begin).Round(time.Millisecond))
	s.waitNodesFollow(v)

	fe := frontendURL(s.frontend)
	s.waitFor(startWait, "the frontend to be ready", func() error {
		code, body, err := s.get(fe+"/readyz", nil)
		if err != nil || code != 200 {
			return fmt.Errorf("%d %v %s", code, err, body)
		}
		return nil
	})

	img := pngImage(t)
	key := "across/hosts " + randomHex(4) // a slash and a space: path-escaped below
	var (
		code int
		body []byte
		err  error
	)
	s.waitFor(wait, "an upload to be answered by other than 503", func() error {
		code, body, err = s.upload(key, img)
		if err != nil || code == http.StatusServiceUnavailable {
			return fmt.Errorf("%d %v %s", code, err, body)
		}
		return nil
	})
	if code != 200 || !bytes.Contains(body, []byte(`"success":"true"`)) {
		t.Fatalf("upload %q: %d %s, want 200 success", key, code, body)
	}

	req, _ := http.NewRequest(http.MethodPost, fe+"/api/key/"+url.PathEscape(key), nil)
	var read struct {
		Success string `json:"success"`
		Content string `json:"content"`
	}
	if code, body, err := s.do(req, &read); err != nil || code != 200 || read.Success != "true" {
		t.Fatalf("POST /api/key/%s: %d %v %s, want 200 success", key, code, err, body)
	}
	if got, err := base64.StdEncoding.DecodeString(read.Content); err != nil || !bytes.Equal(got, img) {
		t.Fatalf("/api/key/%s gave %d bytes (%v), want the %d uploaded", key, len(got), err, len(img))
	}

	// The image is served from the cache: the frontend reached the owner
	// node on its host.
	s.waitFor(wait, "GET /images/"+key+" to come from the cache", func() error {
		resp, err := s.client.Get(fe + "/images/" + url.PathEscape(key))
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if src := resp.Header.Get("X-Memcache-Source"); resp.StatusCode != 200 || !bytes.Equal(b, img) || src != "cache" {
			return fmt.Errorf("%s, %d bytes from %q", resp.Status, len(b), src)
		}
		return nil
	})
	// ... and the node that owns the key's region holds it and counted the reads.
	owner := v.Regions[region.Of(key)]
	i := slices.IndexFunc(v.Members, func(m pool.Member) bool { return m.ID == owner })
	if i < 0 {
		t.Fatalf("region %d of %q belongs to %q, not a member of %v", region.Of(key), key, owner, v.Members)
	}
	var st node.Stats
	if code, body, err := s.get(v.Members[i].HTTP+"/stats", &st); err != nil || code != 200 {
		t.Fatalf("GET %s/stats: %d %v %s", v.Members[i].HTTP, code, err, body)
	}
	if st.ID != owner || st.Counters.Items < 1 || st.Counters.Gets < 1 {
		t.Fatalf("owner %s's stats: id %q, %d items, %d gets; want the image cached and read there", owner, st.ID, st.Counters.Items, st.Counters.Gets)
	}
	t.Logf("cluster formed and served an upload and its reads in %v", time.Since(begin).Round(time.Millisecond))
}
