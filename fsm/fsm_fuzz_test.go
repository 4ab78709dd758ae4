package fsm_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"reflect"
	"testing"

	"github.com/memcache/memcache/fsm"
)

// maxFuzzEntries bounds the log a FuzzApplySequence input makes.
const maxFuzzEntries = 64

// splitEntries cuts a fuzz input into log entries, one per line. Encode
// writes no raw newline (JSON escapes them in strings), so a log of encoded
// commands joined with '\n' splits back into the same commands.
func splitEntries(in []byte) [][]byte {
	entries := bytes.Split(in, []byte{'\n'})
	if len(entries) > maxFuzzEntries {
		entries = entries[:maxFuzzEntries]
	}
	return entries
}

// joinEntries is the inverse of splitEntries, for seeds.
func joinEntries(tb testing.TB, cmds ...fsm.Command) []byte {
	tb.Helper()
	var parts [][]byte
	for _, c := range cmds {
		b, err := fsm.Encode(c)
		if err != nil {
			tb.Fatalf("Encode(%#v): %v", c, err)
		}
		parts = append(parts, b)
	}
	return bytes.Join(parts, []byte{'\n'})
}

// replay applies entries to f at indexes from+1, from+2, … as Raft would,
// checking after each entry what Apply promises: a refused, skipped or
// held-back entry changes nothing; an applied one sets Index to its own;
// the epoch never goes back; the region map stays balanced over the
// members; Since moves for exactly the regions that changed owner. It
// returns every Result, printed.
func replay(t *testing.T, f *fsm.FSM, from uint64, entries [][]byte) []string {
	t.Helper()
	var results []string
	for i, data := range entries {
		index := from + uint64(i) + 1
		before := f.State()
		res := (&log{t: t, f: f, index: index - 1}).applyData(data)
		after := f.State()
		results = append(results, fmt.Sprintf("%d %d %v", res.Index, res.Epoch, res.Err))
		if res.Index != after.Index || res.Epoch != after.Epoch {
			t.Fatalf("entry %d (%q): result %+v, but the state is at index %d epoch %d", index, data, res, after.Index, after.Epoch)
		}
		changed := !reflect.DeepEqual(before, after)
		switch {
		case res.Err != nil && changed:
			t.Fatalf("entry %d (%q) was refused (%v) but changed the state:\nbefore %+v\nafter  %+v", index, data, res.Err, before, after)
		case res.Err != nil:
			if !errors.Is(res.Err, fsm.ErrInvalidCommand) && !errors.Is(res.Err, fsm.ErrHalted) {
				t.Fatalf("entry %d (%q): error %v is neither a refusal nor a halt", index, data, res.Err)
			}
		case after.Index != index && after.Index != before.Index:
			t.Fatalf("entry %d (%q): index went from %d to %d", index, data, before.Index, after.Index)
		case after.Index == before.Index && changed:
			// Skipped (ignorable): nothing may change.
			t.Fatalf("entry %d (%q) was skipped but changed the state:\nbefore %+v\nafter  %+v", index, data, before, after)
		}
		if after.Epoch < before.Epoch {
			t.Fatalf("entry %d (%q): epoch went back from %d to %d", index, data, before.Epoch, after.Epoch)
		}
		if after.ViewIndex > after.Index {
			t.Fatalf("entry %d (%q): view index %d after index %d", index, data, after.ViewIndex, after.Index)
		}
		if before.Epoch != after.Epoch {
			checkSince(t, before, after)
		} else if before.Regions != after.Regions || before.Since != after.Since {
			t.Fatalf("entry %d (%q): the region map changed without a new epoch", index, data)
		}
		checkMap(t, after)
	}
	return results
}

// snapshotBytes persists f's snapshot and returns its bytes, or nil and the
// error of Snapshot.
func snapshotBytes(t *testing.T, f *fsm.FSM) ([]byte, error) {
	t.Helper()
	snap, err := f.Snapshot()
	if err != nil {
		return nil, err
	}
	defer snap.Release()
	var sink memSink
	if err := snap.Persist(&sink); err != nil {
		t.Fatalf("Persist: %v", err)
	}
	return sink.Bytes(), nil
}

// FuzzApplySequence: any log, as bytes, applied to two fresh FSMs gives
// the same results and the same state (Apply is deterministic); a snapshot
// of that state restores to the identical state, and the restored FSM
// goes on exactly as the original does when both apply the same log again.
// Every entry is also checked as FuzzDecode checks one.
// go test -run '^$' -fuzz '^FuzzApplySequence$' ./fsm.
func FuzzApplySequence(f *testing.F) {
	f.Add(joinEntries(f, allCommands()...))
	f.Add(joinEntries(f, fsm.Resize{Members: pool(3)}, fsm.MarkFailed{ID: "n2"}, fsm.Resize{Members: pool(8)}, fsm.Resize{Members: pool(1)}))
	f.Add(joinEntries(f, fsm.Resize{Members: pool(4)}, fsm.MarkFailed{ID: "n1", Replacement: &fsm.Member{ID: "r1", HTTP: "http://r1.test"}},
		fsm.Resize{Members: pool(4), Epoch: 2}, fsm.Resize{Members: pool(5), Epoch: 1}))
	// Only changes outside the data plane's view: the view index stays 0.
	f.Add(joinEntries(f, fsm.SetScaling{Policy: fsm.ScalingPolicy{Mode: fsm.ModeAuto, MaxMissRate: 0.5, MinMissRate: 0.1, ExpandRatio: 2, ShrinkRatio: 0.5}},
		fsm.RecordDecision{Decision: decision(1)}))
	f.Add(joinEntries(f, fsm.Configure{Mode: ptr("auto")}, fsm.Configure{MinMissRate: ptr(0.9)}, fsm.Configure{CapacityMB: ptr(1024), Policy: ptr("RR")}))
	// A decision stamped with an explicit zero offset instead of Z.
	f.Add([]byte("\x07\x01" + `{"decision":{"time":"2025-03-01T12:00:00+00:00","mode":"auto","nodes":1,"target":1,"gets":0,"miss_rate":null,"action":"none","reason":"r","applied":false}}`))
	// Ignorable unknown entries between real ones, then one that halts.
	f.Add([]byte("\x01\x01{\"config\":{\"capacity_mb\":5,\"policy\":\"LRU\"}}\n\xe3\x01{}\n\x05\x01{}\n\x63\x01{}\n\x06\x01{}"))
	f.Add([]byte("\x03\x01{\"members\":[{\"id\":\"a\",\"http\":\"http://a\"},{\"id\":\"b\",\"http\":\"https://b:1\"}]}\n\x04\x01{\"id\":\"a\"}\n\x04\x01{\"id\":\"b\"}\n\x05\x01{}"))
	f.Fuzz(func(t *testing.T, in []byte) {
		entries := splitEntries(in)
		for _, e := range entries {
			decodeNoPanic(t, e)
		}

		a, b := fsm.New(), fsm.New()
		resA := replay(t, a, 0, entries)
		resB := replay(t, b, 0, entries)
		if !reflect.DeepEqual(resA, resB) {
			t.Fatalf("the same log gave different results:\n%q\n%q", resA, resB)
		}
		if sa, sb := a.State(), b.State(); !reflect.DeepEqual(sa, sb) {
			t.Fatalf("the same log gave different states:\n%+v\n%+v", sa, sb)
		}
		if sa, sb := a.Stats(), b.Stats(); !reflect.DeepEqual(sa, sb) {
			t.Fatalf("the same log gave different stats:\n%+v\n%+v", sa, sb)
		}

		snapA, errA := snapshotBytes(t, a)
		snapB, errB := snapshotBytes(t, b)
		if _, halted := a.Halted(); halted {
			if !errors.Is(errA, fsm.ErrHalted) {
				t.Fatalf("Snapshot of a halted FSM: got %v, want ErrHalted", errA)
			}
			return
		}
		if errA != nil || errB != nil {
			t.Fatalf("Snapshot: %v, %v", errA, errB)
		}
		if !bytes.Equal(snapA, snapB) {
			t.Fatalf("the same state persisted differently:\n%s\n%s", snapA, snapB)
		}
		r := fsm.New()
		if err := r.Restore(io.NopCloser(bytes.NewReader(snapA))); err != nil {
			t.Fatalf("Restore of a snapshot of an applied log: %v\n%s", err, snapA)
		}
		if got, want := r.State(), a.State(); !reflect.DeepEqual(got, want) {
			t.Fatalf("restored state differs:\ngot  %+v\nwant %+v\nsnapshot %s", got, want, snapA)
		}
		if again, err := snapshotBytes(t, r); err != nil || !bytes.Equal(again, snapA) {
			t.Fatalf("snapshot of the restored state: got %s, %v, want %s", again, err, snapA)
		}

		// Restored or not, the FSM goes on the same way.
		from := a.State().Index
		from = max(from, uint64(len(entries)))
		resA = replay(t, a, from, entries)
		resR := replay(t, r, from, entries)
		if !reflect.DeepEqual(resA, resR) {
			t.Fatalf("after restore, the same log gave different results:\n%q\n%q", resA, resR)
		}
		if sa, sr := a.State(), r.State(); !reflect.DeepEqual(sa, sr) {
			t.Fatalf("after restore, the same log gave different states:\n%+v\n%+v", sa, sr)
		}
	})
}
