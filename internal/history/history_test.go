package history

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// at builds an op with Call and Return in milliseconds.
func at(op Op, call, ret int) Op {
	op.Call, op.Return = time.Duration(call)*time.Millisecond, time.Duration(ret)*time.Millisecond
	return op
}

func w(client int, key, value string, call, ret int) Op {
	return at(Op{Client: client, Kind: Write, Key: key, Value: value}, call, ret)
}

func rd(client int, key, value string, call, ret int) Op {
	return at(Op{Client: client, Kind: Read, Key: key, Value: value}, call, ret)
}

func del(client, call, ret int) Op { return at(Op{Client: client, Kind: DeleteAll}, call, ret) }

func list(client int, keys []string, call, ret int) Op {
	return at(Op{Client: client, Kind: List, Keys: keys}, call, ret)
}

func outcome(op Op, o Outcome) Op { op.Outcome = o; return op }

func final(op Op) Op { op.Final = true; return op }

func cfg(client int, write bool, c map[string]string, call, ret int) Op {
	k := ConfigRead
	if write {
		k = ConfigWrite
	}
	return at(Op{Client: client, Kind: k, Config: c}, call, ret)
}

// TestCheck runs the checker over small histories whose verdicts are
// known: each case says whether porcupine must find it linearizable, which
// keys it must not, and how many reads are stale and lost.
func TestCheck(t *testing.T) {
	cases := []struct {
		name        string
		ops         []Op
		illegal     []string
		stale, lost int
		why         string // a word every anomaly's Why must contain
	}{
		{name: "sequential write then read", ops: []Op{w(0, "a", "1", 0, 1), rd(1, "a", "1", 2, 3)}},
		{name: "read concurrent with a write sees either", ops: []Op{
			w(0, "a", "1", 0, 1), w(0, "a", "2", 2, 10), rd(1, "a", "1", 3, 4), rd(2, "a", "2", 5, 6)}},
		{name: "read concurrent with a write sees the new then the old", ops: []Op{
			w(0, "a", "1", 0, 1), w(0, "a", "2", 2, 10), rd(1, "a", "2", 3, 4), rd(2, "a", "1", 5, 6)},
			illegal: []string{"a"}},
		{name: "stale: overwritten value", ops: []Op{
			w(0, "a", "1", 0, 1), w(0, "a", "2", 2, 3), rd(1, "a", "1", 4, 5)},
			illegal: []string{"a"}, stale: 1, why: "overwritten"},
		{name: "stale: deleted value", ops: []Op{
			w(0, "a", "1", 0, 1), del(0, 2, 3), rd(1, "a", "1", 4, 5)},
			illegal: []string{"a"}, stale: 1, why: "deleted"},
		{name: "stale: absent after an acknowledged write", ops: []Op{
			w(0, "a", "1", 0, 1), rd(1, "a", "", 2, 3)},
			illegal: []string{"a"}, stale: 1, why: "absent"},
		{name: "absent with a delete-all concurrent with the read", ops: []Op{
			w(0, "a", "1", 0, 1), del(2, 2, 10), rd(1, "a", "", 3, 4)}},
		{name: "stale: absent although the delete-all came before the write", ops: []Op{
			del(2, 0, 1), w(0, "a", "1", 2, 3), rd(1, "a", "", 4, 5)},
			illegal: []string{"a"}, stale: 1, why: "absent"},
		{name: "absent after an unknown delete-all", ops: []Op{
			w(0, "a", "1", 0, 1), outcome(del(2, 2, 3), Unknown), rd(1, "a", "", 4, 5)}},
		{name: "never written", ops: []Op{w(0, "a", "1", 0, 1), rd(1, "a", "9", 2, 3)},
			illegal: []string{"a"}, stale: 1, why: "never written"},
		{name: "another key's value", ops: []Op{w(0, "a", "1", 0, 1), w(0, "b", "2", 0, 1), rd(1, "a", "2", 2, 3)},
			illegal: []string{"a"}, stale: 1, why: "never written"},
		{name: "value of a failed write", ops: []Op{outcome(w(0, "a", "1", 0, 1), Failed), rd(1, "a", "1", 2, 3)},
			illegal: []string{"a"}, stale: 1, why: "never written"},
		{name: "value from the future", ops: []Op{rd(1, "a", "1", 0, 1), w(0, "a", "1", 2, 3)},
			illegal: []string{"a"}, stale: 1, why: "after the read returned"},
		{name: "unknown write seen late", ops: []Op{
			outcome(w(0, "a", "1", 0, 1), Unknown), rd(1, "a", "", 2, 3), rd(1, "a", "1", 100, 101)}},
		{name: "unknown write never seen", ops: []Op{
			w(0, "a", "1", 0, 1), outcome(w(0, "a", "2", 2, 3), Unknown), rd(1, "a", "1", 4, 5)}},
		{name: "unknown read dropped", ops: []Op{
			w(0, "a", "1", 0, 1), outcome(rd(1, "a", "zzz", 2, 3), Unknown)}},
		{name: "lost: final read misses an acknowledged write", ops: []Op{
			w(0, "a", "1", 0, 1), w(0, "a", "2", 2, 3), final(rd(1, "a", "1", 4, 5))},
			illegal: []string{"a"}, lost: 1, why: "overwritten"},
		{name: "lost: final list omits a key", ops: []Op{
			w(0, "a", "1", 0, 1), w(0, "b", "2", 0, 1), final(list(1, []string{"b"}, 2, 3))},
			illegal: []string{"a"}, lost: 1, why: "not listed"},
		{name: "stale: list omits a key", ops: []Op{
			w(0, "a", "1", 0, 1), list(1, nil, 2, 3)},
			illegal: []string{"a"}, stale: 1, why: "not listed"},
		{name: "list lists a deleted key", ops: []Op{
			w(0, "a", "1", 0, 1), del(0, 2, 3), list(1, []string{"a"}, 4, 5)},
			illegal: []string{"a"}},
		{name: "config: partial writes and reads", ops: []Op{
			cfg(0, false, map[string]string{"capacity_mb": "64", "policy": "LRU"}, 0, 1),
			cfg(0, true, map[string]string{"policy": "RR"}, 2, 3),
			cfg(1, false, map[string]string{"capacity_mb": "64", "policy": "RR"}, 4, 5)}},
		{name: "config: stale read", ops: []Op{
			cfg(0, true, map[string]string{"capacity_mb": "32"}, 0, 1),
			cfg(0, true, map[string]string{"capacity_mb": "64"}, 2, 3),
			cfg(1, false, map[string]string{"capacity_mb": "32", "policy": "LRU"}, 4, 5)},
			illegal: []string{ConfigKey}},
		{name: "config: initial value changes without a write", ops: []Op{
			cfg(1, false, map[string]string{"policy": "LRU"}, 0, 1),
			cfg(1, false, map[string]string{"policy": "RR"}, 2, 3)},
			illegal: []string{ConfigKey}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := Check(c.ops, time.Minute)
			if !reflect.DeepEqual(r.NonLinearizable, c.illegal) {
				t.Errorf("non-linearizable keys = %v, want %v\n%s", r.NonLinearizable, c.illegal, r)
			}
			if r.Linearizable != (len(c.illegal) == 0) || len(r.Undecided) != 0 {
				t.Errorf("linearizable = %v, undecided %v\n%s", r.Linearizable, r.Undecided, r)
			}
			if len(r.Stale) != c.stale || len(r.Lost) != c.lost {
				t.Errorf("stale %d, lost %d; want %d, %d\n%s", len(r.Stale), len(r.Lost), c.stale, c.lost, r)
			}
			for _, a := range append(r.Stale, r.Lost...) {
				if !strings.Contains(a.Why, c.why) {
					t.Errorf("anomaly %q, want one saying %q", a.Why, c.why)
				}
			}
			if r.Ops != len(c.ops) {
				t.Errorf("ops = %d, want %d", r.Ops, len(c.ops))
			}
		})
	}
}

func TestReportCounts(t *testing.T) {
	ops := []Op{w(0, "a", "1", 0, 1), outcome(w(0, "b", "2", 0, 1), Unknown), outcome(rd(1, "a", "", 2, 3), Failed), del(0, 4, 5)}
	r := Check(ops, time.Minute)
	if r.Unknown != 1 || r.Failed != 1 || r.Keys != 2 || r.ByKind[Write] != 2 || r.ByKind[Read] != 1 || r.ByKind[DeleteAll] != 1 {
		t.Errorf("report %+v", r)
	}
	if s := r.String(); !strings.Contains(s, "linearizable: yes") || !strings.Contains(s, "unknown 1, failed 1, keys 2") {
		t.Errorf("report text:\n%s", s)
	}
}

func TestRecorderAndJSON(t *testing.T) {
	rec := NewRecorder()
	keys := []string{"a"}
	c := map[string]string{"policy": "LRU"}
	call := rec.Now()
	rec.Add(Op{Client: 1, Kind: List, Keys: keys, Call: call + 2, Return: call + 3})
	rec.Add(Op{Client: 2, Kind: ConfigRead, Config: c, Call: call + 1, Return: call + 4, Outcome: Unknown, Err: "timed out"})
	keys[0], c["policy"] = "changed", "RR" // the recorder holds copies
	ops := rec.Ops()
	if len(ops) != 2 || ops[0].Kind != ConfigRead || ops[1].Keys[0] != "a" || ops[0].Config["policy"] != "LRU" {
		t.Fatalf("ops %+v", ops)
	}
	p := filepath.Join(t.TempDir(), "h.json")
	if err := WriteJSON(p, ops); err != nil {
		t.Fatal(err)
	}
	back, err := ReadJSON(p)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(back, ops) {
		t.Errorf("read back %+v, want %+v", back, ops)
	}
	if b, _ := os.ReadFile(p); !strings.Contains(string(b), `"outcome":"unknown"`) {
		t.Errorf("history file:\n%s", b)
	}
}

func TestVisualize(t *testing.T) {
	ops := []Op{w(0, "a", "1", 0, 1), w(0, "a", "2", 2, 3), rd(1, "a", "1", 4, 5)}
	p := filepath.Join(t.TempDir(), "a.html")
	if err := Visualize(ops, "a", p); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(p)
	if err != nil || !strings.Contains(string(b), `"read -\u003e \"1\""`) || !strings.Contains(string(b), "write 2") {
		t.Fatalf("visualisation (%v): %.300s", err, b)
	}
	if err := Visualize(ops, "nope", p); err == nil {
		t.Error("visualised a key with no history")
	}
}
