package hosts

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"

	"github.com/memcache/memcache/auth"
	"github.com/memcache/memcache/cluster"
	"github.com/memcache/memcache/fsm"
	"github.com/memcache/memcache/internal/netns"
	"github.com/memcache/memcache/internal/pool"
	"github.com/memcache/memcache/node"
	"github.com/memcache/memcache/pki"
)

// An attacker in these tests is a process on a host of its own (a spare
// host on the cluster's bridge: it reaches every member's address, but has
// no certificate of the cluster CA, no gossip key, no cluster secret and
// no admin token). What it
// tries is what issue 9 describes an unauthenticated peer doing, over the
// network rather than in one process (cluster/stream_test.go has the
// in-process Raft attack).

// Rogue members' names sort before every real node's, so that a pool that
// grows takes a rogue first if it sees one (Static takes idle nodes by ID).
const (
	rogueNoKey   = "a-rogue"          // --insecure, no gossip key
	rogueOtherCA = "a-rogue-other-ca" // TLS of another CA, a wrong gossip key
	controlNode  = "n2"               // a real node, started with the rogues
)

// unknownCommand is an entry of a command type no build knows, without
// fsm.IgnoreUnknownFlag: a replica that applied it would halt.
var unknownCommand = []byte{0x6E, 1}

// credential is what an attacker connects with.
type credential struct {
	name          string
	tls           bool
	cert, keyFile string
}

// attackerHost is the attacker's host and what it holds.
type attackerHost struct {
	*netns.Host
	otherCA string       // a CA of its own, with certificates manager and node
	creds   []credential // plain, TLS without a certificate, another CA's, a stolen node's
}

// TestAttackerWithoutClusterCredentials starts the cluster (3 managers, 2
// nodes, a frontend) and an attacker host beside it, and checks that the
// attacker
//
//   - cannot join gossip: a rogue `memcache node` without the gossip key,
//     and one with TLS of another CA and a wrong key, started together with
//     a real node, are refused by every manager (logged), never become
//     members, and a pool that grows takes the real node;
//   - cannot append to Raft: a forged AppendEntries (a DeleteAll, and an
//     entry of an unknown type) as a self-declared leader of the next term
//     whose previous entry is a follower's last, sent with hashicorp/raft's
//     transport over plain TCP, TLS without a certificate, TLS with a
//     manager certificate of another CA and TLS with a node certificate of
//     the cluster's CA, fails at the connection; the follower logs each
//     refused handshake, and its term, last index and delete generation
//     stay as they were;
//   - cannot call an internal route: the cluster listeners of a manager, a
//     node and the frontend refuse its handshake without a certificate of
//     the CA, answer 401 to a node certificate of the CA without the cluster
//     secret, and the public listeners do not serve the internal routes;
//
// and that afterwards a write commits, every replica holds the same state,
// and the image uploaded before is still served. It also checks that every
// address the members advertise is a host's bridge address, never a
// loopback one.
func TestAttackerWithoutClusterCredentials(t *testing.T) {
	s := newSystemWith(t, systemOptions{Spare: 2})
	attacker, control := s.spare[0], s.spare[1]
	t.Logf("attacker on %s (%s), control node on %s (%s)", attacker, attacker.Addr(), control, control.Addr())
	begin := time.Now()

	atk := s.newAttacker(attacker)
	// The control node is a real one: a certificate of the CA, the key.
	s.provision("tls", []string{fmt.Sprintf("TLS_HOSTS=%s:node:%s", controlNode, control.Addr())})

	// The scaler is kept quiet (it records a decision every interval), so
	// that only the test writes to Raft while it watches the indexes.
	for i, h := range s.managers {
		s.startRole(fmt.Sprintf("m%d", i), "manager", h, append(s.managerEnv(i), "MEMCACHE_SCALER_INTERVAL=1h"))
	}
	for i, h := range s.nodes {
		s.startRole(fmt.Sprintf("n%d", i), "node", h, s.nodeEnv(i))
	}
	s.startRole("fe", "frontend", s.frontend, s.frontendEnv())
	leader := s.waitRaft()
	v := s.waitPool()
	s.waitNodesFollow(v)
	fe := frontendURL(s.frontend)
	s.waitFor(startWait, "the frontend to be ready", func() error {
		code, body, err := s.get(fe+"/readyz", nil)
		if err != nil || code != 200 {
			return fmt.Errorf("%d %v %s", code, err, body)
		}
		return nil
	})
	t.Logf("cluster formed in %v (leader %s)", time.Since(begin).Round(time.Millisecond), leader.ID)
	img := pngImage(t)
	key := "before the attack " + randomHex(4)
	s.waitFor(wait, "an upload", func() error {
		if code, body, err := s.upload(key, img); err != nil || code != 200 {
			return fmt.Errorf("%d %v %s", code, err, body)
		}
		return nil
	})
	s.checkNoLoopback(leader, v)

	s.attackGossip(atk, control)
	s.attackRaft(atk)
	s.attackHTTP(atk, key)

	// The cluster goes on: a write commits, every replica holds the same
	// state, and the image is still there.
	s.waitConverged()
	s.checkImage(key, img)
	t.Logf("attacks refused, cluster unchanged and working, in %v", time.Since(begin).Round(time.Millisecond))
}

// checkNoLoopback checks that what the members advertise is hosts' bridge
// addresses: the Raft peers and leader, the pool's node URLs, the gossip
// members every manager saw join, and the managers the nodes and the
// frontend watch. (A loopback address would not work across hosts anyway,
// as each host has a loopback of its own; the check documents that none is
// advertised.)
func (s *system) checkNoLoopback(leader cluster.Status, v pool.View) {
	s.t.Helper()
	check := func(what, hostport string) {
		s.t.Helper()
		host, _, err := net.SplitHostPort(hostport)
		if err != nil {
			s.t.Errorf("%s %q: %v", what, hostport, err)
			return
		}
		a, err := netip.ParseAddr(host)
		if err != nil || a.IsLoopback() || !s.net.Subnet().Contains(a) {
			s.t.Errorf("%s is %q, want an address of the hosts' subnet %s", what, hostport, s.net.Subnet())
		}
	}
	checkURL := func(what, raw string) {
		s.t.Helper()
		u, err := url.Parse(raw)
		if err != nil {
			s.t.Errorf("%s %q: %v", what, raw, err)
			return
		}
		check(what, u.Host)
	}
	check("the Raft leader's address", leader.Leader.Address)
	for _, p := range leader.Peers {
		check("Raft peer "+p.ID+"'s address", p.Address)
	}
	for _, m := range v.Members {
		checkURL("pool member "+m.ID+"'s URL", m.HTTP)
	}
	joins, watches := 0, 0
	for name, p := range s.procs {
		for _, a := range logValues(p.Log(), `msg="member join"`, "addr") {
			check(name+"'s gossip member", a)
			joins++
		}
		for _, u := range logValues(p.Log(), `msg="watching pool state"`, "manager") {
			checkURL(name+"'s watched manager", u)
			watches++
		}
	}
	// Each manager saw at least the managers join (Raft bootstraps from
	// them); each node and the frontend watch a manager.
	if joins < numManagers*numManagers || watches < numNodes+1 {
		s.t.Errorf("found %d gossip joins and %d watches in the logs, want at least %d and %d: has the log format changed?",
			joins, watches, numManagers*numManagers, numNodes+1)
	}
}

// logValues returns the values of key in the text-format log lines of log
// that contain marker.
func logValues(log, marker, key string) []string {
	re := regexp.MustCompile(`(?:^|\s)` + regexp.QuoteMeta(key) + `=("(?:[^"\\]|\\.)*"|\S+)`)
	var out []string
	for _, line := range strings.Split(log, "\n") {
		if !strings.Contains(line, marker) {
			continue
		}
		if m := re.FindStringSubmatch(line); m != nil {
			out = append(out, strings.Trim(m[1], `"`))
		}
	}
	return out
}

// countLines counts the lines of log that contain every one of parts.
func countLines(log string, parts ...string) int {
	n := 0
	for _, line := range strings.Split(log, "\n") {
		if !slices.ContainsFunc(parts, func(p string) bool { return !strings.Contains(line, p) }) {
			n++
		}
	}
	return n
}

// attackGossip starts two rogue nodes on the attacker's host and a real
// one on the control host at the same time, waits until every manager has
// seen the real node join and has refused each rogue (or, if the defence
// failed, seen it join), then checks that no rogue is a member and that a
// pool that grows by one takes the real node.
func (s *system) attackGossip(attacker *attackerHost, control *netns.Host) {
	t := s.t
	t.Helper()
	wrongKey := make([]byte, 32)
	rand.Read(wrongKey)
	otherCert, otherKey := pki.CertFiles(attacker.otherCA, "node")
	join := strings.Join(s.managerGossip(), ",")
	a := attacker.Addr().String()
	rogueArgs := map[string][]string{
		rogueNoKey: {"node", "--name", rogueNoKey, "--insecure",
			"--http-addr", a + ":7100", "--gossip-addr", a + ":7946", "--join", join},
		rogueOtherCA: {"node", "--name", rogueOtherCA,
			"--tls-ca", filepath.Join(attacker.otherCA, pki.CAFile), "--tls-cert", otherCert, "--tls-key", otherKey,
			"--gossip-key", base64.StdEncoding.EncodeToString(wrongKey),
			"--http-addr", a + ":7101", "--gossip-addr", a + ":7947", "--join", join},
	}
	s.startRole(controlNode, "node", control, s.roleEnv(control, controlNode))
	for name, args := range rogueArgs {
		s.procs[name] = attacker.Start(s.bin, args...)
	}
	refusal := map[string]string{
		rogueNoKey:   "remote state is not encrypted",
		rogueOtherCA: "no installed keys could decrypt",
	}
	from := "from=" + a + ":"
	joined := func(log, id string) bool { return countLines(log, `msg="member join"`, "id="+id+" ") > 0 }
	s.waitFor(wait, "every manager to see the control node join and each rogue refused or joined", func() error {
		for i := range s.managers {
			log := s.procs[fmt.Sprintf("m%d", i)].Log()
			if !joined(log, controlNode) {
				return fmt.Errorf("m%d has not seen %s join", i, controlNode)
			}
			for id, msg := range refusal {
				if !joined(log, id) && countLines(log, msg, from) == 0 {
					return fmt.Errorf("m%d has neither refused nor admitted %s", i, id)
				}
			}
		}
		return nil
	})
	for i := range s.managers {
		log := s.procs[fmt.Sprintf("m%d", i)].Log()
		for id, msg := range refusal {
			if joined(log, id) {
				t.Errorf("m%d saw rogue %s join gossip", i, id)
			} else {
				t.Logf("m%d refused %s %d times (%q)", i, id, countLines(log, msg, from), msg)
			}
		}
	}

	// Grow the pool by one: Static takes the first idle node by ID, which
	// would be a rogue had one joined.
	req, _ := http.NewRequest(http.MethodPost, managerURL(s.managers[0])+"/api/configure_cache?mode=manual&numNodes=3", nil)
	if code, body, err := s.do(req, nil); err != nil || code != 200 {
		t.Fatalf("growing the pool to 3: %d %v %s", code, err, body)
	}
	var got []string
	s.waitFor(wait, "the pool to grow to three nodes", func() error {
		var v pool.View
		code, body, err := s.get(managerClusterURL(s.managers[0])+"/v1/pool", &v)
		if err != nil || code != 200 {
			return fmt.Errorf("%d %v %s", code, err, body)
		}
		got = got[:0]
		for _, m := range v.Members {
			got = append(got, m.ID+"="+m.HTTP)
		}
		if len(got) < 3 {
			return fmt.Errorf("pool %v", got)
		}
		return nil
	})
	slices.Sort(got)
	want := []string{"n0=" + nodeURL(s.nodes[0]), "n1=" + nodeURL(s.nodes[1]), controlNode + "=" + nodeURL(control)}
	if !slices.Equal(got, want) {
		t.Errorf("pool grown to %v, want %v", got, want)
	}
	// The rogue without TLS serves plain HTTP: it never got a pool.
	var r node.Regions
	if code, body, err := s.get("http://"+attacker.HostPort(7100)+"/regions", &r); err != nil || code != 200 || r.Epoch != 0 {
		t.Errorf("rogue %s's /regions: %d %v %s, want epoch 0 (no pool ever reached it)", rogueNoKey, code, err, body)
	}
}

// newAttacker makes the attacker's credentials for host h: a CA of its
// own with a manager and a node certificate, and a node certificate of the
// cluster's CA, as if stolen from a node.
func (s *system) newAttacker(h *netns.Host) *attackerHost {
	s.t.Helper()
	a := &attackerHost{Host: h, otherCA: filepath.Join(s.dir, "attacker-ca")}
	if err := pki.CreateCA(a.otherCA, time.Hour); err != nil {
		s.t.Fatal(err)
	}
	for _, r := range []pki.Role{pki.RoleManager, pki.RoleNode} {
		if err := pki.CreateCert(a.otherCA, pki.CertRequest{Role: r, Hosts: []string{h.Addr().String()}}); err != nil {
			s.t.Fatal(err)
		}
	}
	if err := pki.CreateCert(s.tlsDir, pki.CertRequest{Name: "stolen-node", Role: pki.RoleNode, Hosts: []string{h.Addr().String()}}); err != nil {
		s.t.Fatal(err)
	}
	otherCert, otherKey := pki.CertFiles(a.otherCA, "manager")
	stolenCert, stolenKey := pki.CertFiles(s.tlsDir, "stolen-node")
	a.creds = []credential{
		{name: "plain"},
		{name: "TLS without a certificate", tls: true},
		{name: "TLS with a manager certificate of another CA", tls: true, cert: otherCert, keyFile: otherKey},
		{name: "TLS with a node certificate of the cluster CA", tls: true, cert: stolenCert, keyFile: stolenKey},
	}
	return a
}

// stolen reports whether c is the stolen certificate of the cluster's CA.
func (c credential) stolen() bool { return strings.Contains(c.cert, "stolen-node") }

// raftView is what the Raft attack must not change on its victim.
type raftView struct {
	term, last, deleteGen uint64
	leader                string
}

// raftViewOf reads h's Raft status (with the admin token, as the attacker
// of the issue read it from the then-open endpoint) and its pool view.
func (s *system) raftViewOf(h *netns.Host, clusterURL string) (raftView, cluster.Status, error) {
	var st cluster.Status
	if code, body, err := s.get(managerURL(h)+"/raft/status", &st); err != nil || code != 200 {
		return raftView{}, st, fmt.Errorf("%s/raft/status: %d %v %s", managerURL(h), code, err, body)
	}
	var v pool.View
	if code, body, err := s.get(clusterURL+"/v1/pool", &v); err != nil || code != 200 {
		return raftView{}, st, fmt.Errorf("%s/v1/pool: %d %v %s", clusterURL, code, err, body)
	}
	return raftView{term: st.Term, last: st.LastLogIndex, deleteGen: v.DeleteGen, leader: st.Leader.ID}, st, nil
}

// follower returns a manager other than not that follows a leader.
func (s *system) follower(not *netns.Host) (*netns.Host, int) {
	s.t.Helper()
	var (
		victim *netns.Host
		index  int
	)
	s.waitFor(wait, "a follower with a leader", func() error {
		for i, h := range s.managers {
			var st cluster.Status
			if h == not {
				continue
			}
			if code, _, err := s.get(managerURL(h)+"/raft/status", &st); err == nil && code == 200 && st.State == "Follower" && st.Leader.ID != "" {
				victim, index = h, i
				return nil
			}
		}
		return fmt.Errorf("no follower with a leader")
	})
	return victim, index
}

// waitSettled waits until no write is in flight: every replica has
// appended and applied the same last index.
func (s *system) waitSettled() {
	s.t.Helper()
	s.waitFor(wait, "every replica to hold and apply the same last index", func() error {
		var got []string
		indexes := map[uint64]bool{}
		for i, h := range s.managers {
			var st cluster.Status
			if code, body, err := s.get(managerURL(h)+"/raft/status", &st); err != nil || code != 200 {
				return fmt.Errorf("m%d: %d %v %s", i, code, err, body)
			}
			got = append(got, fmt.Sprintf("m%d last %d applied %d", i, st.LastLogIndex, st.AppliedIndex))
			indexes[st.LastLogIndex], indexes[st.AppliedIndex] = true, true
		}
		if len(indexes) != 1 {
			return fmt.Errorf("%s", strings.Join(got, ", "))
		}
		return nil
	})
}

// forgeries are the Raft attempts: every credential with each payload,
// against target as its status st says it stands.
func forgeries(attacker *attackerHost, creds []credential, target *netns.Host, id string, st cluster.Status) []attempt {
	deleteAll, err := fsm.Encode(fsm.DeleteAll{})
	if err != nil {
		panic(err)
	}
	var out []attempt
	for _, c := range creds {
		for _, p := range []struct {
			name string
			data []byte
		}{{"DeleteAll", deleteAll}, {"unknown command type", unknownCommand}} {
			out = append(out, attempt{Name: c.name + ", " + p.name, TLS: c.tls, CertFile: c.cert, KeyFile: c.keyFile,
				Raft: &forgedAppend{Target: target.HostPort(raftPort), TargetID: id, Listen: attacker.HostPort(0),
					Term: st.Term, LastIndex: st.LastLogIndex, Data: p.data}})
		}
	}
	return out
}

// attackRaft sends the forged entries to a follower from the attacker's
// host and checks that every one was refused at the handshake and changed
// nothing.
func (s *system) attackRaft(attacker *attackerHost) {
	t := s.t
	t.Helper()
	victim, i := s.follower(nil)
	id := fmt.Sprintf("m%d", i)
	s.waitSettled()
	before, st, err := s.raftViewOf(victim, managerClusterURL(victim))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("victim %s: term %d, last index %d, delete generation %d", id, before.term, before.last, before.deleteGen)
	attempts := forgeries(attacker, attacker.creds, victim, id, st)
	for j, o := range s.attack(attacker.Host, attempts) {
		if o.Err == "" {
			t.Errorf("%s: the forged AppendEntries was answered (success %v, term %d), want the connection refused", attempts[j].Name, o.Success, o.Term)
		} else {
			t.Logf("%s: refused: %s", attempts[j].Name, o.Err)
		}
	}
	// The victim's stream layer refused each one at the handshake.
	p := s.procs[id]
	s.waitFor(wait, "the victim to log every refused Raft connection", func() error {
		if n := countLines(p.Log(), "raft connection refused", "remote="+attacker.Addr().String()+":"); n < len(attempts) {
			return fmt.Errorf("%d refusals logged, want %d", n, len(attempts))
		}
		return nil
	})
	after, _, err := s.raftViewOf(victim, managerClusterURL(victim))
	if err != nil {
		t.Fatal(err)
	}
	// The forged entries would have raised the term (a self-declared
	// leader of term+1) or the delete generation. The last index is not
	// compared: on a busy machine the real leader may commit an entry of
	// its own meanwhile; that the victim holds nothing the others do not
	// is checked after the attacks (every replica's view is the same).
	if after.term != before.term || after.deleteGen != before.deleteGen || after.leader != before.leader || after.last < before.last {
		t.Errorf("victim %s after the attack: %+v, want the term, delete generation and leader unchanged: %+v", id, after, before)
	}
}

// attackHTTP calls internal routes from the attacker's host: the cluster
// listeners refuse the handshake without a certificate of the CA (plain
// HTTP gets the TLS server's 400), a stolen node certificate without the
// cluster secret gets 401 and with it 403 (but for the watch), and the
// public listeners do not serve them.
func (s *system) attackHTTP(attacker *attackerHost, key string) {
	t := s.t
	t.Helper()
	deleteAll, _ := fsm.Encode(fsm.DeleteAll{})
	m, n := s.managers[0].HostPort(managerClusterPort), s.nodes[0].HostPort(nodeHTTPPort)
	f := s.frontend.HostPort(frontendClusterPort)
	internal := []struct{ method, hostport, path, body string }{
		{http.MethodGet, m, "/v1/pool", ""},
		{http.MethodPost, m, "/internal/v1/apply", string(deleteAll)},
		{http.MethodGet, n, "/cache/" + url.PathEscape(key), ""},
		{http.MethodGet, n, "/stats", ""},
		{http.MethodDelete, n, "/cache", ""},
		{http.MethodPost, f, "/internal/v1/delete_all", `{"generation":1}`},
	}
	var attempts []attempt
	var wants []func(outcome) bool
	refused := func(o outcome) bool {
		return o.Err != "" || (o.Status == http.StatusBadRequest && strings.Contains(o.Body, "HTTPS server"))
	}
	status := func(codes ...int) func(outcome) bool {
		return func(o outcome) bool { return o.Err == "" && slices.Contains(codes, o.Status) }
	}
	for _, c := range attacker.creds {
		for _, r := range internal {
			scheme := "http" // plain: HTTP to the TLS port
			if c.tls {
				scheme = "https"
			}
			attempts = append(attempts, attempt{Name: fmt.Sprintf("%s, %s %s://%s%s", c.name, r.method, scheme, r.hostport, r.path),
				TLS: c.tls, CertFile: c.cert, KeyFile: c.keyFile, Method: r.method, URL: scheme + "://" + r.hostport + r.path, Body: r.body})
			if c.stolen() {
				wants = append(wants, status(http.StatusUnauthorized))
				// With the cluster secret leaked too, a node's certificate
				// still may not apply commands, call nodes or have a
				// frontend delete everything (403); it may watch the pool,
				// as nodes do.
				want := status(http.StatusForbidden)
				if r.path == "/v1/pool" {
					want = status(http.StatusOK)
				}
				attempts = append(attempts, attempt{Name: fmt.Sprintf("%s and the cluster secret, %s %s%s", c.name, r.method, r.hostport, r.path),
					TLS: true, CertFile: c.cert, KeyFile: c.keyFile, Method: r.method, URL: "https://" + r.hostport + r.path, Body: r.body,
					Header: map[string]string{auth.Header: s.secrets.clusterSecret}})
				wants = append(wants, want)
			} else {
				wants = append(wants, refused)
			}
		}
	}
	public := []struct {
		method, url, body string
		want              []int
	}{
		{http.MethodPost, frontendURL(s.frontend) + "/internal/v1/delete_all", `{"generation":1}`, []int{404, 405}},
		{http.MethodGet, managerURL(s.managers[0]) + "/v1/pool", "", []int{404, 405}},
		{http.MethodPost, managerURL(s.managers[0]) + "/internal/v1/apply", string(deleteAll), []int{404, 405}},
		{http.MethodPost, managerURL(s.managers[0]) + "/api/delete_all", "", []int{401}},
		{http.MethodPost, frontendURL(s.frontend) + "/api/delete_all", "", []int{401}},
	}
	for _, r := range public {
		attempts = append(attempts, attempt{Name: r.method + " " + r.url, Method: r.method, URL: r.url, Body: r.body})
		wants = append(wants, status(r.want...))
	}
	for j, o := range s.attack(attacker.Host, attempts) {
		if !wants[j](o) {
			t.Errorf("%s: got status %d %q, error %q; want it refused", attempts[j].Name, o.Status, o.Body, o.Err)
		}
	}
}

// waitConverged commits a write (the cache capacity) and waits until
// every replica has applied it, then checks that they hold the same pool
// view and that none has halted.
func (s *system) waitConverged() {
	t := s.t
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, managerURL(s.managers[0])+"/api/configure_cache?cacheSize=48", nil)
	if code, body, err := s.do(req, nil); err != nil || code != 200 {
		t.Fatalf("a write after the attacks: %d %v %s", code, err, body)
	}
	views := make([]pool.View, len(s.managers))
	s.waitFor(wait, "every replica to apply the write", func() error {
		for i, h := range s.managers {
			var v pool.View
			code, body, err := s.get(managerClusterURL(h)+"/v1/pool", &v)
			if err != nil || code != 200 || v.Cache.CapacityMB != 48 {
				return fmt.Errorf("m%d: %d %v %s", i, code, err, body)
			}
			views[i] = v
		}
		return nil
	})
	for i, v := range views[1:] {
		if !reflect.DeepEqual(v, views[0]) {
			t.Errorf("m%d's pool view %+v differs from m0's %+v", i+1, v, views[0])
		}
	}
	for i, h := range s.managers {
		var st cluster.Status
		if code, body, err := s.get(managerURL(h)+"/raft/status", &st); err != nil || code != 200 || st.Halted != nil {
			t.Errorf("m%d's status: %d %v %s, want it applying", i, code, err, body)
		}
	}
}

// checkImage checks that the frontend still serves key with img.
func (s *system) checkImage(key string, img []byte) {
	s.t.Helper()
	req, _ := http.NewRequest(http.MethodPost, frontendURL(s.frontend)+"/api/key/"+url.PathEscape(key), nil)
	var read struct {
		Success string `json:"success"`
		Content string `json:"content"`
	}
	if code, body, err := s.do(req, &read); err != nil || code != 200 || read.Success != "true" {
		s.t.Fatalf("reading %q back: %d %v %s, want it still there", key, code, err, body)
	}
	if got, err := base64.StdEncoding.DecodeString(read.Content); err != nil || !bytes.Equal(got, img) {
		s.t.Fatalf("%q reads back as %d bytes (%v), want the %d uploaded", key, len(got), err, len(img))
	}
}

// TestForgedAppendEntriesAreTakenByInsecureManagers is the positive
// control of the Raft attack: the same attacker program, from the same
// kind of host, against managers started with MEMCACHE_INSECURE=true
// (Raft over plain TCP), gets a follower to apply its forged DeleteAll and
// another to halt on its entry of an unknown type. It shows that the
// refusals of TestAttackerWithoutClusterCredentials are the TLS stream
// layer's doing, not a broken attack.
func TestForgedAppendEntriesAreTakenByInsecureManagers(t *testing.T) {
	s := newSystemWith(t, systemOptions{Spare: 1})
	attacker := s.newAttacker(s.spare[0])
	plain := attacker.creds[:1]
	for i, h := range s.managers {
		s.startRole(fmt.Sprintf("m%d", i), "manager", h, append(s.managerEnv(i), "MEMCACHE_SCALER_INTERVAL=1h",
			"MEMCACHE_INSECURE=true", "MEMCACHE_TLS_CA=", "MEMCACHE_TLS_CERT=", "MEMCACHE_TLS_KEY=",
			"MEMCACHE_ADVERTISE_CLUSTER=http://"+h.HostPort(managerClusterPort)))
	}
	s.waitRaft()
	clusterURL := func(h *netns.Host) string { return "http://" + h.HostPort(managerClusterPort) }

	// forge sends one payload to a follower other than not until the
	// follower shows took, and returns it. The first forgery causes
	// elections: a forged entry may be refused (a follower that has just
	// changed term refuses a stale previous entry) or appended and then
	// overwritten by the real leader before it is applied, so a forgery
	// that has not taken within forgeTook is sent again.
	const forgeTook = 15 * time.Second
	forge := func(payload int, not *netns.Host, took func(h *netns.Host, before raftView) error) *netns.Host {
		var (
			victim *netns.Host
			before raftView
			sent   time.Time
		)
		s.waitFor(3*wait, "a forged entry taken", func() error {
			if victim != nil {
				err := took(victim, before)
				if err == nil {
					return nil
				}
				if time.Since(sent) < forgeTook {
					return err
				}
				victim = nil // overwritten, or refused after all: forge again
			}
			h, i := s.follower(not)
			v, st, err := s.raftViewOf(h, clusterURL(h))
			if err != nil {
				return err
			}
			a := forgeries(attacker, plain, h, fmt.Sprintf("m%d", i), st)[payload]
			o := s.attack(attacker.Host, []attempt{a})[0]
			if o.Err != "" || !o.Success {
				return fmt.Errorf("%s to m%d: %+v", a.Name, i, o)
			}
			victim, before, sent = h, v, time.Now()
			return fmt.Errorf("%s appended at m%d, not taken yet", a.Name, i)
		})
		t.Logf("%s took the forged entry (term %d, after index %d)", victim, before.term+1, before.last)
		return victim
	}

	victim := forge(0, nil, func(h *netns.Host, before raftView) error {
		after, _, err := s.raftViewOf(h, clusterURL(h))
		if err != nil || after.deleteGen <= before.deleteGen {
			return fmt.Errorf("delete generation %d, was %d (%v)", after.deleteGen, before.deleteGen, err)
		}
		return nil
	})
	t.Logf("%s applied the forged DeleteAll", victim)
	var st cluster.Status
	victim2 := forge(1, victim, func(h *netns.Host, _ raftView) error {
		if code, body, err := s.get(managerURL(h)+"/raft/status", &st); err != nil || code != 200 || st.Halted == nil {
			return fmt.Errorf("%d %v %s", code, err, body)
		}
		return nil
	})
	t.Logf("%s halted on the forged entry of an unknown type: %+v", victim2, *st.Halted)
}

// The attacker program: the test binary itself, started inside the
// attacker's host (its own network namespace) with attackPlanEnv naming a
// JSON file of attempts. It runs TestAttackerProgram only, which makes
// every attempt from that host, prints the outcomes on one line after
// attackResultsPrefix and exits. Run any other way, TestAttackerProgram
// does nothing.

// attackPlanEnv names the attacker program's plan file.
const attackPlanEnv = "MEMCACHE_TEST_ATTACK_PLAN"

// attackResultsPrefix starts the attacker program's line of outcomes.
const attackResultsPrefix = "attack-outcomes: "

// attempt is one thing the attacker program tries: a forged Raft
// AppendEntries (Raft set) or an HTTP request (Method and URL set).
type attempt struct {
	Name string `json:"name"`
	// TLS makes the connection TLS without verifying the server (an
	// attacker does not care who answers); without it, plain TCP or HTTP.
	TLS bool `json:"tls,omitempty"`
	// CertFile and KeyFile, if set, are the client certificate the
	// attacker presents.
	CertFile string `json:"cert_file,omitempty"`
	KeyFile  string `json:"key_file,omitempty"`

	Raft *forgedAppend `json:"raft,omitempty"`

	Method string            `json:"method,omitempty"`
	URL    string            `json:"url,omitempty"`
	Body   string            `json:"body,omitempty"`
	Header map[string]string `json:"header,omitempty"`
}

// forgedAppend is an AppendEntries as a self-declared leader of term
// Term+1 whose previous entry is the target's last (LastIndex at Term),
// carrying Data as a command committed at once.
type forgedAppend struct {
	Target    string `json:"target"` // Raft address
	TargetID  string `json:"target_id"`
	Listen    string `json:"listen"` // the attacker transport's own address
	Term      uint64 `json:"term"`
	LastIndex uint64 `json:"last_index"`
	Data      []byte `json:"data"`
}

// outcome is what one attempt got: an error (nothing answered), or an
// answer: the AppendEntries response, or the HTTP status and body.
type outcome struct {
	Name    string `json:"name"`
	Err     string `json:"err,omitempty"`
	Success bool   `json:"success,omitempty"` // AppendEntries: the entry was appended
	Term    uint64 `json:"term,omitempty"`    // AppendEntries: the target's term
	Status  int    `json:"status,omitempty"`
	Body    string `json:"body,omitempty"`
}

// TestAttackerProgram is the attacker program when attackPlanEnv is set
// (see above); otherwise it does nothing.
func TestAttackerProgram(t *testing.T) {
	plan := os.Getenv(attackPlanEnv)
	if plan == "" {
		return
	}
	b, err := os.ReadFile(plan)
	if err != nil {
		fmt.Fprintln(os.Stderr, "attacker:", err)
		os.Exit(2)
	}
	var attempts []attempt
	if err := json.Unmarshal(b, &attempts); err != nil {
		fmt.Fprintln(os.Stderr, "attacker:", err)
		os.Exit(2)
	}
	var out []outcome
	for _, a := range attempts {
		o := a.run()
		o.Name = a.Name
		out = append(out, o)
	}
	line, _ := json.Marshal(out)
	fmt.Println(attackResultsPrefix + string(line))
	os.Exit(0) // before the testing package reports, and before TestMain's cleanup
}

// tlsConfig is the attacker's client TLS configuration.
func (a attempt) tlsConfig() (*tls.Config, error) {
	cfg := &tls.Config{InsecureSkipVerify: true}
	if a.CertFile != "" {
		pair, err := tls.LoadX509KeyPair(a.CertFile, a.KeyFile)
		if err != nil {
			return nil, err
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	return cfg, nil
}

func (a attempt) run() outcome {
	var cfg *tls.Config
	if a.TLS {
		c, err := a.tlsConfig()
		if err != nil {
			return outcome{Err: "attacker setup: " + err.Error()}
		}
		cfg = c
	}
	if a.Raft != nil {
		return a.Raft.send(cfg)
	}
	tr := &http.Transport{TLSClientConfig: cfg, DisableKeepAlives: true}
	if cfg == nil {
		tr.TLSClientConfig = &tls.Config{InsecureSkipVerify: true} // for https URLs only
	}
	client := &http.Client{Transport: tr, Timeout: 15 * time.Second}
	req, err := http.NewRequest(a.Method, a.URL, strings.NewReader(a.Body))
	if err != nil {
		return outcome{Err: "attacker setup: " + err.Error()}
	}
	for k, v := range a.Header {
		req.Header.Set(k, v)
	}
	resp, err := client.Do(req)
	if err != nil {
		return outcome{Err: err.Error()}
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	return outcome{Status: resp.StatusCode, Body: string(body)}
}

// attackStream is a Raft stream layer that dials plain TCP (cfg nil) or
// TLS with cfg.
type attackStream struct {
	cfg *tls.Config
	ln  net.Listener
}

func (s attackStream) Accept() (net.Conn, error) { return s.ln.Accept() }
func (s attackStream) Close() error              { return s.ln.Close() }
func (s attackStream) Addr() net.Addr            { return s.ln.Addr() }
func (s attackStream) Dial(addr raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	d := &net.Dialer{Timeout: timeout}
	if s.cfg == nil {
		return d.Dial("tcp", string(addr))
	}
	return tls.DialWithDialer(d, "tcp", string(addr), s.cfg)
}

// send makes the forged AppendEntries with hashicorp/raft's own network
// transport, as a rogue Raft server would.
func (f *forgedAppend) send(cfg *tls.Config) outcome {
	ln, err := net.Listen("tcp", f.Listen)
	if err != nil {
		return outcome{Err: "attacker setup: " + err.Error()}
	}
	tr := raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream: attackStream{cfg: cfg, ln: ln}, MaxPool: 1, Timeout: 10 * time.Second,
		Logger: hclog.New(&hclog.LoggerOptions{Output: io.Discard}),
	})
	defer tr.Close()
	req := &raft.AppendEntriesRequest{
		RPCHeader:         raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax, ID: []byte("mallory"), Addr: []byte(ln.Addr().String())},
		Term:              f.Term + 1,
		PrevLogEntry:      f.LastIndex,
		PrevLogTerm:       f.Term,
		Entries:           []*raft.Log{{Index: f.LastIndex + 1, Term: f.Term + 1, Type: raft.LogCommand, Data: f.Data}},
		LeaderCommitIndex: f.LastIndex + 1,
	}
	var resp raft.AppendEntriesResponse
	if err := tr.AppendEntries(raft.ServerID(f.TargetID), raft.ServerAddress(f.Target), req, &resp); err != nil {
		return outcome{Err: err.Error()}
	}
	return outcome{Success: resp.Success, Term: resp.Term}
}

// attack runs the attacker program on host h with attempts and returns
// their outcomes, in order.
func (s *system) attack(h *netns.Host, attempts []attempt) []outcome {
	s.t.Helper()
	exe, err := os.Executable()
	if err != nil {
		s.t.Fatal(err)
	}
	plan := filepath.Join(s.t.TempDir(), "plan.json")
	b, err := json.Marshal(attempts)
	if err != nil {
		s.t.Fatal(err)
	}
	if err := os.WriteFile(plan, b, 0o600); err != nil {
		s.t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := h.Command(ctx, exe, "-test.run=^TestAttackerProgram$", "-test.count=1")
	cmd.Env = append(os.Environ(), attackPlanEnv+"="+plan)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.Output()
	if err != nil {
		s.t.Fatalf("attacker program on %s: %v\nstdout: %s\nstderr: %s", h, err, stdout, stderr.Bytes())
	}
	sc := bufio.NewScanner(bytes.NewReader(stdout))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		if line, ok := strings.CutPrefix(sc.Text(), attackResultsPrefix); ok {
			var out []outcome
			if err := json.Unmarshal([]byte(line), &out); err != nil {
				s.t.Fatalf("attacker program's outcomes: %v in %s", err, line)
			}
			if len(out) != len(attempts) {
				s.t.Fatalf("attacker program: %d outcomes for %d attempts", len(out), len(attempts))
			}
			return out
		}
	}
	s.t.Fatalf("attacker program on %s printed no outcomes\nstdout: %s\nstderr: %s", h, stdout, stderr.Bytes())
	return nil
}
