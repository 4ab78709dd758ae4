package hosts

import (
	"bytes"
	"context"
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
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/memcache/memcache/auth"
	"github.com/memcache/memcache/cluster"
	"github.com/memcache/memcache/internal/netns"
	"github.com/memcache/memcache/internal/pool"
	"github.com/memcache/memcache/internal/systemd"
	"github.com/memcache/memcache/internal/testbin"
	"github.com/memcache/memcache/node"
	"github.com/memcache/memcache/pki"
	"github.com/memcache/memcache/region"
)

func TestMain(m *testing.M) {
	code := m.Run()
	testbin.Remove()
	os.Exit(code)
}

// Ports of the roles: the defaults of deploy/provision.sh. Every host has
// its own address, so every role listens on its default port there.
const (
	managerHTTPPort     = 7200
	managerClusterPort  = 7201
	raftPort            = 7300
	managerGossipPort   = 7400
	nodeHTTPPort        = 7100
	nodeGossipPort      = 7946
	frontendHTTPPort    = 8080
	frontendClusterPort = 8081
	frontendGossipPort  = 7500
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

// system is a cluster whose roles run as processes on their own hosts,
// each installed by deploy/provision.sh under its own root directory and
// started as its systemd unit would start it (internal/systemd).
type system struct {
	t   *testing.T
	bin string // the memcache binary
	net *netns.Network
	dir string // one root directory per host, the secrets and the CA

	managers []*netns.Host
	nodes    []*netns.Host
	frontend *netns.Host
	// services runs the frontend's stores (PostgreSQL, versitygw) when a
	// test starts them; see frontendStoreEnv.
	services *netns.Host
	// serviceStores is set once startServices has the services up.
	serviceStores *serviceStores
	// spare are the hosts of systemOptions.Spare: no role, no certificate.
	spare []*netns.Host
	// v6 is systemOptions.IPv6: the certificates name the hosts' IPv6
	// addresses.
	v6 bool

	secrets    secrets
	secretsDir string
	tlsDir     string       // the cluster CA and every host's certificate
	client     *http.Client // the test's client: a client certificate of the CA for cluster listeners

	procs map[string]*netns.Process // by role name: m0.., n0.., fe
}

// secrets are the cluster's shared secrets, made by provision.sh secrets.
type secrets struct {
	gossipKey, clusterSecret, adminToken string
}

// provisionScript is deploy/provision.sh of this repository.
func provisionScript(t *testing.T) string {
	t.Helper()
	p, err := filepath.Abs(filepath.Join("..", "..", "deploy", "provision.sh"))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// newSystem builds the seven hosts, the secrets and the certificates (with
// provision.sh's secrets and tls steps, as on a Vagrant host); it starts
// nothing.
func newSystem(t *testing.T) *system { return newSystemExtra(t, 0) }

// newSystemExtra is newSystem with extra more hosts (system.spare), which
// get no role and no certificate.
func newSystemExtra(t *testing.T, extra int) *system {
	t.Helper()
	return newSystemWith(t, systemOptions{Spare: extra})
}

// systemOptions shape newSystemWith's network.
type systemOptions struct {
	// Spare is the number of hosts after the seven that get no role and
	// no certificate (an attacker's, a control's).
	Spare int
	// IPv6 gives every host an IPv6 address too, and the certificates name
	// that address instead of the IPv4 one.
	IPv6 bool
}

// newSystemWith is newSystem shaped by opts.
func newSystemWith(t *testing.T, opts systemOptions) *system {
	t.Helper()
	nw := netns.NewWith(t, netns.Options{Hosts: numManagers + numNodes + 2 + opts.Spare, IPv6: opts.IPv6})
	hs := nw.Hosts()
	s := &system{
		t: t, bin: testbin.Path(t), net: nw, dir: t.TempDir(),
		managers: hs[:numManagers],
		nodes:    hs[numManagers : numManagers+numNodes],
		frontend: hs[numManagers+numNodes],
		services: hs[numManagers+numNodes+1],
		spare:    hs[numManagers+numNodes+2:],
		v6:       opts.IPv6,
		procs:    map[string]*netns.Process{},
	}
	s.secretsDir, s.tlsDir = filepath.Join(s.dir, "secrets"), filepath.Join(s.dir, "tls")
	s.provision("secrets", nil)
	var hosts []string
	for i, h := range s.managers {
		hosts = append(hosts, fmt.Sprintf("m%d:manager:%s", i, s.certHost(h)))
		t.Logf("manager m%d on %s (%s)", i, h, s.certHost(h))
	}
	for i, h := range s.nodes {
		hosts = append(hosts, fmt.Sprintf("n%d:node:%s", i, s.certHost(h)))
		t.Logf("node n%d on %s (%s)", i, h, s.certHost(h))
	}
	hosts = append(hosts, fmt.Sprintf("fe:frontend:%s", s.certHost(s.frontend)))
	t.Logf("frontend on %s (%s), services on %s (%s)", s.frontend, s.certHost(s.frontend), s.services, s.services.Addr())
	s.provision("tls", []string{"TLS_HOSTS=" + strings.Join(hosts, " ")})
	// The test is an operator's tool: a client certificate of the CA.
	if err := pki.CreateCert(s.tlsDir, pki.CertRequest{Name: "test-client", Role: pki.RoleClient}); err != nil {
		t.Fatal(err)
	}
	s.client = s.clientWith(s.certificate("test-client"))
	read := func(name string) string {
		b, err := os.ReadFile(filepath.Join(s.secretsDir, name))
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(b))
	}
	s.secrets = secrets{gossipKey: read("gossip-key"), clusterSecret: read("cluster-secret"), adminToken: read("admin-token")}
	return s
}

// certHost is the address host h's certificate names: its IPv6 address
// with systemOptions.IPv6, else its IPv4 address.
func (s *system) certHost(h *netns.Host) netip.Addr {
	if s.v6 {
		return h.Addr6()
	}
	return h.Addr()
}

// certificate loads the certificate called name of the cluster CA.
func (s *system) certificate(name string) *pki.TLS {
	s.t.Helper()
	c, err := pki.Dir(s.tlsDir, name)
	if err != nil {
		s.t.Fatal(err)
	}
	return c
}

// clientWith is an HTTP client presenting c (nil: none).
func (s *system) clientWith(c *pki.TLS) *http.Client {
	return &http.Client{Transport: pki.Transport(c), Timeout: 10 * time.Second}
}

// provision runs deploy/provision.sh step with the test's settings and env.
func (s *system) provision(step string, env []string) {
	s.t.Helper()
	cmd := exec.Command("bash", provisionScript(s.t), step)
	// provision.sh writes AWS_* into the frontend's environment file: the
	// test machine's (AWS_CA_BUNDLE, AWS_PROFILE) are not the hosts'.
	env0 := slices.DeleteFunc(os.Environ(), func(kv string) bool { return strings.HasPrefix(kv, "AWS_") })
	cmd.Env = append(env0, "MEMCACHE_BIN="+s.bin, "SECRETS_DIR="+s.secretsDir, "TLS_DIR="+s.tlsDir)
	cmd.Env = append(cmd.Env, env...)
	if out, err := cmd.CombinedOutput(); err != nil {
		s.t.Fatalf("provision.sh %s: %v\n%s", step, err, out)
	}
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// root returns the directory host h's role is installed under.
func (s *system) root(h *netns.Host) string { return filepath.Join(s.dir, "hosts", h.Name()) }

// managerGossip returns the managers' gossip addresses, every role's join.
func (s *system) managerGossip() []string {
	var addrs []string
	for _, h := range s.managers {
		addrs = append(addrs, h.HostPort(managerGossipPort))
	}
	return addrs
}

// roleEnv is what provision.sh is told for a role on host h: its address
// (every listener and advertised address on the default ports), its name
// and certificate, the managers' gossip to join; extra overrides.
func (s *system) roleEnv(h *netns.Host, name string, extra ...string) []string {
	return append([]string{"PREFIX=" + s.root(h), "ADDR=" + h.Addr().String(), "TLS_NAME=" + name,
		"MEMCACHE_NAME=" + name, "MEMCACHE_JOIN=" + strings.Join(s.managerGossip(), ","),
		"MEMCACHE_LOG_LEVEL=info"}, extra...)
}

// managerEnv: the three replicas bootstrap one Raft group and pool the
// nodes that join by gossip.
func (s *system) managerEnv(i int) []string {
	return s.roleEnv(s.managers[i], fmt.Sprintf("m%d", i), "MEMCACHE_BOOTSTRAP_EXPECT="+fmt.Sprint(numManagers),
		"MEMCACHE_PROVISIONER=static", "MEMCACHE_INITIAL_NODES="+fmt.Sprint(numNodes), "MEMCACHE_DEAD_GRACE=3s")
}

func (s *system) nodeEnv(i int) []string { return s.roleEnv(s.nodes[i], fmt.Sprintf("n%d", i)) }

func (s *system) frontendEnv() []string {
	return s.roleEnv(s.frontend, "fe", s.frontendStoreEnv()...)
}

// frontendStoreEnv is the frontend's stores: SQLite and a blob directory
// under its root, unless a test started the services host's stores.
func (s *system) frontendStoreEnv() []string {
	if s.serviceStores != nil {
		// As on the Vagrant frontend: provision.sh derives the DSN, the S3
		// endpoint, bucket and keys from SERVICES_ADDR and the secrets.
		return []string{"SERVICES_ADDR=" + s.services.Addr().String()}
	}
	d := filepath.Join(s.root(s.frontend), "var/lib/memcache/frontend")
	return []string{"MEMCACHE_DB=" + filepath.Join(d, "keys.db"), "MEMCACHE_BLOB_DIR=" + filepath.Join(d, "blobs")}
}

// startRole installs role on host h with provision.sh and starts it as
// its unit would, inside the host.
func (s *system) startRole(name, role string, h *netns.Host, env []string) {
	s.t.Helper()
	s.provision(role, env)
	s.startUnit(name, role, h, s.bin)
}

// startUnit starts role, installed under h's root, as its unit would
// (internal/systemd), inside the host: the one place roles are started. bin
// is the program run in place of the unit's; if blank, the binary installed
// under the root.
func (s *system) startUnit(name, role string, h *netns.Host, bin string) {
	s.t.Helper()
	cmd, err := systemd.Command(s.root(h), "memcache-"+role+".service", bin)
	if err != nil {
		s.t.Fatal(err)
	}
	in := h.Command(context.Background(), cmd.Path, cmd.Args[1:]...)
	in.Env, in.Dir = cmd.Env, cmd.Dir
	s.procs[name] = h.StartCmd(in)
}

// start starts every role: the managers, the nodes, then the frontend, all
// at once (each retries its joins until its peers are up).
func (s *system) start() {
	s.t.Helper()
	for i, h := range s.managers {
		s.startRole(fmt.Sprintf("m%d", i), "manager", h, s.managerEnv(i))
	}
	for i, h := range s.nodes {
		s.startRole(fmt.Sprintf("n%d", i), "node", h, s.nodeEnv(i))
	}
	s.startRole("fe", "frontend", s.frontend, s.frontendEnv())
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
// host's bridge address) with the test's client certificate, the cluster
// secret and the admin token, and decodes a 2xx JSON answer into out. It returns the status, or an error if the request
// could not be sent or the answer read.
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

// get is do for a GET of url.
func (s *system) get(url string, out any) (int, []byte, error) {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		s.t.Fatal(err)
	}
	return s.do(req, out)
}

// The public listeners are plain HTTP; the cluster listeners mutual TLS.
func managerURL(h *netns.Host) string        { return "http://" + h.HostPort(managerHTTPPort) }
func managerClusterURL(h *netns.Host) string { return "https://" + h.HostPort(managerClusterPort) }
func nodeURL(h *netns.Host) string           { return "https://" + h.HostPort(nodeHTTPPort) }
func frontendURL(h *netns.Host) string       { return "http://" + h.HostPort(frontendHTTPPort) }

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
			code, body, err := s.get(managerClusterURL(h)+"/v1/pool", &v)
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
		s.waitNodeFollows(h, v.Epoch)
	}
}

// waitNodeFollows waits until the node on host h has installed epoch.
func (s *system) waitNodeFollows(h *netns.Host, epoch uint64) {
	s.t.Helper()
	var r node.Regions
	s.waitFor(wait, fmt.Sprintf("node on %s to install epoch %d", h, epoch), func() error {
		code, body, err := s.get(nodeURL(h)+"/regions", &r)
		if err != nil || code != 200 || r.Epoch < epoch {
			return fmt.Errorf("%d %v %s", code, err, body)
		}
		return nil
	})
}

// upload posts key with data to the frontend's /api/upload.
func (s *system) upload(key string, data []byte) (int, []byte, error) {
	return s.uploadTo(frontendURL(s.frontend), key, data)
}

// uploadTo posts key with data to /api/upload of the frontend at base.
func (s *system) uploadTo(base, key string, data []byte) (int, []byte, error) {
	var body bytes.Buffer
	mw := multipart.NewWriter(&body)
	mw.WriteField("key", key)
	fw, _ := mw.CreateFormFile("file", key+".png")
	fw.Write(data)
	mw.Close()
	req, err := http.NewRequest(http.MethodPost, base+"/api/upload", &body)
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

// TestClusterFormsAcrossHosts starts 3 managers, 2 cache nodes, a
// frontend and the services host's stores (PostgreSQL, versitygw), each on
// its own host, and checks from the test process that the Raft group forms
// over the hosts' addresses, the pool takes both node hosts, and an image
// uploaded through the frontend lands in the services host's stores and is
// read back through the frontend, from the node that owns its region.
func TestClusterFormsAcrossHosts(t *testing.T) {
	s := newSystem(t) // builds the binary first
	begin := time.Now()
	s.startServices()
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
	s.checkStored(key, img)

	// The image reads back, and is served from the cache: the frontend
	// reached the owner node on its host.
	s.readBack(fe, key, img)
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

// readBack checks that key reads back as img through the frontend at fe:
// POST /api/key/{key} byte-exact, then GET /images/{key} from the cache
// (polled: the first read fills it).
func (s *system) readBack(fe, key string, img []byte) {
	t := s.t
	t.Helper()
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
}
