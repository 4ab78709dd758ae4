package systemtest

import (
	"bytes"
	"context"
	"crypto/md5"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime/multipart"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/memcache/memcache/cluster"
	"github.com/memcache/memcache/fsm"
	"github.com/memcache/memcache/gossip"
	"github.com/memcache/memcache/internal/pgtest"
	"github.com/memcache/memcache/internal/testbin"
	"github.com/memcache/memcache/internal/testcluster"
	"github.com/memcache/memcache/internal/waitfor"
	"github.com/memcache/memcache/node"
	"github.com/memcache/memcache/region"
)

func TestMain(m *testing.M) {
	code := m.Run()
	testbin.Remove()
	pgtest.StopServer()
	os.Exit(code)
}

// startSystem starts n manager replicas sharing one local provisioner that
// starts real node processes, with the admin token testcluster.Token.
func startSystem(t *testing.T, n int, deadGrace time.Duration) *testcluster.Cluster {
	t.Helper()
	return testcluster.Start(t, testcluster.Options{Managers: n, LocalNodes: true, DeadGrace: deadGrace, AdminToken: testcluster.Token})
}

// ruleMap is the region map the rule documented in the README ("The region
// rule") gives members, starting from prev. It is written here from that
// text, independently of region.Assign, which the managers run: with n
// members, 16 mod n of them get a quota of ceil(16/n) regions and the
// rest floor(16/n); the larger quotas go to the members that own the most
// regions in prev, ties by member order; a region stays with its owner
// while that owner is a member within its quota (so a member over quota
// gives up its highest-numbered regions); the freed regions go, in
// ascending order, to the members under quota, the first in member order
// filling up first.
func ruleMap(prev region.Map, ids []string) region.Map {
	var next region.Map
	if len(ids) == 0 {
		return next
	}
	owns := map[string]int{}
	for _, owner := range prev {
		if slices.Contains(ids, owner) {
			owns[owner]++
		}
	}
	quota := map[string]int{}
	for _, id := range ids {
		quota[id] = 16 / len(ids)
	}
	for range 16 % len(ids) { // each larger quota to the largest owner still without one
		best := ""
		for _, id := range ids {
			if quota[id] == 16/len(ids) && (best == "" || owns[id] > owns[best]) {
				best = id
			}
		}
		quota[best]++
	}
	kept := map[string]int{}
	var freed []int
	for r := range 16 {
		if owner := prev[r]; slices.Contains(ids, owner) && kept[owner] < quota[owner] {
			next[r] = owner
			kept[owner]++
		} else {
			freed = append(freed, r)
		}
	}
	for _, r := range freed {
		for _, id := range ids {
			if kept[id] < quota[id] {
				next[r] = id
				kept[id]++
				break
			}
		}
	}
	return next
}

// checkRegionRule fails unless m is the map the documented rule gives
// members from prev (ruleMap), balanced, and, prev being balanced over
// its own members, moved only what it must: growing, only the regions the
// new members take; shrinking, only the removed members' regions.
func checkRegionRule(t *testing.T, prev, m region.Map, prevMembers, members []fsm.Member) {
	t.Helper()
	var ids, prevIDs []string
	for _, mb := range members {
		ids = append(ids, mb.ID)
	}
	for _, mb := range prevMembers {
		prevIDs = append(prevIDs, mb.ID)
	}
	if want := ruleMap(prev, ids); m != want {
		t.Fatalf("region map from %q over %q: got %q, want the documented rule's %q", prev, ids, m, want)
	}
	counts := map[string]int{}
	for _, owner := range m {
		counts[owner]++
	}
	lo, hi := 16/len(ids), (16+len(ids)-1)/len(ids)
	for _, id := range ids {
		if counts[id] < lo || counts[id] > hi {
			t.Fatalf("%s owns %d regions, want %d..%d", id, counts[id], lo, hi)
		}
	}
	for r := range 16 {
		if prev[r] == m[r] {
			continue
		}
		stayed := slices.Contains(ids, prev[r])
		if len(prevIDs) > 0 && stayed && len(ids) <= len(prevIDs) {
			t.Fatalf("shrinking %q -> %q: region %d moved from %s, which stayed, to %s", prevIDs, ids, r, prev[r], m[r])
		}
		if len(prevIDs) > 0 && len(ids) > len(prevIDs) && slices.Contains(prevIDs, m[r]) {
			t.Fatalf("growing %q -> %q: region %d moved from %s to %s, not a new member", prevIDs, ids, r, prev[r], m[r])
		}
	}
}

// TestRuleMapFollowsTheREADME: the test's own reading of the rule gives the
// maps the README shows for 1, 2 and 3 nodes, and those of its text for
// shrinking and for the larger quotas.
func TestRuleMapFollowsTheREADME(t *testing.T) {
	parse := func(s string) region.Map {
		var m region.Map
		for r, c := range strings.ReplaceAll(s, " ", "") {
			if c != '.' {
				m[r] = string(c)
			}
		}
		return m
	}
	tests := []struct {
		prev, members, want string
	}{
		{"................", "A", "AAAAAAAAAAAAAAAA"},
		{"AAAAAAAAAAAAAAAA", "AB", "AAAAAAAABBBBBBBB"},
		{"AAAAAAAABBBBBBBB", "ABC", "AAAAAACCBBBBBCCC"},
		{"AAAAAACCBBBBBCCC", "BC", "BBBCCCCCBBBBBCCC"},  // A's regions, in order, to B then C
		{"AAAABBBBBBBBBBBB", "ABC", "AAAABBBBBBACCCCC"}, // B owns the most: the larger quota
		{"AAAAAAAABBBBBBBB", "BAC", "AAAAACCCBBBBBBCC"}, // a tie: B first in member order
	}
	for _, tt := range tests {
		var ids []string
		for _, c := range tt.members {
			ids = append(ids, string(c))
		}
		if got, want := ruleMap(parse(tt.prev), ids), parse(tt.want); got != want {
			t.Errorf("ruleMap(%s, %q): got %q, want %q", tt.prev, ids, got, want)
		}
	}
	for _, tt := range []struct {
		key  string
		want int
	}{{"", 0xd}, {"a", 0x0}, {"image-1", 0x7}} { // printf '%s' KEY | md5sum
		if got := regionOf(tt.key); got != tt.want {
			t.Errorf("regionOf(%q): got %d, want %d", tt.key, got, tt.want)
		}
	}
}

// regionOf is the region of key as the README defines it, the first 4 bits
// of MD5(key), computed here rather than by region.Of.
func regionOf(key string) int {
	sum := md5.Sum([]byte(key))
	return int(sum[0] >> 4)
}

// keysByRegion returns one key in each region.
func keysByRegion() [region.Count]string {
	var keys [region.Count]string
	found := 0
	for i := 0; found < region.Count; i++ {
		k := "img-" + strconv.Itoa(i)
		if r := regionOf(k); keys[r] == "" {
			keys[r] = k
			found++
		}
	}
	return keys
}

func nodeURL(st fsm.State, id string) string {
	m, _ := st.Member(id)
	return m.HTTP
}

func TestResizeWithLocalProvisionerFollowsTheRegionRule(t *testing.T) {
	tc := startSystem(t, 3, 2*time.Second)
	ms := tc.Managers
	keys := keysByRegion()
	prev := ms[0].Cluster().State()
	nodes := nodeClient(tc)
	for _, n := range []int{4, 2, 8, 1} {
		// Cache one key per region at its owner, at the current epoch.
		for r, k := range keys {
			owner := nodeURL(prev, prev.Regions[r])
			view := prev.View()
			waitfor.True(t, testcluster.Wait, "the owner to accept "+k, func() bool {
				return nodes.Put(context.Background(), owner, k, []byte("value-"+k),
					node.PutOptions{Epoch: view.Epoch, Generation: view.Generation()}) == nil
			})
		}
		var out struct {
			Nodes int `json:"nodes"`
		}
		if code := testcluster.Write(t, "POST", tc.Follower().URL()+"/v1/pool/resize", fmt.Appendf(nil, `{"nodes":%d}`, n), &out); code != 200 || out.Nodes != n {
			t.Fatalf("resize to %d through a follower: %d, %d nodes", n, code, out.Nodes)
		}
		var st fsm.State
		for _, m := range ms {
			waitfor.True(t, testcluster.Wait, "every replica to hold the new pool", func() bool {
				st = m.Cluster().State()
				return len(st.Members) == n
			})
		}
		if st.Epoch != prev.Epoch+1 {
			t.Fatalf("epoch %d after resize from %d, want %d", st.Epoch, prev.Epoch, prev.Epoch+1)
		}
		checkRegionRule(t, prev.Regions, st.Regions, prev.Members, st.Members)
		// Every member node follows the new map.
		for _, mb := range st.Members {
			var got node.Regions
			waitfor.True(t, testcluster.Wait, mb.ID+" to install epoch "+strconv.FormatUint(st.Epoch, 10), func() bool {
				return tc.Call(t, "GET", mb.HTTP+"/regions", nil, &got) == 200 && got.Epoch == st.Epoch
			})
			if got.Owners != st.Regions {
				t.Fatalf("%s holds owners %v, want %v", mb.ID, got.Owners, st.Regions)
			}
		}
		// A node that lost a region no longer serves its key; one that kept it still does.
		for r, k := range keys {
			oldOwner, newOwner := prev.Regions[r], st.Regions[r]
			u, alive := st.Member(oldOwner)
			if !alive {
				continue // removed from the pool and stopped by the provisioner
			}
			code := http.StatusOK
			if e, err := nodes.Get(context.Background(), u.HTTP, k, st.Epoch, node.GetOptions{}); err == nil {
				e.Body.Close()
			} else if se := (*node.StatusError)(nil); errors.As(err, &se) {
				code = se.Code
			} else {
				t.Fatalf("GET %s from %s: %v", k, oldOwner, err)
			}
			switch {
			case oldOwner == newOwner && code != 200:
				t.Fatalf("region %d stayed with %s but its key is gone: %d", r, oldOwner, code)
			case oldOwner != newOwner && code != http.StatusMisdirectedRequest:
				t.Fatalf("region %d moved from %s to %s, but %s answers %d for its key, want 421", r, oldOwner, newOwner, oldOwner, code)
			}
		}
		// Moved regions arrive warm: the new owner holds the key, filled
		// from the previous owner (node/handoff.go), on a grow and on a
		// shrink alike (a removed node hands off before it is stopped).
		for r, k := range keys {
			if prev.Regions[r] == st.Regions[r] {
				continue
			}
			owner := nodeURL(st, st.Regions[r])
			var got string
			waitfor.True(t, testcluster.Wait, fmt.Sprintf("region %d's key at its new owner %s", r, st.Regions[r]), func() bool {
				e, err := nodes.Get(context.Background(), owner, k, st.Epoch, node.GetOptions{})
				if err != nil {
					got = err.Error()
					return false
				}
				defer e.Body.Close()
				b, _ := io.ReadAll(e.Body)
				got = string(b)
				return got == "value-"+k
			})
		}
		// Nodes removed from the pool are stopped by the local provisioner.
		for _, old := range prev.Members {
			if _, ok := st.Member(old.ID); !ok {
				waitfor.True(t, testcluster.Wait, old.ID+" to stop", func() bool {
					// Refused: nothing listens (a plain GET of the https
					// URL would fail whether or not the node ran).
					_, err := nodes.Stats(context.Background(), old.HTTP, time.Now())
					return errors.Is(err, syscall.ECONNREFUSED)
				})
			}
		}
		prev = st
	}
}

// pidOf finds the memcache process started with --name (or --id) id.
func pidOf(t *testing.T, id string) int {
	t.Helper()
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		args := strings.Split(string(b), "\x00")
		for i := 0; i+1 < len(args); i++ {
			if (args[i] == "--name" || args[i] == "--id") && args[i+1] == id && strings.HasSuffix(args[0], "memcache") {
				pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(p)))
				return pid
			}
		}
	}
	t.Fatalf("no process with --id %s", id)
	return 0
}

func TestKilledPoolNodeIsReplacedAndItsRegionsReassigned(t *testing.T) {
	// A dead grace far beyond the test's deadline: only memberlist's
	// failure detection can trigger the reassignment.
	tc := startSystem(t, 3, time.Hour)
	ms := tc.Managers
	if code := testcluster.Write(t, "POST", ms[0].URL()+"/v1/pool/resize", []byte(`{"nodes":3}`), nil); code != 200 {
		t.Fatalf("resize to 3: %d", code)
	}
	var before fsm.State
	waitfor.True(t, testcluster.Wait, "the resize to reach replica 1", func() bool {
		before = ms[0].Cluster().State()
		return len(before.Members) == 3
	})
	victim := before.Members[1].ID
	// Failure detection needs a member to fail: wait until every replica's
	// gossip knows the victim alive (the provisioner hands a node over once
	// its own gossip sees it; a replica, the leader included, may not yet).
	waitfor.True(t, testcluster.Wait, "every replica's gossip to know "+victim+" alive", func() bool {
		for _, m := range ms {
			if !slices.Contains(m.Gossip().HTTPURLs(gossip.RoleNode), before.Members[1].HTTP) {
				return false
			}
		}
		return true
	})
	if err := syscall.Kill(pidOf(t, victim), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	var after fsm.State
	// Failure detection, then a replacement process started and joined:
	// a start-up's deadline.
	waitfor.True(t, testcluster.StartWait, "the killed node's regions to be reassigned", func() bool {
		after = ms[2].Cluster().State()
		_, still := after.Member(victim)
		return !still && len(after.Members) == 3
	})
	// Only the victim's regions moved, all to its replacement.
	replacement := after.Members[1].ID
	for r := range region.Count {
		switch before.Regions[r] {
		case victim:
			if after.Regions[r] != replacement {
				t.Errorf("region %d of the killed node went to %s, want the replacement %s", r, after.Regions[r], replacement)
			}
		default:
			if after.Regions[r] != before.Regions[r] {
				t.Errorf("region %d moved from %s to %s; only the killed node's regions should move", r, before.Regions[r], after.Regions[r])
			}
		}
	}
	if tc.Call(t, "GET", nodeURL(after, replacement)+"/healthz", nil, nil) != 200 {
		t.Errorf("replacement %s is not serving", replacement)
	}
}

// freePortBase finds a base port for `up` whose nine ports are free.
func freePortBase(t *testing.T) int {
	t.Helper()
	for try := 0; try < 20; try++ {
		// Below Linux's ephemeral range (32768 and up), so that the outgoing
		// connections of other tests (or of a second test run beside this
		// one) cannot take one of these ports between the check and up.
		base := 20000 + (os.Getpid()*7+try*337)%12000
		ok := true
		for _, off := range []int{1, 2, 3, 101, 102, 103, 201, 202, 203, 204} {
			ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", base+off))
			if err != nil {
				ok = false
				break
			}
			ln.Close()
			if off > 200 { // gossip listens on UDP too
				pc, err := net.ListenPacket("udp", fmt.Sprintf("127.0.0.1:%d", base+off))
				if err != nil {
					ok = false
					break
				}
				pc.Close()
			}
		}
		if ok {
			return base
		}
	}
	t.Fatal("no free port range for up")
	return 0
}

// upInfo is the shape of up's --info-file.
type upInfo struct {
	Managers []string `json:"managers"`
	Frontend *string  `json:"frontend"`
	Token    *string  `json:"token"`
}

// syncBuffer is a bytes.Buffer safe for a process's output goroutine and the test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// upProc is a running `memcache up`.
type upProc struct {
	cmd    *exec.Cmd
	exited chan struct{} // closed when the process has exited; err is then set
	err    error
}

// startUp starts `memcache up` and returns it and its info once ready. If
// up exits before it is ready, the test fails at once with its log's tail.
func startUp(t *testing.T, data string, base int) (*upProc, upInfo, *syncBuffer) {
	t.Helper()
	info := filepath.Join(t.TempDir(), "info.json")
	// up's own readiness deadline, generous for a busy machine; the test
	// waits a little longer, so that up's error, not a timeout, explains a
	// start that failed.
	ready := testcluster.StartWait + 30*time.Second
	cmd := exec.Command(testbin.Path(t), "up", "--data-dir", data, "--port-base", strconv.Itoa(base), "--info-file", info,
		"--frontend-addr", "127.0.0.1:0", "--ready-timeout", ready.String())
	out, logs := &syncBuffer{}, &syncBuffer{}
	cmd.Stdout = out
	cmd.Stderr = logs
	if os.Getenv("MEMCACHE_TEST_LOG") != "" {
		cmd.Stderr = io.MultiWriter(logs, os.Stderr)
	}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &upProc{cmd: cmd, exited: make(chan struct{})}
	go func() { p.err = cmd.Wait(); close(p.exited) }()
	t.Cleanup(func() { cmd.Process.Kill(); <-p.exited })
	var ui upInfo
	waitfor.True(t, ready+30*time.Second, "up to write its info file", func() bool {
		select {
		case <-p.exited:
			t.Fatalf("up exited before it was ready (%v); its log ends:\n%s", p.err, testcluster.LastLines(logs.String(), 20))
		default:
		}
		b, err := os.ReadFile(info)
		return err == nil && json.Unmarshal(b, &ui) == nil
	})
	t.Logf("up ready after %v", time.Since(start).Round(time.Millisecond))
	return p, ui, out
}

func TestUpRunsTheClusterAndRestartsWithTheSameConfig(t *testing.T) {
	data := t.TempDir()
	base := freePortBase(t)
	up, info, out := startUp(t, data, base)
	if len(info.Managers) != 3 || info.Frontend == nil || info.Token == nil || *info.Token == "" {
		t.Fatalf("info file %+v: want 3 managers, a frontend and a token", info)
	}
	// An image uploaded now is still there after the restart.
	red, err := os.ReadFile("../frontend/testdata/red.png")
	if err != nil {
		t.Fatal(err)
	}
	if code := uploadImage(t, *info.Frontend, "kept/across restarts", red); code != 200 {
		t.Fatalf("upload through up's frontend: %d", code)
	}
	if !strings.Contains(out.String(), "manager-1") || !strings.Contains(out.String(), "leader") {
		t.Errorf("table does not list the managers and a leader:\n%s", out)
	}
	// Every replica reports the same single leader.
	leaders := map[string]int{}
	for _, u := range info.Managers {
		var st cluster.Status
		if code := testcluster.CallToken(t, *info.Token, "GET", u+"/raft/status", nil, &st); code != 200 {
			t.Fatalf("raft status of %s: %d", u, code)
		}
		leaders[st.Leader.ID]++
		if len(st.Peers) != 3 {
			t.Errorf("%s lists %d peers, want 3", u, len(st.Peers))
		}
	}
	if len(leaders) != 1 || leaders[""] != 0 {
		t.Fatalf("replicas disagree on the leader: %v", leaders)
	}
	if code := testcluster.WriteToken(t, *info.Token, "PUT", info.Managers[2]+"/v1/config/cache", []byte(`{"capacity_mb":96,"policy":"RR"}`), nil); code != 200 {
		t.Fatalf("set cache config: %d", code)
	}
	if code := testcluster.WriteToken(t, *info.Token, "POST", info.Managers[1]+"/v1/pool/resize", []byte(`{"nodes":2}`), nil); code != 200 {
		t.Fatalf("resize to 2: %d", code)
	}

	// Ctrl-C stops everything cleanly.
	if err := up.cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	select {
	case <-up.exited:
		if up.err != nil {
			t.Fatalf("up exited with %v", up.err)
		}
	case <-time.After(testcluster.Wait):
		t.Fatalf("up did not stop within %v of SIGINT", testcluster.Wait)
	}

	// Restart on the same data: same config, same pool size, new live nodes.
	_, info, out = startUp(t, data, base)
	var cfg struct {
		Cache fsm.CacheConfig `json:"cache"`
	}
	if code := testcluster.WriteToken(t, *info.Token, "GET", info.Managers[0]+"/v1/config", nil, &cfg); code != 200 {
		t.Fatalf("config after restart: %d", code)
	}
	if cfg.Cache != (fsm.CacheConfig{CapacityMB: 96, Policy: "RR"}) {
		t.Errorf("cache config after restart %+v, want {96 RR}", cfg.Cache)
	}
	if n := strings.Count(out.String(), "\nnode "); n != 2 {
		t.Errorf("restarted table lists %d nodes, want 2:\n%s", n, out)
	}
	if got := getImage(t, *info.Frontend, "kept/across restarts"); !bytes.Equal(got, red) {
		t.Errorf("image after restart: %d bytes, want the %d uploaded", len(got), len(red))
	}
}

// uploadImage posts key and data to a frontend's /api/upload.
func uploadImage(t testing.TB, base, key string, data []byte) int {
	t.Helper()
	var body bytes.Buffer
	mw := multipart.NewWriter(&body)
	mw.WriteField("key", key)
	fw, _ := mw.CreateFormFile("file", "x.png")
	fw.Write(data)
	mw.Close()
	resp, err := http.Post(base+"/api/upload", mw.FormDataContentType(), &body)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// getImage reads key through a frontend's /api/key; nil if not 200.
func getImage(t testing.TB, base, key string) []byte {
	t.Helper()
	resp, err := http.Post(base+"/api/key/"+url.PathEscape(key), "", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out struct {
		Content string `json:"content"`
	}
	if resp.StatusCode != 200 || json.NewDecoder(resp.Body).Decode(&out) != nil {
		return nil
	}
	b, _ := base64.StdEncoding.DecodeString(out.Content)
	return b
}

func TestAdminAPIRefusesBadInputAndChangesNothing(t *testing.T) {
	ms := startSystem(t, 1, time.Hour).Managers
	u := ms[0].URL()
	before := ms[0].Cluster().State()
	cases := []struct {
		name, method, path, body string
		code                     int
		msg                      string
	}{
		{"capacity 0", "PUT", "/v1/config/cache", `{"capacity_mb":0}`, 400, "capacity_mb 0 is outside 1..1024"},
		{"capacity 2000", "PUT", "/v1/config/cache", `{"capacity_mb":2000}`, 400, "capacity_mb 2000 is outside 1..1024"},
		{"policy FIFO", "PUT", "/v1/config/cache", `{"policy":"FIFO"}`, 400, `"FIFO"`},
		{"malformed cache body", "PUT", "/v1/config/cache", `{"capacity_mb":`, 400, "malformed JSON body"},
		{"unknown field", "PUT", "/v1/config/cache", `{"size":3}`, 400, "unknown field"},
		{"mode sometimes", "PUT", "/v1/config/scaling", `{"mode":"sometimes"}`, 400, "sometimes"},
		{"expand ratio 1", "PUT", "/v1/config/scaling", `{"expand_ratio":1}`, 400, "expand_ratio"},
		{"shrink ratio 1", "PUT", "/v1/config/scaling", `{"shrink_ratio":1}`, 400, "shrink_ratio"},
		{"min above max", "PUT", "/v1/config/scaling", `{"min_miss_rate":0.9,"max_miss_rate":0.5}`, 400, "min_miss_rate"},
		{"9 nodes", "POST", "/v1/pool/resize", `{"nodes":9}`, 400, "9 nodes is outside 1..8"},
		{"0 nodes", "POST", "/v1/pool/resize", `{"nodes":0}`, 400, "0 nodes is outside 1..8"},
		{"no nodes", "POST", "/v1/pool/resize", `{}`, 400, "nodes is required"},
		{"nodes not a number", "POST", "/v1/pool/resize", `{"nodes":"two"}`, 400, "malformed JSON body"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest(tc.method, u+tc.path, strings.NewReader(tc.body))
			req.Header.Set("Authorization", "Bearer "+testcluster.Token)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var e struct {
				Error struct {
					Code    int    `json:"code"`
					Message string `json:"message"`
				} `json:"error"`
			}
			json.NewDecoder(resp.Body).Decode(&e)
			if resp.StatusCode != tc.code || e.Error.Code != tc.code || !strings.Contains(e.Error.Message, tc.msg) {
				t.Fatalf("got %d %+v, want %d with a message containing %q", resp.StatusCode, e.Error, tc.code, tc.msg)
			}
		})
	}
	if after := ms[0].Cluster().State(); after.Index != before.Index {
		t.Errorf("refused requests moved the state from index %d to %d", before.Index, after.Index)
	}
	// Without the admin token, the admin API refuses even valid requests.
	resp, err := http.Post(u+"/v1/pool/resize", "application/json", strings.NewReader(`{"nodes":2}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("resize without the admin token: got %d, want 401", resp.StatusCode)
	}
}
