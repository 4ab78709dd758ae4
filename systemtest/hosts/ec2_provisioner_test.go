package hosts

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/memcache/memcache/auth"
	"github.com/memcache/memcache/internal/ec2fake"
	"github.com/memcache/memcache/internal/imdsfake"
	"github.com/memcache/memcache/internal/netns"
	"github.com/memcache/memcache/internal/pool"
	"github.com/memcache/memcache/pki"
	"github.com/memcache/memcache/scaler"
)

// TestEC2ProvisionerLaunchesBootsAndTerminates runs the ec2 provisioner
// end to end across hosts. A manager started from its unit with
// --provisioner ec2 talks to a fake EC2 on the bridge (the real SDK, its
// endpoint from AWS_ENDPOINT_URL_EC2). The test plays the hypervisor: each
// instance the manager launches boots on a host of its own, which runs the
// user data the manager rendered (as cloud-init would), then starts the
// unit it installed; the node reads its identity from a fake IMDS. The
// manager creates its initial pool of one from a launch, grows to two with
// a second launch, and when it shrinks back to one terminates the instance
// of the node that left.
func TestEC2ProvisionerLaunchesBootsAndTerminates(t *testing.T) {
	s := newSystem(t)
	m := s.managers[0]
	hosts := []*netns.Host{s.nodes[0], s.nodes[1]} // the instances' hosts, in launch order

	launched := make(chan ec2fake.Instance, 4)
	ec2, err := ec2fake.NewOn(net.JoinHostPort(s.net.BridgeAddr().String(), "0"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ec2.Close)
	ec2.SetOnLaunch(func(in ec2fake.Instance) { launched <- in })

	// IMDS answers as the instance booting now: the test points the proxy
	// at a fake with that instance's identity before the instance boots.
	imds := &switchProxy{}
	imdsURL := s.serveOnBridge(imds)

	binary, err := os.ReadFile(s.bin)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(binary)
	binURL := s.serveOnBridge(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.ServeContent(w, r, "memcache", time.Time{}, strings.NewReader(string(binary)))
	})) + "/memcache"

	// One node certificate for every instance, as on EC2 (there it names
	// *.ec2.internal; here the hosts' addresses, as there is no DNS).
	if err := pki.CreateCert(s.tlsDir, pki.CertRequest{Name: "ec2-nodes", Role: pki.RoleNode,
		Hosts: []string{hosts[0].Addr().String(), hosts[1].Addr().String()}}); err != nil {
		t.Fatal(err)
	}
	s.startRole("m0", "manager", m, append(s.managerEnv(0), "MEMCACHE_BOOTSTRAP_EXPECT=1",
		"MEMCACHE_JOIN="+m.HostPort(managerGossipPort), "MEMCACHE_INITIAL_NODES=1",
		"MEMCACHE_PROVISIONER=ec2", "MEMCACHE_EC2_CLUSTER=systest", "MEMCACHE_EC2_AMI=ami-0systest",
		"MEMCACHE_EC2_SUBNETS=subnet-a", "MEMCACHE_EC2_SECURITY_GROUPS=sg-nodes",
		"MEMCACHE_EC2_NODE_TLS_CERT="+filepath.Join(s.tlsDir, "ec2-nodes.pem"),
		"MEMCACHE_EC2_NODE_TLS_KEY="+filepath.Join(s.tlsDir, "ec2-nodes-key.pem"),
		"MEMCACHE_EC2_BINARY_URL="+binURL, "MEMCACHE_EC2_BINARY_SHA256="+hex.EncodeToString(sum[:]),
		"MEMCACHE_EC2_NODE_ENV=AWS_EC2_METADATA_SERVICE_ENDPOINT="+imdsURL,
		"AWS_ENDPOINT_URL_EC2="+ec2.URL(), "AWS_REGION=eu-west-1", "AWS_EC2_METADATA_DISABLED=true",
		"AWS_ACCESS_KEY_ID=AKIDSYSTEST", "AWS_SECRET_ACCESS_KEY=systest-secret"))

	// boot plays the hypervisor for the next launch, on hosts[i].
	boot := func(i int) ec2fake.Instance {
		t.Helper()
		var in ec2fake.Instance
		select {
		case in = <-launched:
		case <-time.After(startWait):
			t.Fatalf("no instance launched within %v; m0's log ends:\n%s", startWait, lastLines(s.procs["m0"].Log(), 30))
		}
		h := hosts[i]
		member := in.Tags[scaler.TagMember]
		for k, v := range map[string]string{scaler.TagCluster: "systest", scaler.TagRole: "node", "Name": "memcache-systest-" + member} {
			if in.Tags[k] != v {
				t.Errorf("instance %s tag %s = %q, want %q", in.ID, k, in.Tags[k], v)
			}
		}
		if in.ImageID != "ami-0systest" || in.SubnetID != "subnet-a" || in.HTTPTokens != "required" {
			t.Errorf("instance %+v: want the AMI, the subnet and IMDSv2 required", in)
		}
		fake, err := imdsfake.NewOn(net.JoinHostPort(s.net.BridgeAddr().String(), "0"), imdsfake.Identity{
			InstanceID: in.ID, LocalIPv4: h.Addr().String(), LocalHostname: h.Addr().String(),
			Region: "eu-west-1", AvailabilityZone: "eu-west-1a"})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(fake.Close)
		imds.point(t, fake.URL())
		s.runUserData(h, in.UserData)
		s.startUnit(member, "node", h, "")
		t.Logf("instance %s (%s) booted on %s", in.ID, member, h)
		return in
	}

	first := boot(0)
	v := s.waitPoolOn(m, []pool.Member{{ID: first.Tags[scaler.TagMember], HTTP: nodeURL(hosts[0])}})
	s.waitNodeFollows(hosts[0], v.Epoch)
	if log := s.procs[first.Tags[scaler.TagMember]].Log(); !strings.Contains(log, "instance_id="+first.ID) {
		t.Errorf("the node did not log its instance id %s:\n%s", first.ID, lastLines(log, 20))
	}

	// Grow: a second launch, booted on the second host.
	// The answer comes once the node has joined, after its boot: longer
	// than the test client's usual deadline.
	grown := make(chan error, 1)
	go func() { grown <- s.slowResize(m, 2) }()
	second := boot(1)
	if err := <-grown; err != nil {
		t.Fatalf("growing to 2: %v", err)
	}
	v = s.waitPoolOn(m, []pool.Member{
		{ID: first.Tags[scaler.TagMember], HTTP: nodeURL(hosts[0])},
		{ID: second.Tags[scaler.TagMember], HTTP: nodeURL(hosts[1])},
	})
	if n := ec2.Calls("RunInstances"); n != 2 {
		t.Errorf("RunInstances calls: %d, want 2", n)
	}

	// Shrink: the node that left has its instance terminated.
	if _, err := s.resize(m, 1); err != nil {
		t.Fatalf("shrinking to 1: %v", err)
	}
	s.waitFor(wait, "the instance of the node that left the pool to be terminated", func() error {
		in, _ := ec2.Instance(second.ID)
		if in.State != "shutting-down" && in.State != "terminated" {
			return fmt.Errorf("instance %s is %s", in.ID, in.State)
		}
		return nil
	})
	if in, _ := ec2.Instance(first.ID); in.State != "running" {
		t.Errorf("the instance of the node still in the pool is %s, want running", in.State)
	}
	s.waitPoolOn(m, []pool.Member{{ID: first.Tags[scaler.TagMember], HTTP: nodeURL(hosts[0])}})
}

// slowResize is resize with startWait for the answer.
func (s *system) slowResize(h *netns.Host, n int) error {
	req, err := http.NewRequest(http.MethodPost, managerURL(h)+"/v1/pool/resize", strings.NewReader(fmt.Sprintf(`{"nodes":%d}`, n)))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(auth.Header, s.secrets.clusterSecret)
	req.Header.Set("Authorization", "Bearer "+s.secrets.adminToken)
	slow := *s.client
	slow.Timeout = startWait
	resp, err := slow.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		return fmt.Errorf("resize to %d: %s %s", n, resp.Status, b)
	}
	return nil
}

// switchProxy forwards every request to the server it was last pointed at.
type switchProxy struct {
	mu    sync.Mutex
	proxy *httputil.ReverseProxy
}

func (p *switchProxy) point(t *testing.T, target string) {
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	// Rewrite adds no X-Forwarded-For: IMDS refuses forwarded requests.
	p.proxy = &httputil.ReverseProxy{Rewrite: func(r *httputil.ProxyRequest) { r.SetURL(u) }}
}

func (p *switchProxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p.mu.Lock()
	proxy := p.proxy
	p.mu.Unlock()
	if proxy == nil {
		http.Error(w, "no instance is booting", http.StatusServiceUnavailable)
		return
	}
	proxy.ServeHTTP(w, r)
}
