package hosts

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/memcache/memcache/deploy"
	"github.com/memcache/memcache/internal/imdsfake"
	"github.com/memcache/memcache/internal/netns"
	"github.com/memcache/memcache/internal/pool"
	"github.com/memcache/memcache/internal/systemd"
	"github.com/memcache/memcache/node"
	"github.com/memcache/memcache/pki"
	"github.com/memcache/memcache/region"
)

// serveOnBridge serves h on the network's bridge address, which every host
// reaches (as an instance reaches S3 or IMDS), until the test ends, and
// returns its base URL.
func (s *system) serveOnBridge(h http.Handler) string {
	s.t.Helper()
	ln, err := net.Listen("tcp", net.JoinHostPort(s.net.BridgeAddr().String(), "0"))
	if err != nil {
		s.t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(h)
	srv.Listener.Close()
	srv.Listener = ln
	srv.Start()
	s.t.Cleanup(srv.Close)
	return srv.URL
}

// TestEC2UserDataNodeJoins boots a cache node the way an EC2 instance of
// the ec2 provisioner boots: its host runs the user data deploy.NodeUserData
// renders (PREFIX = the host's root), which downloads the binary from the
// test's server on the bridge, checks its SHA-256 and installs the node
// with provision.sh; the installed unit then starts, reads its identity
// from a fake IMDS on the bridge (the endpoint written into node.env by
// the user data's Env) and advertises the addresses IMDS gives. One manager
// (static provisioner) with a pool of one ordinary node grows the pool to
// two through its admin API: it takes the EC2 node, which joined gossip
// under its member name, at its IMDS address; the node then follows the
// pool and answers cache requests over mutual TLS with the certificate the
// user data carried.
func TestEC2UserDataNodeJoins(t *testing.T) {
	s := newSystem(t)
	begin := time.Now()
	m := s.managers[0]
	s.startRole("m0", "manager", m, append(s.managerEnv(0), "MEMCACHE_BOOTSTRAP_EXPECT=1",
		"MEMCACHE_INITIAL_NODES=1", "MEMCACHE_JOIN="+m.HostPort(managerGossipPort)))
	n1 := s.nodes[1]
	s.startRole("n1", "node", n1, append(s.nodeEnv(1), "MEMCACHE_JOIN="+m.HostPort(managerGossipPort)))
	want := []pool.Member{{ID: "n1", HTTP: nodeURL(n1)}}
	s.waitPoolOn(m, want)
	t.Logf("manager m0 and pool [n1] after %v", time.Since(begin).Round(time.Millisecond))

	// The instance: its member name is the provisioner's, its identity
	// IMDS's; local-hostname is the host's address, which its certificate
	// names (there is no DNS between the namespaces).
	h := s.nodes[0]
	member := "ec2-" + randomHex(4)
	instanceID := "i-0" + randomHex(8)
	imds, err := imdsfake.NewOn(net.JoinHostPort(s.net.BridgeAddr().String(), "0"), imdsfake.Identity{
		InstanceID: instanceID, LocalIPv4: h.Addr().String(), LocalHostname: h.Addr().String(),
		Region: "eu-west-1", AvailabilityZone: "eu-west-1a",
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(imds.Close)

	binary, err := os.ReadFile(s.bin)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(binary)
	binURL := s.serveOnBridge(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.ServeContent(w, r, "memcache", time.Time{}, bytes.NewReader(binary))
	})) + "/memcache"

	if err := pki.CreateCert(s.tlsDir, pki.CertRequest{Name: "ec2-node", Role: pki.RoleNode, Hosts: []string{h.Addr().String()}}); err != nil {
		t.Fatal(err)
	}
	read := func(name string) []byte {
		b, err := os.ReadFile(filepath.Join(s.tlsDir, name))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	gossipKey, err := base64.StdEncoding.DecodeString(s.secrets.gossipKey)
	if err != nil {
		t.Fatal(err)
	}
	userData, err := deploy.NodeUserData(deploy.NodeUserDataConfig{
		Name: member, Join: []string{m.HostPort(managerGossipPort)},
		CA: read("ca.pem"), Cert: read("ec2-node.pem"), Key: read("ec2-node-key.pem"),
		GossipKey: gossipKey, ClusterSecret: s.secrets.clusterSecret,
		BinaryURL: binURL, BinarySHA256: hex.EncodeToString(sum[:]),
		Env: map[string]string{
			"AWS_EC2_METADATA_SERVICE_ENDPOINT": imds.URL(),
			"AWS_REGION":                        "eu-west-1",
			"MEMCACHE_LOG_LEVEL":                "info",
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("user data: %d bytes", len(userData))
	s.runUserData(h, userData)
	env, err := systemd.ReadEnvFile(filepath.Join(s.root(h), "etc/memcache/node.env"))
	if err != nil {
		t.Fatal(err)
	}
	for _, kv := range []string{"MEMCACHE_EC2_IDENTITY=true", "MEMCACHE_NAME=" + member, "AWS_EC2_METADATA_SERVICE_ENDPOINT=" + imds.URL()} {
		if !slices.Contains(env, kv) {
			t.Fatalf("node.env lacks %s: %q", kv, env)
		}
	}
	// The unit runs the binary the user data downloaded and installed.
	s.startUnit("ec2", "node", h, "")

	// It joins gossip under its member name at the address IMDS gave, and
	// the manager takes it when the pool grows.
	s.waitFor(startWait, "the manager to see "+member+" join gossip", func() error {
		if addrs := logValues(s.procs["m0"].Log(), "id="+member+" role=node", "addr"); len(addrs) == 0 {
			return fmt.Errorf("no member join of %s in m0's log", member)
		}
		return nil
	})
	joined := time.Since(begin)
	for _, a := range logValues(s.procs["m0"].Log(), "id="+member+" role=node", "addr") {
		if a != h.HostPort(nodeGossipPort) {
			t.Errorf("m0 saw %s at gossip address %s, want %s (IMDS's local-ipv4)", member, a, h.HostPort(nodeGossipPort))
		}
	}
	if log := s.procs["ec2"].Log(); !strings.Contains(log, "instance_id="+instanceID) {
		t.Errorf("the node did not log its instance id %s; its log:\n%s", instanceID, lastLines(log, 20))
	}
	if imds.Requests() < 4 {
		t.Errorf("IMDS answered %d requests, want a token and the three reads at least", imds.Requests())
	}
	s.waitFor(wait, "a resize to 2 nodes to be accepted", func() error {
		_, err := s.resize(m, 2)
		return err
	})
	want = append(want, pool.Member{ID: member, HTTP: nodeURL(h)})
	v := s.waitPoolOn(m, want)
	t.Logf("pool epoch %d, members %v; %s joined after %v, in the pool after %v",
		v.Epoch, v.Members, member, joined.Round(time.Millisecond), time.Since(begin).Round(time.Millisecond))
	s.waitNodeFollows(h, v.Epoch)

	// A cache request straight to the EC2 node, for a key of a region it
	// owns, over mutual TLS: the certificate from the user data names the
	// address the node advertises.
	var key string
	for _, k := range regionKeys("ec2") {
		if v.Regions[region.Of(k)] == member {
			key = k
			break
		}
	}
	if key == "" {
		t.Fatalf("%s owns no region: %v", member, v.Regions)
	}
	c := node.NewClient(node.ClientConfig{TLS: s.certificate("test-client"), Secret: s.secrets.clusterSecret, Timeout: 10 * time.Second})
	value := pngImage(t)
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if err := c.Put(ctx, nodeURL(h), key, value, node.PutOptions{Epoch: v.Epoch, Generation: v.Generation(), ContentType: "image/png"}); err != nil {
		t.Fatalf("PUT %s to %s: %v", key, member, err)
	}
	e, err := c.Get(ctx, nodeURL(h), key, v.Epoch, node.GetOptions{})
	if err != nil {
		t.Fatalf("GET %s from %s: %v", key, member, err)
	}
	got, err := io.ReadAll(e.Body)
	e.Body.Close()
	if err != nil || !bytes.Equal(got, value) {
		t.Fatalf("GET %s from %s: %d bytes (%v), want the %d put", key, member, len(got), err, len(value))
	}
}

// runUserData runs an instance's user data on host h as cloud-init would
// (as root, with bash), installing under h's root; it fails the test if
// the script fails.
func (s *system) runUserData(h *netns.Host, userData []byte) {
	s.t.Helper()
	script := filepath.Join(s.t.TempDir(), "user-data")
	if err := os.WriteFile(script, userData, 0o700); err != nil {
		s.t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), startWait)
	defer cancel()
	boot := h.Command(ctx, "bash", script)
	boot.Env = []string{"PATH=" + os.Getenv("PATH"), "PREFIX=" + s.root(h), "TMPDIR=" + s.t.TempDir()}
	if out, err := boot.CombinedOutput(); err != nil {
		s.t.Fatalf("user data on %s: %v\n%s", h, err, out)
	}
}

// waitPoolOn waits until manager h serves a pool of exactly want (in any
// order) and returns the view.
func (s *system) waitPoolOn(h *netns.Host, want []pool.Member) pool.View {
	s.t.Helper()
	want = slices.Clone(want)
	byID := func(a, b pool.Member) int { return strings.Compare(a.ID, b.ID) }
	slices.SortFunc(want, byID)
	var v pool.View
	s.waitFor(startWait, fmt.Sprintf("the pool %v on %s", want, h), func() error {
		var err error
		if v, err = s.poolOn(h); err != nil {
			return err
		}
		got := slices.Clone(v.Members)
		slices.SortFunc(got, byID)
		if !slices.Equal(got, want) {
			return fmt.Errorf("epoch %d, members %v", v.Epoch, got)
		}
		return nil
	})
	return v
}
