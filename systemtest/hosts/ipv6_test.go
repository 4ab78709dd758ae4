package hosts

import (
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/memcache/memcache/cluster"
	"github.com/memcache/memcache/internal/netns"
	"github.com/memcache/memcache/internal/pool"
)

// hostPort6 returns "[addr]:port" for host h's IPv6 address.
func hostPort6(h *netns.Host, port int) string {
	return net.JoinHostPort(h.Addr6().String(), strconv.Itoa(port))
}

// TestClusterFormsOverIPv6 runs 3 managers, a node and a frontend on their
// hosts' IPv6 addresses only: provision.sh is given ADDR=<IPv6 address>
// (it brackets it before a port), the certificates name only the IPv6
// addresses, and every listener, advertised address and join is IPv6.
// The Raft group forms, the pool takes the node at its IPv6 URL, and an
// upload is read back, from the node's cache.
func TestClusterFormsOverIPv6(t *testing.T) {
	s := newSystemWith(t, systemOptions{IPv6: true})
	begin := time.Now()
	var joins []string
	for _, h := range s.managers {
		joins = append(joins, hostPort6(h, managerGossipPort))
	}
	// v6 overrides what roleEnv derives from the IPv4 address: os/exec
	// keeps the last of duplicated variables.
	v6 := func(h *netns.Host, env []string) []string {
		return append(env, "ADDR="+h.Addr6().String(), "MEMCACHE_JOIN="+strings.Join(joins, ","), "MEMCACHE_INITIAL_NODES=1")
	}
	for i, h := range s.managers {
		s.startRole(fmt.Sprintf("m%d", i), "manager", h, v6(h, s.managerEnv(i)))
	}
	n := s.nodes[0]
	s.startRole("n0", "node", n, v6(n, s.nodeEnv(0)))
	s.startRole("fe", "frontend", s.frontend, v6(s.frontend, s.frontendEnv()))

	var want []string
	for i, h := range s.managers {
		want = append(want, fmt.Sprintf("m%d=%s=Voter", i, hostPort6(h, raftPort)))
	}
	s.waitFor(startWait, "a leader and three voters at their IPv6 addresses on every replica", func() error {
		leaders := map[string]bool{}
		for _, h := range s.managers {
			var st cluster.Status
			code, body, err := s.get("http://"+hostPort6(h, managerHTTPPort)+"/raft/status", &st)
			if err != nil || code != 200 {
				return fmt.Errorf("%s: %d %v %s", h.Addr6(), code, err, body)
			}
			var peers []string
			for _, p := range st.Peers {
				peers = append(peers, p.ID+"="+p.Address+"="+p.Suffrage)
			}
			slices.Sort(peers)
			if st.Leader.ID == "" || !slices.Equal(peers, want) {
				return fmt.Errorf("%s: %s, leader %q, peers %v", st.ID, st.State, st.Leader.ID, peers)
			}
			leaders[st.Leader.ID] = true
		}
		if len(leaders) != 1 {
			return fmt.Errorf("replicas follow different leaders: %v", leaders)
		}
		return nil
	})
	t.Logf("Raft formed over IPv6 after %v", time.Since(begin).Round(time.Millisecond))
	// Gossip too: every member a manager saw join is at an IPv6 address.
	for i := range s.managers {
		for _, a := range logValues(s.procs[fmt.Sprintf("m%d", i)].Log(), `msg="member join"`, "addr") {
			host, _, err := net.SplitHostPort(a)
			if ip, perr := netip.ParseAddr(host); err != nil || perr != nil || !s.net.Subnet6().Contains(ip) {
				t.Errorf("m%d saw a gossip member join at %q, want an address of %s", i, a, s.net.Subnet6())
			}
		}
	}

	nodeURL6 := "https://" + hostPort6(n, nodeHTTPPort)
	var v pool.View
	s.waitFor(startWait, "the pool of the node at its IPv6 URL on every replica", func() error {
		for _, h := range s.managers {
			v = pool.View{}
			code, body, err := s.get("https://"+hostPort6(h, managerClusterPort)+"/v1/pool", &v)
			if err != nil || code != 200 || !slices.Equal(v.Members, []pool.Member{{ID: "n0", HTTP: nodeURL6}}) {
				return fmt.Errorf("%s: %d %v %s", h.Addr6(), code, err, body)
			}
		}
		return nil
	})

	fe := "http://" + hostPort6(s.frontend, frontendHTTPPort)
	s.waitFor(startWait, "the frontend to be ready", func() error {
		code, body, err := s.get(fe+"/readyz", nil)
		if err != nil || code != 200 {
			return fmt.Errorf("%d %v %s", code, err, body)
		}
		return nil
	})
	img := pngImage(t)
	key := "over ipv6 " + randomHex(4)
	s.waitFor(wait, "an upload to be answered by other than 503", func() error {
		code, body, err := s.uploadTo(fe, key, img)
		if err != nil || code == http.StatusServiceUnavailable {
			return fmt.Errorf("%d %v %s", code, err, body)
		}
		if code != 200 {
			t.Fatalf("upload %q: %d %s, want 200", key, code, body)
		}
		return nil
	})
	// It reads back, from the cache: the frontend reached the node over IPv6.
	s.readBack(fe, key, img)
	t.Logf("cluster formed over IPv6 and served an upload and its reads in %v", time.Since(begin).Round(time.Millisecond))
}
