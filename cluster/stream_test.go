package cluster

import (
	"crypto/tls"
	"io"
	"net"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"

	"github.com/memcache/memcache/fsm"
	"github.com/memcache/memcache/internal/waitfor"
	"github.com/memcache/memcache/pki"
)

// testCA makes a CA with a certificate per role for 127.0.0.1.
func testCA(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	if err := pki.Ensure(dir, []string{"127.0.0.1", "::1", "localhost"}, pki.RoleManager, pki.RoleNode, pki.RoleFrontend); err != nil {
		t.Fatal(err)
	}
	return dir
}

func loadTLS(t testing.TB, dir, name string) *pki.TLS {
	t.Helper()
	tl, err := pki.Dir(dir, name)
	if err != nil {
		t.Fatal(err)
	}
	return tl
}

// attacker is a Raft stream layer that only dials: plain TCP when cfg is
// nil, TLS with cfg otherwise (it does not check the server, as an
// attacker would not).
type attacker struct {
	cfg *tls.Config
	ln  net.Listener
}

func (a attacker) Accept() (net.Conn, error) { return a.ln.Accept() }
func (a attacker) Close() error              { return a.ln.Close() }
func (a attacker) Addr() net.Addr            { return a.ln.Addr() }
func (a attacker) Dial(addr raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	d := &net.Dialer{Timeout: timeout}
	if a.cfg == nil {
		return d.Dial("tcp", string(addr))
	}
	return tls.DialWithDialer(d, "tcp", string(addr), a.cfg)
}

// forge sends target one AppendEntries as a self-declared leader of the
// next term, whose previous entry is target's last (read from its Raft
// status, as an attacker reads it from /raft/status), carrying data as a
// command, committed at once.
func forge(t *testing.T, cfg *tls.Config, target *replica, data []byte) error {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tr := raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream: attacker{cfg: cfg, ln: ln}, MaxPool: 1, Timeout: 5 * time.Second,
		Logger: hclog.New(&hclog.LoggerOptions{Output: io.Discard}),
	})
	defer tr.Close()
	st := target.c.Status()
	last := target.c.Raft().LastIndex()
	lastTerm := st.Term
	req := &raft.AppendEntriesRequest{
		RPCHeader:         raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax, ID: []byte("mallory"), Addr: []byte(ln.Addr().String())},
		Term:              lastTerm + 1,
		PrevLogEntry:      last,
		PrevLogTerm:       lastTerm,
		Entries:           []*raft.Log{{Index: last + 1, Term: lastTerm + 1, Type: raft.LogCommand, Data: data}},
		LeaderCommitIndex: last + 1,
	}
	var resp raft.AppendEntriesResponse
	if err := tr.AppendEntries(raft.ServerID(target.name), raft.ServerAddress(target.raftAddr), req, &resp); err != nil {
		return err
	}
	if !resp.Success {
		t.Logf("the forged entry was received but not appended (term %d, last %d)", resp.Term, resp.LastLog)
	}
	return nil
}

// TestForgedAppendEntriesAreRefusedWithoutAManagerCertificate replays the
// attack of an unauthenticated peer on the Raft port: a DeleteAll, and an
// entry of an unknown type, appended to a follower as a self-declared
// leader. Over plain TCP the follower takes the DeleteAll (which shows the
// attack is real); over mutual TLS nobody without a manager certificate of
// the cluster's CA gets a single message read.
func TestForgedAppendEntriesAreRefusedWithoutAManagerCertificate(t *testing.T) {
	deleteAll := must(fsm.Encode(fsm.DeleteAll{}))
	unknown := []byte{0xEE, 'x'}

	t.Run("plain TCP takes the forged entry", func(t *testing.T) {
		tc := newTestCluster(t, 3)
		victim := tc.follower()
		mustApply(t, victim, fsm.SetCache{Config: fsm.CacheConfig{CapacityMB: 8, Policy: fsm.PolicyLRU}})
		tc.converged("cache 8 MB", cacheIs(8, fsm.PolicyLRU))
		before := victim.c.State().DeleteGen
		if err := forge(t, nil, victim, deleteAll); err != nil {
			t.Fatalf("plain forge: %v", err)
		}
		waitfor.True(t, 10*time.Second, "the forged DeleteAll applied on the victim", func() bool {
			return victim.c.State().DeleteGen > before
		})
	})

	t.Run("mutual TLS refuses", func(t *testing.T) {
		ca, other := testCA(t), testCA(t)
		tc := newTestClusterWith(t, 3, &testCluster{timing: FastTiming(), tls: loadTLS(t, ca, "manager")})
		victim := tc.follower()
		mustApply(t, victim, fsm.SetCache{Config: fsm.CacheConfig{CapacityMB: 8, Policy: fsm.PolicyLRU}})
		tc.converged("cache 8 MB", cacheIs(8, fsm.PolicyLRU))
		before, term, last := victim.c.State(), victim.c.Status().Term, victim.c.Raft().LastIndex()

		withCert := func(dir, name string) *tls.Config {
			c := loadTLS(t, dir, name).ClientConfig()
			c.InsecureSkipVerify, c.VerifyConnection, c.RootCAs = true, nil, nil
			return c
		}
		attackers := map[string]*tls.Config{
			"plain TCP":                            nil,
			"TLS without a certificate":            {InsecureSkipVerify: true},
			"a node certificate of the cluster CA": withCert(ca, "node"),
			"a frontend certificate":               withCert(ca, "frontend"),
			"a manager certificate of another CA":  withCert(other, "manager"),
		}
		for name, cfg := range attackers {
			for what, data := range map[string][]byte{"DeleteAll": deleteAll, "unknown type": unknown} {
				if err := forge(t, cfg, victim, data); err == nil {
					t.Errorf("%s, %s: the forged AppendEntries was answered, want the connection refused", name, what)
				}
			}
		}
		// The group goes on, and the victim took nothing.
		mustApply(t, tc.leader(), fsm.SetCache{Config: fsm.CacheConfig{CapacityMB: 9, Policy: fsm.PolicyLRU}})
		tc.converged("cache 9 MB", cacheIs(9, fsm.PolicyLRU))
		after := victim.c.State()
		if after.DeleteGen != before.DeleteGen {
			t.Errorf("victim's DeleteGen %d -> %d: a forged entry was applied", before.DeleteGen, after.DeleteGen)
		}
		if got := victim.c.Status().Term; got != term {
			t.Errorf("victim's term %d -> %d: a forged message was read", term, got)
		}
		if got := victim.c.Raft().LastIndex(); got < last+1 {
			t.Errorf("victim's last index %d, want the real write after %d", got, last)
		}
	})
}
