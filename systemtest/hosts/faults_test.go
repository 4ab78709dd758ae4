package hosts

// Faults across hosts (issue 9, item 6): a leader's link cut, a cache node
// cut off by nftables, a frontend cut from the leader only. Each test starts
// the seven-host system, injects one fault with internal/netns and waits,
// with generous deadlines, for the condition that shows the cluster got
// past it.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/memcache/memcache/auth"
	"github.com/memcache/memcache/cluster"
	"github.com/memcache/memcache/internal/netns"
	"github.com/memcache/memcache/internal/pool"
	"github.com/memcache/memcache/region"
)

// formed starts every role and waits until the Raft group, the pool (both
// nodes following it) and the frontend are up. It returns the leader's
// host and status and the pool view.
func (s *system) formed() (*netns.Host, cluster.Status, pool.View) {
	s.t.Helper()
	s.start()
	st := s.waitRaft()
	v := s.waitPool()
	s.waitNodesFollow(v)
	s.waitReady(s.frontend)
	return s.managers[s.managerIndex(st.ID)], st, v
}

// managerIndex returns the index in s.managers of the replica named id
// (m0, m1, m2), failing the test for another name.
func (s *system) managerIndex(id string) int {
	s.t.Helper()
	for i := range s.managers {
		if id == fmt.Sprintf("m%d", i) {
			return i
		}
	}
	s.t.Fatalf("no manager named %q", id)
	return -1
}

// others returns s.managers without h.
func (s *system) others(h *netns.Host) []*netns.Host {
	return slices.DeleteFunc(slices.Clone(s.managers), func(o *netns.Host) bool { return o == h })
}

// status reads the whole /raft/status of manager h (with the admin token).
func (s *system) status(h *netns.Host) (cluster.Status, error) {
	var st cluster.Status
	code, body, err := s.get(managerURL(h)+"/raft/status", &st)
	if err == nil && code != 200 {
		err = fmt.Errorf("GET /raft/status on %s: %d %s", h.Addr(), code, body)
	}
	return st, err
}

// poolOn reads the pool view from manager h's cluster listener.
func (s *system) poolOn(h *netns.Host) (pool.View, error) {
	var v pool.View
	code, body, err := s.get(managerClusterURL(h)+"/v1/pool", &v)
	if err == nil && code != 200 {
		err = fmt.Errorf("GET /v1/pool on %s: %d %s", h.Addr(), code, body)
	}
	return v, err
}

// writeResult is the answer of a committed admin write.
type writeResult struct {
	Index uint64 `json:"index"`
	Epoch uint64 `json:"epoch"`
}

// sendJSON sends method url with a JSON body through do.
func (s *system) sendJSON(method, u, body string, out any) (int, []byte, error) {
	req, err := http.NewRequest(method, u, strings.NewReader(body))
	if err != nil {
		s.t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	return s.do(req, out)
}

// resize asks manager h, on its public listener, for a pool of n nodes
// (a follower forwards it to the leader, whose pool maintainer resizes).
func (s *system) resize(h *netns.Host, n int) (writeResult, error) {
	var r writeResult
	code, body, err := s.sendJSON(http.MethodPost, managerURL(h)+"/v1/pool/resize", fmt.Sprintf(`{"nodes":%d}`, n), &r)
	if err == nil && code != 200 {
		err = fmt.Errorf("resize to %d on %s: %d %s", n, h.Addr(), code, body)
	}
	return r, err
}

// setCapacity writes the cache capacity through manager h's public
// listener: PUT /v1/config/cache, a Raft write from any replica.
func (s *system) setCapacity(h *netns.Host, mb int) (writeResult, error) {
	var r writeResult
	code, body, err := s.sendJSON(http.MethodPut, managerURL(h)+"/v1/config/cache", fmt.Sprintf(`{"capacity_mb":%d}`, mb), &r)
	if err == nil && code != 200 {
		err = fmt.Errorf("PUT /v1/config/cache capacity %d on %s: %d %s", mb, h.Addr(), code, body)
	}
	return r, err
}

// capacity reads the cache capacity from manager h's own state.
func (s *system) capacity(h *netns.Host) (int, error) {
	var c struct {
		Cache pool.CacheConfig `json:"cache"`
	}
	code, body, err := s.get(managerURL(h)+"/v1/config", &c)
	if err == nil && code != 200 {
		err = fmt.Errorf("GET /v1/config on %s: %d %s", h.Addr(), code, body)
	}
	return c.Cache.CapacityMB, err
}

// waitReady waits until frontend h answers /readyz with 200.
func (s *system) waitReady(h *netns.Host) {
	s.t.Helper()
	s.waitFor(startWait, "the frontend on "+h.String()+" to be ready", func() error {
		code, body, err := s.get(frontendURL(h)+"/readyz", nil)
		if err != nil || code != 200 {
			return fmt.Errorf("%d %v %s", code, err, body)
		}
		return nil
	})
}

// frontendEpoch reads the epoch frontend h routes by, from its cluster
// listener's /internal/v1/view (c must present a certificate of the CA).
func (s *system) frontendEpoch(c *http.Client, h *netns.Host) (uint64, error) {
	req, err := http.NewRequest(http.MethodGet, "https://"+h.HostPort(frontendClusterPort)+"/internal/v1/view", nil)
	if err != nil {
		return 0, err
	}
	req.Header.Set(auth.Header, s.secrets.clusterSecret)
	resp, err := c.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return 0, fmt.Errorf("GET /internal/v1/view on %s: %s", h.Addr(), resp.Status)
	}
	var v pool.View
	if err := json.NewDecoder(resp.Body).Decode(&v); err != nil {
		return 0, err
	}
	return v.Epoch, nil
}

// regionKeys returns one fresh key per region, prefixed with prefix.
func regionKeys(prefix string) []string {
	keys := make([]string, region.Count)
	for n := 0; slices.Contains(keys, ""); n++ {
		k := fmt.Sprintf("%s-%d-%s", prefix, n, randomHex(2))
		if r := region.Of(k); keys[r] == "" {
			keys[r] = k
		}
	}
	return keys
}

// imageRead is one read of /images/{key} through a frontend.
type imageRead struct {
	code   int
	body   []byte
	source string // X-Memcache-Source: cache or store
}

// readImage GETs /images/{key} from the frontend at base.
func readImage(c *http.Client, base, key string) (imageRead, error) {
	resp, err := c.Get(base + "/images/" + url.PathEscape(key))
	if err != nil {
		return imageRead{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return imageRead{code: resp.StatusCode, body: b, source: resp.Header.Get("X-Memcache-Source")}, err
}

// check reports how img differs from a 200 of want from a cache node or
// the stores (or from source, if given).
func (img imageRead) check(want []byte, source string) error {
	ok := img.source == "cache" || img.source == "store"
	if source != "" {
		ok = img.source == source
	}
	if img.code != 200 || !bytes.Equal(img.body, want) || !ok {
		return fmt.Errorf("%d, %d bytes (want %d), from %q", img.code, len(img.body), len(want), img.source)
	}
	return nil
}

// uploadAll uploads each key with its own image (the PNG with the key
// appended, which the frontend stores as given) and returns the images.
func (s *system) uploadAll(keys []string) map[string][]byte {
	s.t.Helper()
	imgs := map[string][]byte{}
	base := pngImage(s.t)
	for _, k := range keys {
		imgs[k] = append(slices.Clone(base), k...)
	}
	s.uploadImages(imgs)
	return imgs
}

// uploadImages uploads every image under its key through the frontend.
func (s *system) uploadImages(imgs map[string][]byte) {
	s.t.Helper()
	for k, data := range imgs {
		s.waitFor(wait, "the upload of "+k, func() error {
			code, body, err := s.upload(k, data)
			if err != nil || code != 200 || !bytes.Contains(body, []byte(`"success":"true"`)) {
				return fmt.Errorf("%d %v %s", code, err, body)
			}
			return nil
		})
	}
}

// waitCached waits until every image reads back through frontend h from a
// cache node.
func (s *system) waitCached(h *netns.Host, imgs map[string][]byte) {
	s.t.Helper()
	for k, data := range imgs {
		s.waitFor(wait, "GET /images/"+k+" from the cache", func() error {
			img, err := readImage(s.client, frontendURL(h), k)
			if err != nil {
				return err
			}
			return img.check(data, "cache")
		})
	}
}

// TestLeaderLinkCut takes the Raft leader's link down. The other two
// replicas elect a new leader; writes sent to them commit (a cache config
// change and a resize to 1 node and back to 2, which the new leader's pool
// maintainer carries out, and the nodes follow); then, with the link up
// again, the old leader is a follower of the new leader at its higher term
// and holds every write made while it was away.
func TestLeaderLinkCut(t *testing.T) {
	s := newSystem(t)
	oldHost, old, v0 := s.formed()
	t.Logf("leader %s (term %d) on %s; pool epoch %d", old.ID, old.Term, oldHost, v0.Epoch)
	survivors := s.others(oldHost)

	cut := time.Now()
	oldHost.LinkDown()

	var leader cluster.Status
	s.waitFor(wait, "a new leader among the two other replicas", func() error {
		var seen []string
		for _, h := range survivors {
			st, err := s.status(h)
			if err != nil {
				return err
			}
			seen = append(seen, fmt.Sprintf("%s: %s leader %q term %d", st.ID, st.State, st.Leader.ID, st.Term))
			if st.Leader.ID == "" || st.Leader.ID == old.ID || st.Term <= old.Term {
				return fmt.Errorf("%s", strings.Join(seen, "; "))
			}
			if st.State == "Leader" {
				leader = st
			}
		}
		if leader.ID == "" {
			return fmt.Errorf("no survivor says it leads: %s", strings.Join(seen, "; "))
		}
		return nil
	})
	t.Logf("new leader %s at term %d, %v after the cut", leader.ID, leader.Term, time.Since(cut).Round(time.Millisecond))
	newHost := s.managers[s.managerIndex(leader.ID)]
	follower := s.others(oldHost)[0]
	if follower == newHost {
		follower = s.others(oldHost)[1]
	}

	// A write on the follower: forwarded to the new leader.
	wantMB := 37
	s.waitFor(wait, "a cache config write on the surviving follower", func() error {
		_, err := s.setCapacity(follower, wantMB)
		return err
	})
	for _, h := range survivors {
		s.waitFor(wait, "the capacity on "+h.String(), func() error {
			if mb, err := s.capacity(h); err != nil || mb != wantMB {
				return fmt.Errorf("capacity %d MB (%v), want %d", mb, err, wantMB)
			}
			return nil
		})
	}

	// Pool maintenance runs on the new leader: a resize to 1 and back to 2,
	// asked of the follower, is served there and seen on the survivors.
	var last pool.View
	for _, n := range []int{1, 2} {
		var r writeResult
		s.waitFor(wait, fmt.Sprintf("a resize to %d nodes", n), func() (err error) {
			r, err = s.resize(follower, n)
			return err
		})
		for _, h := range survivors {
			s.waitFor(wait, fmt.Sprintf("%d members at epoch %d on %s", n, r.Epoch, h), func() error {
				v, err := s.poolOn(h)
				if err != nil || v.Epoch < r.Epoch || len(v.Members) != n {
					return fmt.Errorf("epoch %d, members %v (%v); want epoch %d, %d members", v.Epoch, v.Members, err, r.Epoch, n)
				}
				last = v
				return nil
			})
		}
	}
	if last.Epoch < v0.Epoch+2 {
		t.Fatalf("pool epoch %d after two resizes, want at least %d", last.Epoch, v0.Epoch+2)
	}
	// The nodes follow the pool from the survivors.
	s.waitNodesFollow(last)

	oldHost.LinkUp()
	var back cluster.Status
	s.waitFor(wait, "the old leader to follow the new one and catch up", func() error {
		st, err := s.status(oldHost)
		if err != nil {
			return err
		}
		back = st
		lead, err := s.status(newHost)
		if err != nil {
			return err
		}
		switch {
		case st.State != "Follower" || st.Leader.ID != leader.ID:
			return fmt.Errorf("%s is %s, following %q; want Follower of %s", st.ID, st.State, st.Leader.ID, leader.ID)
		case st.Term != lead.Term || st.Term < leader.Term:
			return fmt.Errorf("%s at term %d, leader %s at %d (elected at %d)", st.ID, st.Term, lead.ID, lead.Term, leader.Term)
		case st.PoolEpoch != last.Epoch || st.AppliedIndex < last.Index:
			return fmt.Errorf("%s has pool epoch %d, applied index %d; want epoch %d, index %d or more", st.ID, st.PoolEpoch, st.AppliedIndex, last.Epoch, last.Index)
		}
		if mb, err := s.capacity(oldHost); err != nil || mb != wantMB {
			return fmt.Errorf("capacity on %s %d MB (%v), want %d", st.ID, mb, err, wantMB)
		}
		return nil
	})
	t.Logf("old leader %s: Follower of %s at term %d (was leader at %d), applied %d, pool epoch %d; %v after the cut",
		back.ID, back.Leader.ID, back.Term, old.Term, back.AppliedIndex, back.PoolEpoch, time.Since(cut).Round(time.Millisecond))
}

// TestNodeHostCutOff drops, with nftables on the node's host, every packet
// between one cache node and every other host. After the managers' dead
// grace its regions move to the other node, and every image still reads
// back through the frontend with its bytes: during the outage (from the
// stores once the cut node does not answer) and afterwards from the cache
// of the node that took the regions over.
func TestNodeHostCutOff(t *testing.T) {
	s := newSystem(t)
	leaderHost, _, v := s.formed()

	keys := regionKeys("cut-node")
	imgs := s.uploadAll(keys)
	s.waitCached(s.frontend, imgs)

	// The node that owns region 0 is cut off.
	victim := v.Regions[0]
	vi := slices.IndexFunc(v.Members, func(m pool.Member) bool { return m.ID == victim })
	var cutHost, otherHost *netns.Host
	var other string
	for i, h := range s.nodes {
		if fmt.Sprintf("n%d", i) == victim {
			cutHost = h
		} else {
			otherHost, other = h, fmt.Sprintf("n%d", i)
		}
	}
	if vi < 0 || cutHost == nil {
		t.Fatalf("region 0's owner %q is not a node host of %v", victim, v.Members)
	}
	owned := 0
	for _, id := range v.Regions {
		if id == victim {
			owned++
		}
	}
	t.Logf("cutting off node %s on %s (%d regions), pool epoch %d", victim, cutHost, owned, v.Epoch)
	cut := time.Now()
	for _, h := range s.net.Hosts() {
		if h != cutHost {
			cutHost.Block(h)
		}
	}

	// Reads go on while the node is cut off but still in the pool.
	var wg sync.WaitGroup
	errs := make(chan error, len(keys))
	for k, data := range imgs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			img, err := readImage(s.client, frontendURL(s.frontend), k)
			if err == nil {
				err = img.check(data, "")
			}
			if err != nil {
				errs <- fmt.Errorf("GET /images/%s right after the cut: %v", k, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if t.Failed() {
		t.FailNow()
	}

	var after pool.View
	s.waitFor(wait, "the cut node's regions to move to "+other, func() error {
		v, err := s.poolOn(leaderHost)
		if err != nil {
			return err
		}
		after = v
		for r, id := range v.Regions {
			if id != other {
				return fmt.Errorf("epoch %d: region %d belongs to %q; members %v", v.Epoch, r, id, v.Members)
			}
		}
		if len(v.Members) != 1 || v.Members[0].ID != other {
			return fmt.Errorf("epoch %d: members %v, want only %s", v.Epoch, v.Members, other)
		}
		return nil
	})
	t.Logf("pool epoch %d, members %v, %v after the cut", after.Epoch, after.Members, time.Since(cut).Round(time.Millisecond))
	s.waitFor(wait, "node "+other+" to install epoch "+fmt.Sprint(after.Epoch), func() error {
		var r struct {
			Epoch uint64 `json:"epoch"`
		}
		code, body, err := s.get(nodeURL(otherHost)+"/regions", &r)
		if err != nil || code != 200 || r.Epoch < after.Epoch {
			return fmt.Errorf("%d %v %s", code, err, body)
		}
		return nil
	})

	// Every image reads back; the moved ones are filled into the node
	// that now owns them, so each is soon read from the cache again.
	for k, data := range imgs {
		img, err := readImage(s.client, frontendURL(s.frontend), k)
		if err == nil {
			err = img.check(data, "")
		}
		if err != nil {
			t.Fatalf("GET /images/%s after the regions moved: %v", k, err)
		}
	}
	s.waitCached(s.frontend, imgs)
}

// TestFrontendCutFromLeader drops every packet between the frontend's host
// and the leader's. The frontend stays ready and follows the pool through
// another replica: resizes made after the cut reach it (its
// memcache_frontend_pool_epoch), an admin call sent to it is forwarded to
// a reachable replica, and uploads and cache reads go on.
func TestFrontendCutFromLeader(t *testing.T) {
	s := newSystem(t)
	leaderHost, leader, v := s.formed()
	follower := s.others(leaderHost)[0]
	t.Logf("leader %s on %s; the frontend's connections to the managers: %s", leader.ID, leaderHost, s.connections(s.frontend))

	s.frontend.Block(leaderHost)
	cut := time.Now()

	epoch := v.Epoch
	for _, n := range []int{1, 2} {
		var r writeResult
		s.waitFor(wait, fmt.Sprintf("a resize to %d nodes", n), func() (err error) {
			r, err = s.resize(follower, n)
			return err
		})
		if r.Epoch <= epoch {
			t.Fatalf("resize to %d: epoch %d, want above %d", n, r.Epoch, epoch)
		}
		epoch = r.Epoch
		s.waitFor(wait, fmt.Sprintf("the frontend to route by epoch %d", epoch), func() error {
			if code, body, err := s.get(frontendURL(s.frontend)+"/readyz", nil); err != nil || code != 200 {
				return fmt.Errorf("/readyz: %d %v %s", code, err, body)
			}
			e, err := s.frontendEpoch(s.client, s.frontend)
			if err != nil || e < epoch {
				return fmt.Errorf("frontend at epoch %d (%v)", e, err)
			}
			return nil
		})
		t.Logf("frontend at epoch %d (%d nodes), %v after the cut", epoch, n, time.Since(cut).Round(time.Millisecond))
	}

	// The tester's admin API on the frontend is forwarded to a manager it
	// can reach.
	req, _ := http.NewRequest(http.MethodPost, frontendURL(s.frontend)+"/api/configure_cache?cacheSize=48", nil)
	var cfg struct {
		Success string `json:"success"`
	}
	if code, body, err := s.do(req, &cfg); err != nil || code != 200 || cfg.Success != "true" {
		t.Fatalf("POST /api/configure_cache?cacheSize=48 on the frontend: %d %v %s, want 200 success", code, err, body)
	}
	s.waitFor(wait, "the capacity of 48 MB on the leader", func() error {
		if mb, err := s.capacity(leaderHost); err != nil || mb != 48 {
			return fmt.Errorf("capacity %d MB (%v)", mb, err)
		}
		return nil
	})

	// Uploads go on, and read back from the cache by the new routing.
	imgs := s.uploadAll(regionKeys("fe-cut"))
	s.waitCached(s.frontend, imgs)
	t.Logf("frontend's connections to the managers at the end: %s", s.connections(s.frontend))
}

// connections lists h's established TCP connections to the managers'
// cluster listeners (the watch, forwarded admin calls), for the log: which
// replica a frontend or node follows.
func (s *system) connections(h *netns.Host) string {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := h.Command(ctx, "ss", "-Htn", "state", "established").Output()
	if err != nil {
		return fmt.Sprintf("(ss: %v)", err)
	}
	var to []string
	for i, m := range s.managers {
		peer := m.HostPort(managerClusterPort)
		if n := strings.Count(string(out), peer); n > 0 {
			to = append(to, fmt.Sprintf("m%d:%d", i, n))
		}
	}
	if len(to) == 0 {
		return "none"
	}
	return strings.Join(to, " ")
}
