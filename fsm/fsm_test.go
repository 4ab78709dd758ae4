package fsm_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/memcache/memcache/fsm"
	"github.com/memcache/memcache/region"
)

// mem returns a valid member with id.
func mem(id string) fsm.Member {
	return fsm.Member{ID: id, HTTP: "http://" + id + ".test:7000"}
}

// pool returns valid members n1..nk.
func pool(k int) []fsm.Member {
	ms := make([]fsm.Member, k)
	for i := range ms {
		ms[i] = mem(fmt.Sprintf("n%d", i+1))
	}
	return ms
}

// log feeds commands to an FSM as Raft would, with increasing log indexes.
type log struct {
	t     *testing.T
	f     *fsm.FSM
	index uint64
}

func newLog(t *testing.T) *log {
	return &log{t: t, f: fsm.New()}
}

// apply encodes cmd and applies it at the next log index.
func (l *log) apply(cmd fsm.Command) fsm.Result {
	l.t.Helper()
	data, err := fsm.Encode(cmd)
	if err != nil {
		l.t.Fatalf("Encode(%#v): %v", cmd, err)
	}
	return l.applyData(data)
}

func (l *log) applyData(data []byte) fsm.Result {
	l.t.Helper()
	l.index++
	resp := l.f.Apply(&raft.Log{Index: l.index, Term: 1, Type: raft.LogCommand, Data: data})
	res, ok := resp.(fsm.Result)
	if !ok {
		l.t.Fatalf("Apply returned %T, want fsm.Result", resp)
	}
	return res
}

// mustApply applies cmd and fails the test if it is refused.
func (l *log) mustApply(cmd fsm.Command) fsm.State {
	l.t.Helper()
	if res := l.apply(cmd); res.Err != nil {
		l.t.Fatalf("apply %#v: got error %v, want none", cmd, res.Err)
	}
	st := l.f.State()
	if st.Index != l.index {
		l.t.Fatalf("after apply: got index %d, want %d", st.Index, l.index)
	}
	return st
}

// checkMap fails the test unless st's region map is balanced over its members.
func checkMap(t *testing.T, st fsm.State) {
	t.Helper()
	n := len(st.Members)
	if n == 0 {
		if st.Regions != (region.Map{}) {
			t.Fatalf("empty pool: got regions %v, want all unowned", st.Regions)
		}
		return
	}
	for r, owner := range st.Regions {
		if _, ok := st.Member(owner); !ok {
			t.Fatalf("region %d: got owner %q, want a member", r, owner)
		}
	}
	counts := st.Regions.Counts()
	lo, hi := region.Count/n, (region.Count+n-1)/n
	for _, m := range st.Members {
		if c := counts[m.ID]; c < lo || c > hi {
			t.Fatalf("member %s: got %d regions, want %d..%d (map %v)", m.ID, c, lo, hi, st.Regions)
		}
	}
}

// checkSince fails the test unless Since moved to next's epoch for exactly
// the regions whose owner changed from prev to next.
func checkSince(t *testing.T, prev, next fsm.State) {
	t.Helper()
	for r := range next.Regions {
		want := prev.Since[r]
		if prev.Regions[r] != next.Regions[r] {
			want = next.Epoch
		}
		if next.Since[r] != want {
			t.Fatalf("region %d (%q -> %q): got since %d, want %d", r, prev.Regions[r], next.Regions[r], next.Since[r], want)
		}
	}
}

// rate returns a pointer to a miss rate.
func rate(r float64) *float64 { return &r }

// decision returns the i-th of a varied sequence of valid decisions: every
// action, with and without a miss rate, applied or failed.
func decision(i int) fsm.Decision {
	d := fsm.Decision{
		Time:   time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC).Add(time.Duration(i) * time.Minute),
		Mode:   fsm.ModeAuto,
		Nodes:  1 + i%7,
		Gets:   uint64(i * 10),
		Reason: fmt.Sprintf("decision %d", i),
		By:     fmt.Sprintf("manager-%d", i%3+1),
	}
	d.Target = d.Nodes
	d.Action = fsm.ActionNone
	if d.Gets > 0 {
		d.MissRate = rate(float64(i%11) / 10)
	}
	switch i % 4 {
	case 0:
		if d.MissRate != nil && i%8 == 4 {
			d.Discounted = []string{fsm.DiscountResize, fsm.DiscountHandoff, fsm.DiscountAfterHandoff}[i/8%3]
		}
	case 1:
		d.Action, d.Target, d.Applied = fsm.ActionGrow, d.Nodes+1, true
	case 2:
		d.Action, d.Target, d.Error = fsm.ActionShrink, d.Nodes-1, "provisioner: no nodes"
		if d.Target >= 1 {
			// The shrink guard's estimate at the target, or that it
			// had none.
			d.EstimateNodes = d.Target
			if i%8 == 2 {
				d.Estimate = rate(float64(i%5) / 10)
				d.EstimateFrom = fmt.Sprintf("measured at %d nodes at 11:55:00 UTC", d.Target)
				d.EstimateAt = d.Time.Add(-5 * time.Minute)
			}
		}
	case 3:
		d.Mode = fsm.ModeManual
	}
	return d
}

func allCommands() []fsm.Command {
	return []fsm.Command{
		fsm.SetCache{Config: fsm.CacheConfig{CapacityMB: 128, Policy: fsm.PolicyRR}},
		fsm.SetScaling{Policy: fsm.ScalingPolicy{Mode: fsm.ModeAuto, MaxMissRate: 0.7, MinMissRate: 0.1, ExpandRatio: 1.5, ShrinkRatio: 0.25}},
		fsm.Resize{Members: pool(3)},
		fsm.MarkFailed{ID: "n2"},
		fsm.MarkFailed{ID: "n2", Replacement: &fsm.Member{ID: "n9", HTTP: "https://n9.test"}},
		fsm.ClearCaches{},
		fsm.DeleteAll{},
		fsm.RecordDecision{Decision: fsm.Decision{
			Time: time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC), Mode: fsm.ModeAuto, Nodes: 2, Target: 4,
			Gets: 100, MissRate: rate(0.62), Action: fsm.ActionGrow,
			Reason: "miss rate 0.62 > max 0.50: grow 2 -> 4 (x2.0)", Applied: true,
		}},
		fsm.RecordDecision{Decision: fsm.Decision{
			Time: time.Date(2025, 3, 1, 12, 1, 0, 0, time.UTC), Mode: fsm.ModeAuto, Nodes: 4, Target: 4,
			Action: fsm.ActionNone, Reason: "no GETs in the last minute: no miss rate, no action",
		}},
		fsm.RecordDecision{Decision: fsm.Decision{
			Time: time.Date(2025, 3, 1, 12, 2, 0, 0, time.UTC), Mode: fsm.ModeAuto, Nodes: 4, Target: 2,
			Gets: 7, MissRate: rate(0), Action: fsm.ActionShrink, Reason: "shrink", Error: "boom",
		}},
		fsm.Configure{CapacityMB: ptr(32), ShrinkRatio: ptr(0.4)},
	}
}

func TestEncodeDecodeRoundTrip(t *testing.T) {
	for _, cmd := range allCommands() {
		t.Run(cmd.Type().String(), func(t *testing.T) {
			data, err := fsm.Encode(cmd)
			if err != nil {
				t.Fatalf("Encode: %v", err)
			}
			if got, want := fsm.CommandType(data[0]), cmd.Type(); got != want {
				t.Errorf("type byte: got %d, want %d", got, want)
			}
			if data[1] != 1 {
				t.Errorf("version byte: got %d, want 1", data[1])
			}
			got, err := fsm.Decode(data)
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if !reflect.DeepEqual(got, cmd) {
				t.Errorf("got %#v, want %#v", got, cmd)
			}
			// A pointer to a command encodes the same.
			ptr := reflect.New(reflect.TypeOf(cmd))
			ptr.Elem().Set(reflect.ValueOf(cmd))
			pdata, err := fsm.Encode(ptr.Interface().(fsm.Command))
			if err != nil || !bytes.Equal(pdata, data) {
				t.Errorf("Encode(pointer): got %q, %v, want %q, nil", pdata, err, data)
			}
		})
	}
}

func TestDecodeErrors(t *testing.T) {
	good, err := fsm.Encode(fsm.SetCache{Config: fsm.CacheConfig{CapacityMB: 1, Policy: fsm.PolicyLRU}})
	if err != nil {
		t.Fatal(err)
	}
	with := func(b ...byte) []byte { return append(b, good[2:]...) }
	tests := []struct {
		name string
		data []byte
		want error
	}{
		{"nil", nil, fsm.ErrCorruptCommand},
		{"one byte", []byte{byte(fsm.CmdClearCaches)}, fsm.ErrCorruptCommand},
		{"no body", []byte{byte(fsm.CmdClearCaches), 1}, fsm.ErrCorruptCommand},
		{"truncated", good[:len(good)-3], fsm.ErrCorruptCommand},
		{"garbage body", append([]byte{byte(fsm.CmdSetCache), 1}, "\x00\xffnot json"...), fsm.ErrCorruptCommand},
		{"wrong JSON shape", append([]byte{byte(fsm.CmdResize), 1}, `{"members":"n1"}`...), fsm.ErrCorruptCommand},
		{"unknown field", append([]byte{byte(fsm.CmdClearCaches), 1}, `{"x":1}`...), fsm.ErrCorruptCommand},
		{"data after body", append(bytes.Clone(good), "}"...), fsm.ErrCorruptCommand},
		{"type 0", with(0, 1), fsm.ErrUnknownCommand},
		{"unknown type", with(99, 1), fsm.ErrUnknownCommand},
		{"unknown type, ignorable", with(0x80|99, 1), fsm.ErrUnknownIgnorable},
		{"version 0", with(byte(fsm.CmdSetCache), 0), fsm.ErrUnknownCommand},
		{"version 2", with(byte(fsm.CmdSetCache), 2), fsm.ErrUnknownCommand},
		{"version 2, ignorable", with(0x80|byte(fsm.CmdSetCache), 2), fsm.ErrUnknownIgnorable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cmd, err := fsm.Decode(tt.data)
			if !errors.Is(err, tt.want) {
				t.Fatalf("got %v, %v, want error %v", cmd, err, tt.want)
			}
			if cmd != nil {
				t.Errorf("got command %#v with the error, want nil", cmd)
			}
		})
	}

	// A known type with the flag set still decodes.
	flagged := with(0x80|byte(fsm.CmdSetCache), 1)
	if cmd, err := fsm.Decode(flagged); err != nil || cmd.Type() != fsm.CmdSetCache {
		t.Errorf("flagged known type: got %v, %v, want SetCache, nil", cmd, err)
	}
}

// unknownCmd is a Command this package does not know.
type unknownCmd struct{}

func (unknownCmd) Type() fsm.CommandType    { return 42 }
func (unknownCmd) Validate(fsm.State) error { return nil }

// ignorableCmd is a Command of a known type with IgnoreUnknownFlag set,
// which this build never writes.
type ignorableCmd struct{}

func (ignorableCmd) Type() fsm.CommandType    { return fsm.CmdClearCaches | fsm.IgnoreUnknownFlag }
func (ignorableCmd) Validate(fsm.State) error { return nil }

// TestEncodeUnknown: a command this build cannot decode is refused at
// propose time as an invalid command (400 at the API), so it never reaches
// the log.
func TestEncodeUnknown(t *testing.T) {
	for _, c := range []fsm.Command{nil, unknownCmd{}, ignorableCmd{}} {
		_, err := fsm.Encode(c)
		if !errors.Is(err, fsm.ErrUnknownCommand) || !errors.Is(err, fsm.ErrInvalidCommand) {
			t.Errorf("Encode(%#v): got %v, want an error wrapping %v and %v", c, err, fsm.ErrUnknownCommand, fsm.ErrInvalidCommand)
		}
	}
}

// guardDecision returns a RecordDecision of a valid shrink the guard did
// not take (4 nodes, estimate 0.60 at 2), edited.
func guardDecision(edit func(*fsm.Decision)) fsm.Command {
	d := fsm.Decision{
		Time: time.Date(2025, 3, 1, 12, 5, 0, 0, time.UTC), Mode: fsm.ModeAuto, Nodes: 4, Target: 4,
		Gets: 100, MissRate: rate(0.01), Action: fsm.ActionNone,
		Reason:        "miss rate 0.01 < min 0.10: shrink 4 -> 2 (x0.5) not taken: at 2 nodes the pool measured miss rate 0.60 > max 0.50 at 12:01:00 UTC (estimate)",
		EstimateNodes: 2, Estimate: rate(0.6), EstimateFrom: "measured at 2 nodes at 12:01:00 UTC",
		EstimateAt: time.Date(2025, 3, 1, 12, 1, 0, 0, time.UTC),
	}
	edit(&d)
	return fsm.RecordDecision{Decision: d}
}

// recordDecision returns a RecordDecision of a valid grow decision, edited.
func recordDecision(edit func(*fsm.Decision)) fsm.Command {
	d := allCommands()[7].(fsm.RecordDecision).Decision
	edit(&d)
	return fsm.RecordDecision{Decision: d}
}

func TestRefused(t *testing.T) {
	okScaling := fsm.DefaultState().Scaling
	scaling := func(edit func(*fsm.ScalingPolicy)) fsm.Command {
		p := okScaling
		edit(&p)
		return fsm.SetScaling{Policy: p}
	}
	tests := []struct {
		name string
		cmd  fsm.Command
		want string
	}{
		{"capacity 0", fsm.SetCache{Config: fsm.CacheConfig{CapacityMB: 0, Policy: fsm.PolicyLRU}}, "capacity_mb 0 is outside 1..1024"},
		{"capacity 2000", fsm.SetCache{Config: fsm.CacheConfig{CapacityMB: 2000, Policy: fsm.PolicyLRU}}, "capacity_mb 2000 is outside 1..1024"},
		{"policy FIFO", fsm.SetCache{Config: fsm.CacheConfig{CapacityMB: 64, Policy: "FIFO"}}, `policy "FIFO" is not LRU or RR`},
		{"policy lower case", fsm.SetCache{Config: fsm.CacheConfig{CapacityMB: 64, Policy: "lru"}}, `policy "lru" is not LRU or RR`},
		{"9 nodes", fsm.Resize{Members: pool(9)}, "9 nodes is outside 1..8"},
		{"0 nodes", fsm.Resize{}, "0 nodes is outside 1..8"},
		{"expand ratio 1", scaling(func(p *fsm.ScalingPolicy) { p.ExpandRatio = 1 }), "expand_ratio 1 must be greater than 1"},
		{"expand ratio 0.5", scaling(func(p *fsm.ScalingPolicy) { p.ExpandRatio = 0.5 }), "expand_ratio 0.5 must be greater than 1"},
		{"expand ratio 9", scaling(func(p *fsm.ScalingPolicy) { p.ExpandRatio = 9 }), "expand_ratio 9 must be at most 8"},
		{"shrink ratio 1", scaling(func(p *fsm.ScalingPolicy) { p.ShrinkRatio = 1 }), "shrink_ratio 1 must be between 0 and 1"},
		{"shrink ratio 0", scaling(func(p *fsm.ScalingPolicy) { p.ShrinkRatio = 0 }), "shrink_ratio 0 must be between 0 and 1"},
		{"min above max", scaling(func(p *fsm.ScalingPolicy) { p.MinMissRate, p.MaxMissRate = 0.9, 0.5 }), "min_miss_rate 0.9 is above max_miss_rate 0.5"},
		{"min equals max", scaling(func(p *fsm.ScalingPolicy) { p.MinMissRate, p.MaxMissRate = 0.5, 0.5 }), "min_miss_rate 0.5 equals max_miss_rate 0.5"},
		{"min equals max at 0", scaling(func(p *fsm.ScalingPolicy) { p.MinMissRate, p.MaxMissRate = 0, 0 }), "min_miss_rate 0 equals max_miss_rate 0"},
		{"min equals max at 1", scaling(func(p *fsm.ScalingPolicy) { p.MinMissRate, p.MaxMissRate = 1, 1 }), "min_miss_rate 1 equals max_miss_rate 1"},
		{"max above 1", scaling(func(p *fsm.ScalingPolicy) { p.MaxMissRate = 1.5 }), "max_miss_rate 1.5 is outside 0..1"},
		{"min below 0", scaling(func(p *fsm.ScalingPolicy) { p.MinMissRate = -0.1 }), "min_miss_rate -0.1 is outside 0..1"},
		{"mode sometimes", scaling(func(p *fsm.ScalingPolicy) { p.Mode = "sometimes" }), `mode "sometimes" is not manual or auto`},
		{"duplicate ids", fsm.Resize{Members: []fsm.Member{mem("a"), mem("b"), mem("a")}}, `duplicate member id "a"`},
		{"empty id", fsm.Resize{Members: []fsm.Member{mem("a"), {ID: "", HTTP: "http://x.test"}}}, "member id is empty"},
		{"bad URL", fsm.Resize{Members: []fsm.Member{{ID: "a", HTTP: "not a url"}}}, `member "a": http "not a url" is not an http(s) URL with a host`},
		{"URL without host", fsm.Resize{Members: []fsm.Member{{ID: "a", HTTP: "http://"}}}, `http "http://" is not an http(s) URL with a host`},
		{"URL not http", fsm.Resize{Members: []fsm.Member{{ID: "a", HTTP: "ftp://a.test"}}}, `http "ftp://a.test" is not`},
		{"MarkFailed non-member", fsm.MarkFailed{ID: "zz"}, `member "zz" is not in the pool`},
		{"MarkFailed empty id", fsm.MarkFailed{}, `member "" is not in the pool`},
		{"replacement already a member", fsm.MarkFailed{ID: "n1", Replacement: &fsm.Member{ID: "n2", HTTP: "http://n2.test"}}, `replacement "n2" is already in the pool`},
		{"replacement is the failed member", fsm.MarkFailed{ID: "n1", Replacement: &fsm.Member{ID: "n1", HTTP: "http://n1.test"}}, `replacement "n1" is already in the pool`},
		{"replacement bad URL", fsm.MarkFailed{ID: "n1", Replacement: &fsm.Member{ID: "n9", HTTP: "n9:7000"}}, `replacement: invalid command: member "n9": http "n9:7000" is not`},
		{"decision action", recordDecision(func(d *fsm.Decision) { d.Action = "explode" }), `decision action "explode" is not grow, shrink or none`},
		{"decision no action", recordDecision(func(d *fsm.Decision) { d.Action = "" }), `decision action "" is not`},
		{"decision mode", recordDecision(func(d *fsm.Decision) { d.Mode = "Auto" }), `decision mode "Auto" is not manual or auto`},
		{"decision reason", recordDecision(func(d *fsm.Decision) { d.Reason = "" }), "decision reason is empty"},
		{"decision nodes 9", recordDecision(func(d *fsm.Decision) { d.Nodes, d.Target = 9, 9 }), "decision nodes 9 is outside 0..8"},
		{"decision nodes -1", recordDecision(func(d *fsm.Decision) { d.Nodes = -1 }), "decision nodes -1 is outside 0..8"},
		{"decision target 9", recordDecision(func(d *fsm.Decision) { d.Target = 9 }), "decision target 9 is outside 0..8"},
		{"decision target -1", recordDecision(func(d *fsm.Decision) { d.Action, d.Target = fsm.ActionShrink, -1 }), "decision target -1 is outside 0..8"},
		{"decision grow down", recordDecision(func(d *fsm.Decision) { d.Target = 1 }), "decision grow from 2 to 1 nodes"},
		{"decision grow same", recordDecision(func(d *fsm.Decision) { d.Target = 2 }), "decision grow from 2 to 2 nodes"},
		{"decision shrink up", recordDecision(func(d *fsm.Decision) { d.Action = fsm.ActionShrink }), "decision shrink from 2 to 4 nodes"},
		{"decision shrink same", recordDecision(func(d *fsm.Decision) { d.Action, d.Target = fsm.ActionShrink, 2 }), "decision shrink from 2 to 2 nodes"},
		{"decision none moves", recordDecision(func(d *fsm.Decision) { d.Action, d.Applied = fsm.ActionNone, false }), "decision with no action has target 4, want nodes 2"},
		{"decision none applied", recordDecision(func(d *fsm.Decision) { d.Action, d.Target = fsm.ActionNone, 2 }), "decision with no action is applied"},
		{"decision miss rate 1.5", recordDecision(func(d *fsm.Decision) { d.MissRate = rate(1.5) }), "decision miss_rate 1.5 is outside 0..1"},
		{"decision miss rate -0.1", recordDecision(func(d *fsm.Decision) { d.MissRate = rate(-0.1) }), "decision miss_rate -0.1 is outside 0..1"},
		{"decision miss rate without GETs", recordDecision(func(d *fsm.Decision) { d.Gets = 0 }), "decision miss_rate 0.62 with no GETs"},
		{"decision discounted kind", guardDecision(func(d *fsm.Decision) { d.Discounted = "warm" }), `decision discounted "warm" is not resize, handoff or after-handoff`},
		{"decision discounted grow", recordDecision(func(d *fsm.Decision) { d.Discounted = fsm.DiscountResize }), "decision discounted (resize) with action grow"},
		{"decision discounted without a rate", guardDecision(func(d *fsm.Decision) {
			d.Discounted, d.MissRate, d.Gets = fsm.DiscountHandoff, nil, 0
		}), "decision discounted (handoff) with no miss rate"},
		{"decision estimate without nodes", guardDecision(func(d *fsm.Decision) { d.EstimateNodes = 0 }), "decision estimate with no estimate_nodes"},
		{"decision estimate_from without nodes", guardDecision(func(d *fsm.Decision) {
			d.EstimateNodes, d.Estimate, d.EstimateAt = 0, nil, time.Time{}
		}), "decision estimate with no estimate_nodes"},
		{"decision estimate at the size", guardDecision(func(d *fsm.Decision) { d.EstimateNodes = 4 }), "decision estimate_nodes 4 is outside 1..3 (below nodes)"},
		{"decision estimate at 0", guardDecision(func(d *fsm.Decision) { d.EstimateNodes = -1 }), "decision estimate_nodes -1 is outside 1..3"},
		{"decision estimate 1.2", guardDecision(func(d *fsm.Decision) { d.Estimate = rate(1.2) }), "decision estimate 1.2 is outside 0..1"},
		{"decision estimate without a source", guardDecision(func(d *fsm.Decision) { d.EstimateFrom = "" }), "decision estimate with no estimate_from"},
		{"decision estimate without a time", guardDecision(func(d *fsm.Decision) { d.EstimateAt = time.Time{} }), "decision estimate_at"},
		{"decision estimate from the future", guardDecision(func(d *fsm.Decision) { d.EstimateAt = d.Time.Add(time.Second) }), "is not a time before the decision's"},
		{"decision no estimate with a source", guardDecision(func(d *fsm.Decision) { d.Estimate = nil }), "decision estimate_from or estimate_at with no estimate"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := newLog(t)
			l.mustApply(fsm.Resize{Members: pool(2)})
			before := l.f.State()

			// The proposer's check and Apply's agree.
			if err := tt.cmd.Validate(before); !errors.Is(err, fsm.ErrInvalidCommand) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Validate: got %v, want %v containing %q", err, fsm.ErrInvalidCommand, tt.want)
			}
			ch := l.f.Changed()
			res := l.apply(tt.cmd)
			if !errors.Is(res.Err, fsm.ErrInvalidCommand) {
				t.Fatalf("Apply: got error %v, want %v", res.Err, fsm.ErrInvalidCommand)
			}
			if !strings.Contains(res.Err.Error(), tt.want) {
				t.Errorf("Apply: got error %q, want it to contain %q", res.Err, tt.want)
			}
			if res.Index != before.Index || res.Epoch != before.Epoch {
				t.Errorf("result: got index %d epoch %d, want the unchanged %d, %d", res.Index, res.Epoch, before.Index, before.Epoch)
			}
			if after := l.f.State(); !reflect.DeepEqual(after, before) {
				t.Errorf("state changed:\ngot  %+v\nwant %+v", after, before)
			}
			select {
			case <-ch:
				t.Errorf("Changed fired for a refused command, want no notification")
			default:
			}
		})
	}
}

func TestConfigCommands(t *testing.T) {
	l := newLog(t)
	l.mustApply(fsm.Resize{Members: pool(2)})
	base := l.f.State()
	cfg := fsm.CacheConfig{CapacityMB: 1024, Policy: fsm.PolicyRR}
	pol := fsm.ScalingPolicy{Mode: fsm.ModeAuto, MaxMissRate: 1, MinMissRate: 0, ExpandRatio: 8, ShrinkRatio: 0.01}

	// view: the command changes the data plane's view, so ViewIndex moves
	// with Index; the scaling policy and decisions leave it where it was.
	tests := []struct {
		cmd  fsm.Command
		edit func(*fsm.State)
		view bool
	}{
		{fsm.SetCache{Config: cfg}, func(s *fsm.State) { s.Cache = cfg }, true},
		{fsm.SetScaling{Policy: pol}, func(s *fsm.State) { s.Scaling = pol }, false},
		{fsm.ClearCaches{}, func(s *fsm.State) { s.ClearGen++ }, true},
		{fsm.DeleteAll{}, func(s *fsm.State) { s.DeleteGen++ }, true},
		{fsm.RecordDecision{Decision: decision(1)}, func(s *fsm.State) { s.Decisions = append(s.Decisions, decision(1)) }, false},
		{fsm.ClearCaches{}, func(s *fsm.State) { s.ClearGen++ }, true},
		{fsm.RecordDecision{Decision: decision(2)}, func(s *fsm.State) { s.Decisions = append(s.Decisions, decision(2)) }, false},
	}
	want := base
	for _, tt := range tests {
		got := l.mustApply(tt.cmd)
		tt.edit(&want)
		want.Index = l.index
		if tt.view {
			want.ViewIndex = l.index
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("after %#v:\ngot  %+v\nwant %+v", tt.cmd, got, want)
		}
		if got.Epoch != base.Epoch {
			t.Fatalf("after %#v: got epoch %d, want %d", tt.cmd, got.Epoch, base.Epoch)
		}
	}
}

func TestDefaultState(t *testing.T) {
	st := fsm.New().State()
	want := fsm.DefaultState()
	if !reflect.DeepEqual(st, want) {
		t.Fatalf("New().State(): got %+v, want %+v", st, want)
	}
	if st.Cache != (fsm.CacheConfig{CapacityMB: 64, Policy: fsm.PolicyLRU}) || st.Epoch != 0 || len(st.Members) != 0 {
		t.Errorf("got %+v, want 64 MB LRU, epoch 0, no members", st)
	}
	if err := st.Scaling.Validate(); err != nil {
		t.Errorf("default scaling policy: got %v, want valid", err)
	}
	b, _ := json.Marshal(st)
	if !strings.Contains(string(b), `"members":[]`) || !strings.Contains(string(b), `"decisions":[]`) {
		t.Errorf("JSON: got %s, want members and decisions as []", b)
	}
}

func TestResizeSequence(t *testing.T) {
	l := newLog(t)
	prev := l.f.State()
	for _, n := range []int{1, 4, 2, 8, 1} {
		t.Run(fmt.Sprintf("to %d", n), func(t *testing.T) {
			next := l.mustApply(fsm.Resize{Members: pool(n)})
			if next.Epoch != prev.Epoch+1 {
				t.Errorf("got epoch %d, want %d", next.Epoch, prev.Epoch+1)
			}
			if !reflect.DeepEqual(next.Members, pool(n)) {
				t.Errorf("got members %v, want %v", next.Members, pool(n))
			}
			ids := make([]string, n)
			for i, m := range pool(n) {
				ids[i] = m.ID
			}
			if want := region.Assign(prev.Regions, ids); next.Regions != want {
				t.Errorf("got regions %v, want region.Assign's %v", next.Regions, want)
			}
			checkMap(t, next)
			checkSince(t, prev, next)
			// Minimal movement: a moved region goes to a new member (growing)
			// or comes from a removed one (shrinking).
			for r := range next.Regions {
				from, to := prev.Regions[r], next.Regions[r]
				if from == to {
					continue
				}
				_, fromStays := next.Member(from)
				_, toWasMember := prev.Member(to)
				if fromStays && toWasMember {
					t.Errorf("region %d moved %q -> %q between two members that stay", r, from, to)
				}
			}
			prev = next
		})
	}

	t.Run("identical list", func(t *testing.T) {
		next := l.mustApply(fsm.Resize{Members: pool(1)})
		want := prev
		want.Index = l.index
		if !reflect.DeepEqual(next, want) {
			t.Errorf("got %+v, want %+v (only Index moves)", next, want)
		}
		prev = next
	})
	t.Run("same ids, new address", func(t *testing.T) {
		ms := pool(1)
		ms[0].HTTP = "http://elsewhere.test:7000"
		next := l.mustApply(fsm.Resize{Members: ms})
		if next.Epoch != prev.Epoch+1 || next.Regions != prev.Regions || next.Since != prev.Since {
			t.Errorf("got epoch %d regions %v since %v, want epoch %d and the same map", next.Epoch, next.Regions, next.Since, prev.Epoch+1)
		}
		if next.Members[0] != ms[0] {
			t.Errorf("got member %v, want %v", next.Members[0], ms[0])
		}
	})
}

func TestResizeCopiesMembers(t *testing.T) {
	l := newLog(t)
	ms := pool(2)
	st := l.mustApply(fsm.Resize{Members: ms})
	st.Members[0].ID = "changed"
	if got := l.f.State().Members[0].ID; got != "n1" {
		t.Errorf("a State copy shares memory with the FSM: got id %q, want n1", got)
	}
}

func TestMarkFailed(t *testing.T) {
	tests := []struct {
		name        string
		size        int
		dead        string
		replacement *fsm.Member
	}{
		{"first of 3", 3, "n1", nil},
		{"middle of 3", 3, "n2", nil},
		{"last of 5", 5, "n5", nil},
		{"of 8", 8, "n4", nil},
		{"only member", 1, "n1", nil},
		{"first of 3, replaced", 3, "n1", &fsm.Member{ID: "r1", HTTP: "http://r1.test"}},
		{"middle of 5, replaced", 5, "n3", &fsm.Member{ID: "r1", HTTP: "https://r1.test:443"}},
		{"only member, replaced", 1, "n1", &fsm.Member{ID: "r1", HTTP: "http://r1.test"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := newLog(t)
			l.mustApply(fsm.Resize{Members: pool(tt.size)})
			prev := l.f.State()
			next := l.mustApply(fsm.MarkFailed{ID: tt.dead, Replacement: tt.replacement})

			if next.Epoch != prev.Epoch+1 {
				t.Errorf("got epoch %d, want %d", next.Epoch, prev.Epoch+1)
			}
			var want []fsm.Member
			for _, m := range prev.Members {
				switch {
				case m.ID != tt.dead:
					want = append(want, m)
				case tt.replacement != nil:
					want = append(want, *tt.replacement)
				}
			}
			if len(next.Members) != len(want) || (len(want) > 0 && !reflect.DeepEqual(next.Members, want)) {
				t.Errorf("got members %v, want %v", next.Members, want)
			}
			checkMap(t, next)
			checkSince(t, prev, next)
			for r := range next.Regions {
				from, to := prev.Regions[r], next.Regions[r]
				switch {
				case from != tt.dead && from != to:
					t.Errorf("region %d moved %q -> %q, want only %s's regions to move", r, from, to, tt.dead)
				case from == tt.dead && tt.replacement != nil && to != tt.replacement.ID:
					t.Errorf("region %d of %s: got owner %q, want the replacement %s", r, tt.dead, to, tt.replacement.ID)
				case from == tt.dead && to == tt.dead:
					t.Errorf("region %d: still owned by the dead member %s", r, tt.dead)
				}
			}
		})
	}
}

func TestMarkFailedThenGrow(t *testing.T) {
	l := newLog(t)
	l.mustApply(fsm.Resize{Members: pool(1)})
	l.mustApply(fsm.MarkFailed{ID: "n1"})
	empty := l.f.State()
	if len(empty.Members) != 0 || empty.Regions != (region.Map{}) || empty.Epoch != 2 {
		t.Fatalf("got members %v regions %v epoch %d, want an empty pool at epoch 2", empty.Members, empty.Regions, empty.Epoch)
	}
	next := l.mustApply(fsm.Resize{Members: pool(2)})
	checkMap(t, next)
	checkSince(t, empty, next)
	if next.Epoch != 3 {
		t.Errorf("got epoch %d, want 3", next.Epoch)
	}
}

// memSink is a raft.SnapshotSink over a bytes.Buffer.
type memSink struct {
	bytes.Buffer
	failWrite        bool
	closed, canceled bool
}

func (s *memSink) Write(p []byte) (int, error) {
	if s.failWrite {
		return 0, errors.New("disk full")
	}
	return s.Buffer.Write(p)
}
func (s *memSink) ID() string    { return "mem" }
func (s *memSink) Close() error  { s.closed = true; return nil }
func (s *memSink) Cancel() error { s.canceled = true; return nil }

// busyLogDecisions is how many decisions busyLog records, decision(0) on.
const busyLogDecisions = 5

// busyLog returns a log that went through every kind of command. Its state
// has every field set (checkPopulated).
func busyLog(t *testing.T) *log {
	t.Helper()
	l := newLog(t)
	l.mustApply(fsm.SetCache{Config: fsm.CacheConfig{CapacityMB: 300, Policy: fsm.PolicyRR}})
	l.mustApply(fsm.SetScaling{Policy: fsm.ScalingPolicy{Mode: fsm.ModeAuto, MaxMissRate: 0.6, MinMissRate: 0.05, ExpandRatio: 2.5, ShrinkRatio: 0.3}})
	l.mustApply(fsm.Resize{Members: pool(3)})
	l.mustApply(fsm.ClearCaches{})
	for i := range busyLogDecisions {
		l.mustApply(fsm.RecordDecision{Decision: decision(i)})
	}
	l.mustApply(fsm.MarkFailed{ID: "n2", Replacement: &fsm.Member{ID: "r2", HTTP: "http://r2.test"}})
	l.apply(fsm.Resize{Members: pool(9)})                                                   // refused
	l.apply(fsm.RecordDecision{Decision: fsm.Decision{Mode: fsm.ModeAuto, Action: "none"}}) // refused: no reason
	l.mustApply(fsm.Resize{Members: append(pool(5), mem("r2"))})
	l.mustApply(fsm.MarkFailed{ID: "n4"})
	l.mustApply(fsm.DeleteAll{})
	l.mustApply(fsm.ClearCaches{})
	return l
}

// checkPopulated fails the test unless every field of v, at every depth,
// holds a non-zero value: every field of a struct, every element of an
// array (but of an array of structs, as of a slice), and, for a slice, each field set in at least one element (a
// decision with a miss rate, one with an error, one applied, ...). A state
// that passes it can show a snapshot that loses any field.
func checkPopulated(t *testing.T, path string, v reflect.Value) {
	t.Helper()
	switch v.Kind() {
	case reflect.Struct:
		if v.Type() == reflect.TypeFor[time.Time]() {
			if v.Interface().(time.Time).IsZero() {
				t.Errorf("%s: got the zero time, want a time", path)
			}
			return
		}
		for i := range v.NumField() {
			checkPopulated(t, path+"."+v.Type().Field(i).Name, v.Field(i))
		}
	case reflect.Array:
		if v.Type().Elem().Kind() == reflect.Struct {
			// Like a slice of structs (From: only moved regions have one).
			c := reflect.New(v.Type()).Elem()
			c.Set(v)
			checkPopulated(t, path, c.Slice(0, v.Len()))
			return
		}
		for i := range v.Len() {
			checkPopulated(t, fmt.Sprintf("%s[%d]", path, i), v.Index(i))
		}
	case reflect.Slice:
		if v.Len() == 0 {
			t.Errorf("%s: got an empty list, want elements", path)
			return
		}
		if v.Type().Elem().Kind() != reflect.Struct {
			for i := range v.Len() {
				checkPopulated(t, fmt.Sprintf("%s[%d]", path, i), v.Index(i))
			}
			return
		}
		for f := range v.Type().Elem().NumField() {
			set := false
			for i := range v.Len() {
				if !v.Index(i).Field(f).IsZero() {
					set = true
					break
				}
			}
			if !set {
				t.Errorf("%s[*].%s: got zero in every element, want it set in at least one", path, v.Type().Elem().Field(f).Name)
			}
		}
	case reflect.Pointer:
		if v.IsNil() {
			t.Errorf("%s: got nil, want a value", path)
		}
	default:
		if v.IsZero() {
			t.Errorf("%s: got the zero value, want it set", path)
		}
	}
}

// TestSnapshotRestore: a state with every field set, built by applying
// real commands, comes back from a snapshot identical, field for field.
func TestSnapshotRestore(t *testing.T) {
	l := busyLog(t)
	want := l.f.State()
	checkPopulated(t, "state", reflect.ValueOf(want))
	// The decisions, By included, are the ones applied, so the state to
	// compare with is right before any snapshot is taken.
	var applied []fsm.Decision
	for i := range busyLogDecisions {
		applied = append(applied, decision(i))
	}
	if !reflect.DeepEqual(want.Decisions, applied) {
		t.Fatalf("decisions before the snapshot:\ngot  %+v\nwant %+v", want.Decisions, applied)
	}

	snap, err := l.f.Snapshot()
	if err != nil {
		t.Fatalf("Snapshot: %v", err)
	}
	defer snap.Release()
	// Changes after Snapshot are not in it.
	l.mustApply(fsm.ClearCaches{})

	t.Run("memory sink", func(t *testing.T) {
		var sink memSink
		if err := snap.Persist(&sink); err != nil {
			t.Fatalf("Persist: %v", err)
		}
		if !sink.closed || sink.canceled {
			t.Errorf("sink: got closed %v canceled %v, want closed only", sink.closed, sink.canceled)
		}
		f := fsm.New()
		ch := f.Changed()
		if err := f.Restore(io.NopCloser(&sink.Buffer)); err != nil {
			t.Fatalf("Restore: %v", err)
		}
		got := f.State()
		if !reflect.DeepEqual(got, want) {
			t.Errorf("restored:\ngot  %+v\nwant %+v", got, want)
		}
		checkPopulated(t, "restored", reflect.ValueOf(got))
		select {
		case <-ch:
		default:
			t.Errorf("Changed did not fire on Restore, want it to")
		}
	})

	t.Run("file snapshot store", func(t *testing.T) {
		store, err := raft.NewFileSnapshotStore(t.TempDir(), 1, io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		sink, err := store.Create(1, want.Index, 1, raft.Configuration{}, 1, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := snap.Persist(sink); err != nil {
			t.Fatalf("Persist: %v", err)
		}
		metas, err := store.List()
		if err != nil || len(metas) != 1 {
			t.Fatalf("List: got %d snapshots, %v, want 1", len(metas), err)
		}
		_, rc, err := store.Open(metas[0].ID)
		if err != nil {
			t.Fatal(err)
		}
		defer rc.Close()
		f := fsm.New()
		if err := f.Restore(rc); err != nil {
			t.Fatalf("Restore: %v", err)
		}
		got := f.State()
		if !reflect.DeepEqual(got, want) {
			t.Errorf("restored:\ngot  %+v\nwant %+v", got, want)
		}
		checkPopulated(t, "restored", reflect.ValueOf(got))
	})

	t.Run("persist error cancels", func(t *testing.T) {
		sink := memSink{failWrite: true}
		if err := snap.Persist(&sink); err == nil {
			t.Errorf("Persist: got nil error, want the write error")
		}
		if sink.closed || !sink.canceled {
			t.Errorf("sink: got closed %v canceled %v, want canceled only", sink.closed, sink.canceled)
		}
	})
}

func TestRestoreEmptyPool(t *testing.T) {
	f := fsm.New()
	snap, _ := f.Snapshot()
	var sink memSink
	if err := snap.Persist(&sink); err != nil {
		t.Fatal(err)
	}
	g := fsm.New()
	if err := g.Restore(io.NopCloser(&sink.Buffer)); err != nil {
		t.Fatalf("Restore: %v", err)
	}
	if got, want := g.State(), fsm.DefaultState(); !reflect.DeepEqual(got, want) {
		t.Errorf("got %+v, want %+v", got, want)
	}
}

// TestRestoreAtTheBounds: a snapshot of a state at every bound restores
// as it was: a pool at the maximum size, a full decision log, miss-rate
// thresholds of 0 and 1, and a view index behind the index (the last
// commands were decisions, which the data plane does not see). A snapshot
// written before states had a view index restores with the index as its
// view index.
func TestRestoreAtTheBounds(t *testing.T) {
	l := newLog(t)
	l.mustApply(fsm.Resize{Members: pool(fsm.MaxNodes)})
	l.mustApply(fsm.SetScaling{Policy: fsm.ScalingPolicy{Mode: fsm.ModeAuto, MaxMissRate: 1, MinMissRate: 0, ExpandRatio: 2, ShrinkRatio: 0.5}})
	for i := range fsm.MaxDecisions {
		l.mustApply(fsm.RecordDecision{Decision: decision(i)})
	}
	want := l.f.State()
	if len(want.Decisions) != fsm.MaxDecisions || want.ViewIndex >= want.Index {
		t.Fatalf("got %d decisions, view index %d, index %d; want %d decisions and the view index behind",
			len(want.Decisions), want.ViewIndex, want.Index, fsm.MaxDecisions)
	}
	snap, err := l.f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	var sink memSink
	if err := snap.Persist(&sink); err != nil {
		t.Fatal(err)
	}
	data := sink.Bytes()
	g := fsm.New()
	if err := g.Restore(io.NopCloser(bytes.NewReader(data))); err != nil {
		t.Fatalf("Restore: got %v, want none", err)
	}
	if got := g.State(); !reflect.DeepEqual(got, want) {
		t.Errorf("got %+v, want %+v", got, want)
	}

	old := bytes.Replace(data, fmt.Appendf(nil, `"view_index":%d,`, want.ViewIndex), nil, 1)
	if bytes.Equal(old, data) {
		t.Fatalf("no view_index in the snapshot %s", data)
	}
	g = fsm.New()
	if err := g.Restore(io.NopCloser(bytes.NewReader(old))); err != nil {
		t.Fatalf("Restore without view_index: got %v, want none", err)
	}
	if got := g.State(); got.ViewIndex != want.Index {
		t.Errorf("restored without view_index: got view index %d, want the index %d", got.ViewIndex, want.Index)
	}
}

func TestRestoreGarbage(t *testing.T) {
	good := busyLog(t).f.State()
	doc := func(version int, edit func(*fsm.State)) string {
		st := good.Clone()
		edit(&st)
		b, err := json.Marshal(map[string]any{"version": version, "state": st})
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	keep := func(*fsm.State) {}
	tests := []struct {
		name string
		data string
	}{
		{"empty", ""},
		{"not JSON", "\x00\x01garbage"},
		{"truncated", doc(1, keep)[:40]},
		{"version 2", doc(2, keep)},
		{"no version", `{"state":{}}`},
		{"unknown field", strings.Replace(doc(1, keep), `"version":1`, `"version":1,"extra":true`, 1)},
		{"bad cache config", doc(1, func(s *fsm.State) { s.Cache.CapacityMB = 0 })},
		{"bad scaling policy", doc(1, func(s *fsm.State) { s.Scaling.ExpandRatio = 1 })},
		{"duplicate members", doc(1, func(s *fsm.State) { s.Members = append(s.Members, s.Members[0]) })},
		{"region owner not a member", doc(1, func(s *fsm.State) { s.Regions[3] = "ghost" })},
		{"unowned region in a pool", doc(1, func(s *fsm.State) { s.Regions[3] = "" })},
		{"owned region in an empty pool", doc(1, func(s *fsm.State) { s.Members = nil })},
		{"since after epoch", doc(1, func(s *fsm.State) { s.Since[0] = s.Epoch + 1 })},
		{"bad decision", doc(1, func(s *fsm.State) { s.Decisions[2].Action = "explode" })},
		{"decision miss rate above 1", doc(1, func(s *fsm.State) { s.Decisions[1].MissRate = rate(2) })},
		{"too many decisions", doc(1, func(s *fsm.State) {
			for i := range fsm.MaxDecisions {
				s.Decisions = append(s.Decisions, decision(i))
			}
		})},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := busyLog(t)
			before := l.f.State()
			ch := l.f.Changed()
			err := l.f.Restore(io.NopCloser(strings.NewReader(tt.data)))
			if !errors.Is(err, fsm.ErrCorruptSnapshot) {
				t.Fatalf("Restore: got %v, want %v", err, fsm.ErrCorruptSnapshot)
			}
			if got := l.f.State(); !reflect.DeepEqual(got, before) {
				t.Errorf("state changed:\ngot  %+v\nwant %+v", got, before)
			}
			select {
			case <-ch:
				t.Errorf("Changed fired on a failed Restore, want no notification")
			default:
			}
		})
	}
}

func TestApplyIgnorable(t *testing.T) {
	l := newLog(t)
	l.mustApply(fsm.Resize{Members: pool(2)})
	before := l.f.State()
	ch := l.f.Changed()
	res := l.applyData([]byte{0x80 | 77, 1, '{', '}'})
	if res.Err != nil || res.Index != before.Index || res.Epoch != before.Epoch {
		t.Errorf("got %+v, want no error and the unchanged index %d epoch %d", res, before.Index, before.Epoch)
	}
	if got := l.f.State(); !reflect.DeepEqual(got, before) {
		t.Errorf("state changed:\ngot  %+v\nwant %+v", got, before)
	}
	select {
	case <-ch:
		t.Errorf("Changed fired for an ignored command, want no notification")
	default:
	}
	// The log goes on.
	if st := l.mustApply(fsm.ClearCaches{}); st.Index != 3 {
		t.Errorf("got index %d, want 3", st.Index)
	}
}

func TestWait(t *testing.T) {
	// guard bounds a test that would otherwise hang on a bug; it is not a sleep.
	guard := func(t *testing.T) context.Context {
		ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
		t.Cleanup(cancel)
		return ctx
	}
	type waited struct {
		st  fsm.State
		err error
	}

	t.Run("released by the next apply", func(t *testing.T) {
		l := newLog(t)
		l.mustApply(fsm.Resize{Members: pool(2)})
		done := make(chan waited, 1)
		go func() {
			st, err := l.f.Wait(guard(t), 1)
			done <- waited{st, err}
		}()
		select {
		case w := <-done:
			t.Fatalf("Wait returned %+v before the next apply, want it to block", w)
		default:
		}
		want := l.mustApply(fsm.ClearCaches{})
		w := <-done
		if w.err != nil || !reflect.DeepEqual(w.st, want) {
			t.Errorf("Wait: got %+v, %v, want %+v, nil", w.st, w.err, want)
		}
	})

	t.Run("refused command does not release", func(t *testing.T) {
		l := newLog(t)
		l.mustApply(fsm.Resize{Members: pool(2)})
		done := make(chan waited, 1)
		go func() {
			st, err := l.f.Wait(guard(t), 1)
			done <- waited{st, err}
		}()
		l.apply(fsm.MarkFailed{ID: "nobody"})
		select {
		case w := <-done:
			t.Fatalf("Wait returned %+v after a refused command, want it to block", w)
		default:
		}
		want := l.mustApply(fsm.DeleteAll{})
		if w := <-done; w.err != nil || w.st.Index != want.Index {
			t.Errorf("Wait: got index %d, %v, want %d, nil", w.st.Index, w.err, want.Index)
		}
	})

	t.Run("released by restore", func(t *testing.T) {
		src := busyLog(t)
		snap, _ := src.f.Snapshot()
		var sink memSink
		if err := snap.Persist(&sink); err != nil {
			t.Fatal(err)
		}
		f := fsm.New()
		done := make(chan waited, 1)
		go func() {
			st, err := f.Wait(guard(t), 0)
			done <- waited{st, err}
		}()
		if err := f.Restore(io.NopCloser(&sink.Buffer)); err != nil {
			t.Fatal(err)
		}
		if w := <-done; w.err != nil || !reflect.DeepEqual(w.st, src.f.State()) {
			t.Errorf("Wait: got %+v, %v, want the restored state", w.st, w.err)
		}
	})

	t.Run("index already passed", func(t *testing.T) {
		l := newLog(t)
		l.mustApply(fsm.Resize{Members: pool(2)})
		l.index = 5 // the next command is at log index 6
		want := l.mustApply(fsm.ClearCaches{})
		// An ended context proves Wait did not block.
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		for _, after := range []uint64{0, 1, 5} {
			st, err := l.f.Wait(ctx, after)
			if err != nil || !reflect.DeepEqual(st, want) {
				t.Errorf("Wait(%d): got %+v, %v, want %+v, nil", after, st, err, want)
			}
		}
	})

	t.Run("context canceled", func(t *testing.T) {
		l := newLog(t)
		l.mustApply(fsm.Resize{Members: pool(2)})
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan waited, 1)
		go func() {
			st, err := l.f.Wait(ctx, 1)
			done <- waited{st, err}
		}()
		cancel()
		if w := <-done; !errors.Is(w.err, context.Canceled) {
			t.Errorf("Wait: got %v, want %v", w.err, context.Canceled)
		}
		// Already canceled, nothing new.
		if _, err := l.f.Wait(ctx, 1); !errors.Is(err, context.Canceled) {
			t.Errorf("Wait with a canceled context: got %v, want %v", err, context.Canceled)
		}
	})

	t.Run("changed order", func(t *testing.T) {
		l := newLog(t)
		ch := l.f.Changed()
		st := l.f.State()
		select {
		case <-ch:
			t.Fatal("Changed fired with no change")
		default:
		}
		l.mustApply(fsm.ClearCaches{})
		select {
		case <-ch:
		default:
			t.Fatal("Changed did not fire on apply, want it to")
		}
		if got := l.f.State(); got.Index <= st.Index {
			t.Errorf("got index %d, want above %d", got.Index, st.Index)
		}
		if l.f.Changed() == ch {
			t.Errorf("Changed returned the closed channel again, want a new one")
		}
	})
}

func TestDeterminism(t *testing.T) {
	var cmds []fsm.Command
	cmds = append(cmds, allCommands()...)
	for _, n := range []int{1, 4, 2, 8, 3, 5, 1, 7} {
		cmds = append(cmds, fsm.Resize{Members: pool(n)})
		cmds = append(cmds, fsm.MarkFailed{ID: fmt.Sprintf("n%d", n)})
		cmds = append(cmds, fsm.MarkFailed{ID: "n1", Replacement: &fsm.Member{ID: fmt.Sprintf("x%d", n), HTTP: "http://x.test"}})
		cmds = append(cmds, fsm.Resize{Members: slices.Concat(pool(n-1), []fsm.Member{mem(fmt.Sprintf("x%d", n))})})
		cmds = append(cmds, fsm.ClearCaches{})
		for i := range 10 {
			cmds = append(cmds, fsm.RecordDecision{Decision: decision(n*10 + i)})
		}
	}
	var data [][]byte
	for _, c := range cmds {
		b, err := fsm.Encode(c)
		if err != nil {
			t.Fatalf("Encode(%#v): %v", c, err)
		}
		data = append(data, b)
	}

	run := func() (fsm.State, []string) {
		l := newLog(t)
		var results []string
		for _, b := range data {
			r := l.applyData(b)
			results = append(results, fmt.Sprintf("%d %d %v", r.Index, r.Epoch, r.Err))
		}
		return l.f.State(), results
	}
	st1, res1 := run()
	st2, res2 := run()
	if !reflect.DeepEqual(st1, st2) {
		t.Errorf("states differ:\n%+v\n%+v", st1, st2)
	}
	if !slices.Equal(res1, res2) {
		t.Errorf("results differ:\n%q\n%q", res1, res2)
	}
	j1, _ := json.Marshal(st1)
	j2, _ := json.Marshal(st2)
	if !bytes.Equal(j1, j2) {
		t.Errorf("JSON differs:\n%s\n%s", j1, j2)
	}
	if st1.Epoch < 10 {
		t.Errorf("got epoch %d, want the log to have changed the pool many times", st1.Epoch)
	}
	if len(st1.Decisions) != fsm.MaxDecisions {
		t.Errorf("got %d decisions, want the log to have filled all %d", len(st1.Decisions), fsm.MaxDecisions)
	}
}

func TestRecordDecision(t *testing.T) {
	l := newLog(t)
	l.mustApply(fsm.Resize{Members: pool(2)})
	var want []fsm.Decision
	for i := range fsm.MaxDecisions + 15 {
		prev := l.f.State()
		d := decision(i)
		next := l.mustApply(fsm.RecordDecision{Decision: d})
		want = append(want, d)
		if len(want) > fsm.MaxDecisions {
			want = want[1:]
		}
		if !reflect.DeepEqual(next.Decisions, want) {
			t.Fatalf("after decision %d: got %d decisions, want the newest %d:\ngot  %+v\nwant %+v", i, len(next.Decisions), len(want), next.Decisions, want)
		}
		// Only Index and Decisions move: not the epoch, not the pool.
		prev.Index, prev.Decisions = next.Index, next.Decisions
		if !reflect.DeepEqual(next, prev) {
			t.Fatalf("after decision %d: got %+v, want %+v", i, next, prev)
		}
	}
	st := l.f.State()
	if got, want := st.Decisions[len(st.Decisions)-1].Reason, decision(fsm.MaxDecisions+14).Reason; got != want {
		t.Errorf("newest decision: got %q, want %q (newest last)", got, want)
	}

	t.Run("state copies share no miss rate", func(t *testing.T) {
		st := l.f.State()
		i := slices.IndexFunc(st.Decisions, func(d fsm.Decision) bool { return d.MissRate != nil })
		*st.Decisions[i].MissRate = 0.999
		if got := *l.f.State().Decisions[i].MissRate; got == 0.999 {
			t.Errorf("a State copy shares memory with the FSM: got miss rate %v, want the recorded one", got)
		}
	})

	t.Run("JSON", func(t *testing.T) {
		d := decision(0)
		d.Gets, d.MissRate = 0, nil
		b, err := json.Marshal(d)
		if err != nil {
			t.Fatal(err)
		}
		for _, part := range []string{`"miss_rate":null`, `"action":"none"`, `"time":"2025-03-01T12:00:00Z"`} {
			if !strings.Contains(string(b), part) {
				t.Errorf("got %s, want it to contain %s", b, part)
			}
		}
		if strings.Contains(string(b), `"error"`) {
			t.Errorf("got %s, want no error field when there is no error", b)
		}
	})
}

func TestResizePreparedAtAnOlderEpochIsRefused(t *testing.T) {
	f := fsm.New()
	apply := func(i uint64, c fsm.Command) fsm.Result {
		b, err := fsm.Encode(c)
		if err != nil {
			t.Fatal(err)
		}
		return f.Apply(&raft.Log{Index: i, Type: raft.LogCommand, Data: b}).(fsm.Result)
	}
	a, b := fsm.Member{ID: "a", HTTP: "http://a:1"}, fsm.Member{ID: "b", HTTP: "http://b:1"}
	if r := apply(1, fsm.Resize{Members: []fsm.Member{a}}); r.Err != nil || r.Epoch != 1 {
		t.Fatalf("first resize: %+v", r)
	}
	if r := apply(2, fsm.Resize{Members: []fsm.Member{a, b}, Epoch: 1}); r.Err != nil || r.Epoch != 2 {
		t.Fatalf("resize prepared at the current epoch: %+v, want applied at epoch 2", r)
	}
	before := f.State()
	r := apply(3, fsm.Resize{Members: []fsm.Member{a}, Epoch: 1})
	if !errors.Is(r.Err, fsm.ErrInvalidCommand) || !strings.Contains(r.Err.Error(), "prepared at epoch 1, now 2") {
		t.Fatalf("resize prepared at epoch 1 applied at 2: got %v, want refused", r.Err)
	}
	if got := f.State(); !reflect.DeepEqual(got, before) {
		t.Errorf("refused resize changed the state")
	}
}

// TestFromRecordsWhereMovedRegionsComeFrom: a resize records, for every
// region it moves, the member that owned it (its address included, even
// once it has left the pool), so the new owner can fill the region from
// it; a region taken from a failed member records none; a region that
// does not move keeps what it had.
func TestFromRecordsWhereMovedRegionsComeFrom(t *testing.T) {
	l := newLog(t)
	st := l.mustApply(fsm.Resize{Members: pool(1)})
	for r, from := range st.From {
		if from != (fsm.Member{}) {
			t.Errorf("first pool: region %d from %+v, want none (it had no owner)", r, from)
		}
	}
	st = l.mustApply(fsm.Resize{Members: pool(2)})
	moved := 0
	for r, owner := range st.Regions {
		switch {
		case owner == "n2":
			moved++
			if st.From[r] != mem("n1") || st.Since[r] != st.Epoch {
				t.Errorf("grow: region %d (now n2's) from %+v since %d, want n1 since %d", r, st.From[r], st.Since[r], st.Epoch)
			}
		case st.From[r] != (fsm.Member{}):
			t.Errorf("grow: region %d stayed with %s but records from %+v", r, owner, st.From[r])
		}
	}
	if moved == 0 {
		t.Fatal("grow to 2 moved no region")
	}
	st = l.mustApply(fsm.Resize{Members: pool(1)})
	for r := range st.Regions {
		if st.Since[r] == st.Epoch && st.From[r] != mem("n2") {
			t.Errorf("shrink: region %d moved back to n1 from %+v, want n2 (which has left the pool) with its address", r, st.From[r])
		}
	}
	l.mustApply(fsm.Resize{Members: pool(2)})
	st = l.mustApply(fsm.MarkFailed{ID: "n2"})
	for r := range st.Regions {
		if st.Since[r] == st.Epoch && st.From[r] != (fsm.Member{}) {
			t.Errorf("failure: region %d taken from failed n2 records from %+v, want none", r, st.From[r])
		}
	}
}

// TestDecisionGuardFields: the fields of the scaler's guards (Discounted,
// the estimate) survive Apply, copies and snapshots as recorded; entries
// and snapshots written before they existed decode with them empty, and a
// decision without them encodes exactly as before.
func TestDecisionGuardFields(t *testing.T) {
	t.Run("estimate time in UTC", func(t *testing.T) {
		l := newLog(t)
		zone := time.FixedZone("UTC+2", 2*60*60)
		cmd := guardDecision(func(d *fsm.Decision) { d.EstimateAt = d.EstimateAt.In(zone) })
		st := l.mustApply(cmd)
		got := st.Decisions[0].EstimateAt
		if got.Location() != time.UTC || !got.Equal(time.Date(2025, 3, 1, 12, 1, 0, 0, time.UTC)) {
			t.Errorf("estimate_at: got %v in %v, want 12:01 in UTC, as a snapshot restores it", got, got.Location())
		}
	})

	t.Run("state copies share no estimate", func(t *testing.T) {
		l := newLog(t)
		l.mustApply(guardDecision(func(*fsm.Decision) {}))
		st := l.f.State()
		*st.Decisions[0].Estimate = 0.999
		if got := *l.f.State().Decisions[0].Estimate; got != 0.6 {
			t.Errorf("a State copy shares memory with the FSM: got estimate %v, want 0.6", got)
		}
	})

	t.Run("an entry from before the guards", func(t *testing.T) {
		old := `{"decision":{"time":"2025-03-01T12:00:00Z","mode":"auto","nodes":2,"target":4,"gets":100,"miss_rate":0.62,` +
			`"action":"grow","reason":"miss rate 0.62 \u003e max 0.50: grow 2 -\u003e 4 (x2.0)","applied":true,"by":"m1"}}`
		l := newLog(t)
		res := l.applyData(append([]byte{byte(fsm.CmdRecordDecision), 1}, old...))
		if res.Err != nil {
			t.Fatalf("Apply: %v", res.Err)
		}
		d := l.f.State().Decisions[0]
		if d.Discounted != "" || d.EstimateNodes != 0 || d.Estimate != nil || d.EstimateFrom != "" || !d.EstimateAt.IsZero() || d.Reason == "" {
			t.Errorf("got %+v, want the old decision with empty guard fields", d)
		}
		// Encoded again, it is what the old build wrote (encoding/json
		// escapes > as \u003e).
		data, err := fsm.Encode(fsm.RecordDecision{Decision: d})
		if err != nil {
			t.Fatal(err)
		}
		if got := string(data[2:]); got != old {
			t.Errorf("encoded:\ngot  %s\nwant %s", got, old)
		}
	})

	t.Run("a snapshot from before the guards", func(t *testing.T) {
		l := newLog(t)
		l.mustApply(fsm.Resize{Members: pool(2)})
		l.mustApply(fsm.RecordDecision{Decision: allCommands()[7].(fsm.RecordDecision).Decision})
		want := l.f.State()
		snap, err := l.f.Snapshot()
		if err != nil {
			t.Fatal(err)
		}
		var sink memSink
		if err := snap.Persist(&sink); err != nil {
			t.Fatal(err)
		}
		for _, key := range []string{`"discounted"`, `"estimate`} {
			if strings.Contains(sink.String(), key) {
				t.Errorf("snapshot %s: got %s in it, want the format of before the guards", sink.String(), key)
			}
		}
		f := fsm.New()
		if err := f.Restore(io.NopCloser(&sink.Buffer)); err != nil {
			t.Fatalf("Restore: %v", err)
		}
		if got := f.State(); !reflect.DeepEqual(got, want) {
			t.Errorf("restored:\ngot  %+v\nwant %+v", got, want)
		}
	})
}
