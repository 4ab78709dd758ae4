package cluster

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"reflect"
	"testing"
	"time"

	"github.com/memcache/memcache/auth"
	"github.com/memcache/memcache/fsm"
	"github.com/memcache/memcache/internal/waitfor"
)

// rawApply commits data through the leader's Raft as it is, bypassing
// every check a proposer makes: how an entry written by a newer build (or
// a corrupt one) gets into the log.
func rawApply(t *testing.T, l *replica, data []byte) fsm.Result {
	t.Helper()
	f := l.c.Raft().Apply(data, 10*time.Second)
	if err := f.Error(); err != nil {
		t.Fatalf("raft.Apply of %q: %v", data, err)
	}
	res, ok := f.Response().(fsm.Result)
	if !ok {
		t.Fatalf("raft.Apply of %q answered %T, want fsm.Result", data, f.Response())
	}
	return res
}

// identical waits until every running replica holds exactly want.
func (tc *testCluster) identical(what string, want fsm.State) {
	tc.t.Helper()
	tc.converged(what, func(s fsm.State) bool { return reflect.DeepEqual(s, want) })
}

// restart stops r and starts it again on its data dir, joining the leader.
func (tc *testCluster) restart(r *replica, seed string) {
	tc.t.Helper()
	tc.stop(r)
	tc.start(r, len(tc.replicas), seed)
}

// TestIgnorableUnknownEntryIsSkippedEverywhere: a committed entry of a type
// this build does not know, marked ignorable, is skipped by every replica;
// the group keeps accepting writes; a replica restarted on its data dir
// replays it, skips it again and reaches the same state as the others.
func TestIgnorableUnknownEntryIsSkippedEverywhere(t *testing.T) {
	tc := newTestCluster(t, 3)
	l := tc.leader()
	mustApply(t, l, fsm.SetCache{Config: fsm.CacheConfig{CapacityMB: 64, Policy: "RR"}})
	if res := rawApply(t, l, []byte{byte(fsm.IgnoreUnknownFlag) | 77, 1, '{', '}'}); res.Err != nil {
		t.Fatalf("ignorable entry: leader answered %v, want no error", res.Err)
	}
	mustApply(t, tc.follower(), fsm.ClearCaches{})
	want := l.c.State()
	if want.ClearGen != 1 || want.Cache.CapacityMB != 64 {
		t.Fatalf("leader state %+v: want the writes before and after the skipped entry", want)
	}
	tc.identical("the state with the entry skipped", want)
	for _, r := range tc.running() {
		if st := r.c.FSM().Stats(); st.Ignored != 1 || st.Halt != nil {
			t.Errorf("%s: stats %+v, want 1 ignored and no halt", r.name, st)
		}
	}

	f := tc.follower()
	tc.restart(f, l.c.Gossip().Addr())
	tc.identical("the restarted replica to replay past the entry", want)
	if st := f.c.FSM().Stats(); st.Ignored != 1 || st.Halt != nil {
		t.Errorf("restarted %s: stats %+v, want the entry skipped again (1 ignored), no halt", f.name, st)
	}
	mustApply(t, f, fsm.DeleteAll{})
	tc.converged("a write after the restart", func(s fsm.State) bool { return s.DeleteGen == 1 })
}

// TestUndecodableEntryHaltsEveryReplicaAtTheSameIndex: a committed entry
// of an unknown type without the ignorable flag makes no replica panic.
// Every replica halts at its index with the state before it; they refuse
// writes and the watch and say why in /raft/status; a replica restarted on
// its data dir halts again at the same index rather than crash-looping.
func TestUndecodableEntryHaltsEveryReplicaAtTheSameIndex(t *testing.T) {
	tc := newTestCluster(t, 3)
	l := tc.leader()
	mustApply(t, l, fsm.SetCache{Config: fsm.CacheConfig{CapacityMB: 64, Policy: "RR"}})
	tc.converged("the write before", cacheIs(64, "RR"))
	want := l.c.State()

	res := rawApply(t, l, []byte{99, 1, '{', '}'})
	if !errors.Is(res.Err, fsm.ErrHalted) {
		t.Fatalf("unknown entry: leader answered %v, want ErrHalted", res.Err)
	}
	index := l.c.Raft().LastIndex()
	halted := func(r *replica) bool {
		h, ok := r.c.FSM().Halted()
		return ok && h.Index == index && h.Type == 99
	}
	waitfor.True(t, 10*time.Second, "every replica to halt at the entry", func() bool {
		for _, r := range tc.running() {
			if !halted(r) {
				return false
			}
		}
		return true
	})
	tc.identical("the state before the entry", want)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, r := range tc.running() {
		if _, err := r.c.Apply(ctx, fsm.ClearCaches{}); !errors.Is(err, fsm.ErrHalted) {
			t.Errorf("write on halted %s: got %v, want ErrHalted", r.name, err)
		}
		var st Status
		if code := getJSON(t, r.url+"/raft/status", "", &st); code != 200 || st.Halted == nil || st.Halted.Index != index {
			t.Errorf("%s /raft/status: %d, halted %+v; want 200 and the halt at %d", r.name, code, st.Halted, index)
		}
		req := must(http.NewRequest("GET", r.url+"/v1/pool?index=0", nil))
		req.Header.Set(auth.Header, testSecret)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusServiceUnavailable {
			t.Errorf("watch on halted %s: %d, want 503", r.name, resp.StatusCode)
		}
	}
	// Raft itself goes on: entries still commit (a leader of a build that
	// knows the type would apply them), and every replica holds them back.
	rawApply(t, l, must(fsm.Encode(fsm.ClearCaches{})))
	// No snapshot records the held-back entries as applied.
	if err := l.c.Raft().Snapshot().Error(); err == nil {
		t.Error("snapshot on a halted replica succeeded, want it refused")
	}

	f := tc.follower()
	tc.restart(f, l.c.Gossip().Addr())
	waitfor.True(t, 10*time.Second, "the restarted replica to halt again at the same index", func() bool { return halted(f) })
	tc.identical("the state before the entry, after the restart", want)
}

// TestUnknownCommandRefusedAtProposeTime: a command this build cannot
// decode never reaches the log: Apply refuses it on any replica, and the
// leader refuses a forwarded one with 400, ignorable or not.
func TestUnknownCommandRefusedAtProposeTime(t *testing.T) {
	tc := newTestCluster(t, 3)
	l := tc.leader()
	// The FSM's index moves with every command applied (configuration
	// changes, which the leader may still be making, do not move it).
	before := l.c.State().Index
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, r := range tc.running() {
		if _, err := r.c.Apply(ctx, foreignCmd{}); !errors.Is(err, fsm.ErrInvalidCommand) {
			t.Errorf("Apply(foreign command) on %s: got %v, want ErrInvalidCommand", r.name, err)
		}
	}
	for _, data := range [][]byte{{99, 1, '{', '}'}, {0x80 | 99, 1, '{', '}'}, {byte(fsm.CmdSetCache), 1, '{'}, []byte("x")} {
		req := must(http.NewRequest("POST", l.url+"/internal/v1/apply", bytes.NewReader(data)))
		req.Header.Set(auth.Header, testSecret)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var ar applyResponse
		json.NewDecoder(resp.Body).Decode(&ar)
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest || ar.Refused == "" {
			t.Errorf("forwarded %q: %d %+v, want 400 with the refusal", data, resp.StatusCode, ar)
		}
		// The forwarding client turns it into ErrInvalidCommand.
		if _, err := tc.follower().c.forward(ctx, l.url, data); !errors.Is(err, fsm.ErrInvalidCommand) {
			t.Errorf("forward(%q): got %v, want ErrInvalidCommand", data, err)
		}
	}
	// A barrier: anything that reached the log before it is applied now.
	if err := l.c.Raft().Barrier(10 * time.Second).Error(); err != nil {
		t.Fatal(err)
	}
	if got := l.c.State().Index; got != before {
		t.Errorf("FSM index %d, want %d: a refused command reached the log", got, before)
	}
}

// foreignCmd is a Command of a type package fsm does not know.
type foreignCmd struct{}

func (foreignCmd) Type() fsm.CommandType    { return 99 }
func (foreignCmd) Validate(fsm.State) error { return nil }

// getJSON GETs url with the bearer token (none if blank), decodes a 200
// answer into out and returns the status.
func getJSON(t *testing.T, url, token string, out any) int {
	t.Helper()
	req := must(http.NewRequest("GET", url, nil))
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusOK && out != nil {
		if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
			t.Fatalf("GET %s: %v", url, err)
		}
	}
	return resp.StatusCode
}
