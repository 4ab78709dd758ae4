package role_test

import (
	"context"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/memcache/memcache/gossip"
	"github.com/memcache/memcache/internal/ec2meta"
	"github.com/memcache/memcache/internal/imdsfake"
	"github.com/memcache/memcache/internal/role"
	"github.com/memcache/memcache/internal/waitfor"
)

// startEC2Node starts a node bound to every interface (which it may only do
// with addresses to advertise) that reads its identity from imds.
func startEC2Node(t *testing.T, cfg role.NodeConfig, imds *imdsfake.Server) *role.Node {
	t.Helper()
	cfg.HTTPAddr = "0.0.0.0:0"
	cfg.Gossip.BindAddr = "0.0.0.0:0"
	cfg.Gossip.Fast = true
	cfg.EC2Identity = &ec2meta.Config{Endpoint: imds.URL()}
	n, err := role.StartNode(t.Context(), cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		n.Close(ctx)
	})
	return n
}

// TestNodeTakesItsEC2Identity: a node started with EC2Identity is named by
// its instance id and advertises the instance's addresses from IMDS: the
// HTTP API at the private host name (else the private IPv4 address), gossip
// at the private IPv4 address; a peer reaches both there.
func TestNodeTakesItsEC2Identity(t *testing.T) {
	// 127.0.0.2 is a loopback address the node binds (0.0.0.0) but would
	// never pick to advertise by itself.
	for _, tc := range []struct {
		name     string
		hostname string
		urlHost  string
	}{
		{"host name", "localhost", "localhost"},
		{"no host name", "", "127.0.0.2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			imds := imdsfake.New(imdsfake.Identity{InstanceID: "i-0123456789abcdef0", LocalIPv4: "127.0.0.2", LocalHostname: tc.hostname})
			defer imds.Close()
			n := startEC2Node(t, role.NodeConfig{}, imds)
			if n.Name() != "i-0123456789abcdef0" {
				t.Errorf("name %q, want the instance id", n.Name())
			}
			if !strings.HasPrefix(n.URL(), "http://"+tc.urlHost+":") {
				t.Errorf("advertised HTTP %q, want http://%s:<port>", n.URL(), tc.urlHost)
			}
			resp, err := http.Get(n.URL() + "/healthz")
			if err != nil {
				t.Fatalf("GET the advertised URL: %v", err)
			}
			resp.Body.Close()
			if host, _, _ := net.SplitHostPort(n.Gossip().Addr()); host != "127.0.0.2" {
				t.Errorf("gossip advertises %s, want 127.0.0.2:<port>", n.Gossip().Addr())
			}
			if imds.Requests() == 0 {
				t.Error("the node never asked IMDS")
			}

			// A peer joining at the advertised gossip address sees the node
			// under its instance id with the advertised URL.
			peer := startNode(t, "peer", n.Gossip().Addr())
			waitfor.True(t, 10*time.Second, "the peer to see the EC2 node", func() bool {
				for _, m := range peer.Gossip().Members() {
					if m.Meta.ID == n.Name() && m.Meta.Role == gossip.RoleNode && m.Meta.HTTP == n.URL() {
						return true
					}
				}
				return false
			})
		})
	}
}

// TestNodeEC2IdentityExplicitWins: what the config sets is kept; IMDS only
// fills blanks.
func TestNodeEC2IdentityExplicitWins(t *testing.T) {
	imds := imdsfake.New(imdsfake.Identity{InstanceID: "i-1", LocalIPv4: "127.0.0.2", LocalHostname: "localhost"})
	defer imds.Close()
	n := startEC2Node(t, role.NodeConfig{Name: "ec2-3f9a1c2b", AdvertiseHTTP: "http://127.0.0.3:1"}, imds)
	if n.Name() != "ec2-3f9a1c2b" || n.URL() != "http://127.0.0.3:1" {
		t.Errorf("name %q, URL %q; want the configured ec2-3f9a1c2b and http://127.0.0.3:1", n.Name(), n.URL())
	}
	if host, _, _ := net.SplitHostPort(n.Gossip().Addr()); host != "127.0.0.2" {
		t.Errorf("gossip advertises %s, want IMDS's 127.0.0.2 (not configured)", n.Gossip().Addr())
	}
}

// TestNodeWithoutIMDSRefusesToStart: with IMDS unreachable the node does
// not start, and says why.
func TestNodeWithoutIMDSRefusesToStart(t *testing.T) {
	imds := imdsfake.New(imdsfake.Identity{})
	url := imds.URL()
	imds.Close()
	n, err := role.StartNode(t.Context(), role.NodeConfig{
		HTTPAddr: "0.0.0.0:0", Gossip: gossip.Config{BindAddr: "0.0.0.0:0"},
		EC2Identity: &ec2meta.Config{Endpoint: url, Timeout: 5 * time.Second},
	}, slog.New(slog.DiscardHandler))
	if err == nil {
		n.Close(context.Background())
		t.Fatal("the node started without its EC2 identity")
	}
	for _, want := range []string{"--ec2-identity", "EC2 instance metadata service", url} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
}
