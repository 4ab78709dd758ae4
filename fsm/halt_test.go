package fsm_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"reflect"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/memcache/memcache/fsm"
)

// TestApplyUndecodableHalts: an entry that does not decode and is not
// marked ignorable does not panic (a panic would recur at every restart,
// since the entry is replayed): the FSM halts at it, keeps the state before
// it, applies nothing after it, and says where it stopped.
func TestApplyUndecodableHalts(t *testing.T) {
	tests := []struct {
		name string
		data []byte
		typ  fsm.CommandType
	}{
		{"garbage", []byte("garbage"), 'g'},
		{"empty", nil, 0},
		{"short", []byte{1}, 1},
		{"unknown type", []byte{99, 1, '{', '}'}, 99},
		{"unknown version", []byte{byte(fsm.CmdClearCaches), 7, '{', '}'}, fsm.CmdClearCaches},
		{"corrupt body of a flagged known type", []byte{0x80 | byte(fsm.CmdSetCache), 1, '{'}, 0x80 | fsm.CmdSetCache},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := newLog(t)
			l.mustApply(fsm.Resize{Members: pool(2)})
			before := l.f.State()
			ch := l.f.Changed()

			res := l.applyData(tt.data) // index 2; must not panic
			if !errors.Is(res.Err, fsm.ErrHalted) || res.Index != before.Index {
				t.Fatalf("got %+v, want ErrHalted and the unchanged index %d", res, before.Index)
			}
			h, ok := l.f.Halted()
			if !ok || h.Index != 2 || h.Type != tt.typ || h.Err == "" {
				t.Fatalf("Halted() = %+v, %v; want index 2, type %d, a reason", h, ok, tt.typ)
			}
			select {
			case <-ch:
			default:
				t.Error("Changed did not fire on the halt, want waiters woken")
			}
			// Nothing after it is applied, not even a valid command.
			if res := l.apply(fsm.ClearCaches{}); !errors.Is(res.Err, fsm.ErrHalted) {
				t.Errorf("a valid command after the halt: got %+v, want ErrHalted", res)
			}
			if got := l.f.State(); !reflect.DeepEqual(got, before) {
				t.Errorf("state changed:\ngot  %+v\nwant %+v", got, before)
			}
			if st := l.f.Stats(); st.HeldBack != 1 || st.Halt == nil || st.Halt.Index != 2 {
				t.Errorf("Stats() = %+v, want 1 held back and the halt at 2", st)
			}
			// Waiters learn of it instead of waiting for their deadline.
			ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
			defer cancel()
			if _, err := l.f.Wait(ctx, before.Index); !errors.Is(err, fsm.ErrHalted) {
				t.Errorf("Wait past the halt: got %v, want ErrHalted", err)
			}
			if _, err := l.f.WaitView(ctx, before.ViewIndex); !errors.Is(err, fsm.ErrHalted) {
				t.Errorf("WaitView past the halt: got %v, want ErrHalted", err)
			}
			// No snapshot may record the entries it did not apply as applied.
			if _, err := l.f.Snapshot(); !errors.Is(err, fsm.ErrHalted) {
				t.Errorf("Snapshot while halted: got %v, want ErrHalted", err)
			}
		})
	}
}

// TestRestoreEndsHalt: a snapshot taken by a replica that could apply the
// entry brings a halted FSM back, and it applies again.
func TestRestoreEndsHalt(t *testing.T) {
	healthy := newLog(t)
	healthy.mustApply(fsm.Resize{Members: pool(3)})
	snap, err := healthy.f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	sink := &memSink{}
	if err := snap.Persist(sink); err != nil {
		t.Fatal(err)
	}

	l := newLog(t)
	l.applyData([]byte{99, 1, '{', '}'})
	if _, ok := l.f.Halted(); !ok {
		t.Fatal("not halted")
	}
	if err := l.f.Restore(io.NopCloser(bytes.NewReader(sink.Bytes()))); err != nil {
		t.Fatal(err)
	}
	if h, ok := l.f.Halted(); ok {
		t.Fatalf("still halted after Restore: %+v", h)
	}
	if got, want := l.f.State(), healthy.f.State(); !reflect.DeepEqual(got, want) {
		t.Fatalf("restored state:\ngot  %+v\nwant %+v", got, want)
	}
	l.index = 10
	l.mustApply(fsm.ClearCaches{})
}

// TestApplyIgnorableCounted: a skipped ignorable entry is counted, and the
// FSM goes on.
func TestApplyIgnorableCounted(t *testing.T) {
	l := newLog(t)
	l.applyData([]byte{0x80 | 77, 1, '{', '}'})
	l.applyData([]byte{0x80 | byte(fsm.CmdSetCache), 9, 'x'})
	if st := l.f.Stats(); st.Ignored != 2 || st.Halt != nil {
		t.Errorf("Stats() = %+v, want 2 ignored, no halt", st)
	}
	l.mustApply(fsm.ClearCaches{})
}

// TestDecodeGarbageNeverPanics feeds Decode and Apply random and mutated
// bytes: each returns an error or a command, never a panic, and Apply on a
// fresh FSM either applies, refuses, skips or halts.
func TestDecodeGarbageNeverPanics(t *testing.T) {
	var seeds [][]byte
	for _, c := range allCommands() {
		b, err := fsm.Encode(c)
		if err != nil {
			t.Fatal(err)
		}
		seeds = append(seeds, b)
	}
	rng := rand.New(rand.NewPCG(9, 9))
	inputs := [][]byte{nil, {}, {0}, {0x80}, {0xff, 0xff}, []byte("{}"), []byte("\x01\x01null"), []byte("\x03\x01{\"members\":null}")}
	for range 3000 {
		switch b := bytes.Clone(seeds[rng.IntN(len(seeds))]); rng.IntN(4) {
		case 0: // random bytes
			r := make([]byte, rng.IntN(64))
			for i := range r {
				r[i] = byte(rng.UintN(256))
			}
			inputs = append(inputs, r)
		case 1: // a valid command with bytes flipped
			for range 1 + rng.IntN(4) {
				b[rng.IntN(len(b))] = byte(rng.UintN(256))
			}
			inputs = append(inputs, b)
		case 2: // truncated
			inputs = append(inputs, b[:rng.IntN(len(b))])
		default: // another type or version byte on a valid body
			b[rng.IntN(2)] = byte(rng.UintN(256))
			inputs = append(inputs, b)
		}
	}
	for _, in := range inputs {
		decodeNoPanic(t, in)
	}
}

// FuzzDecode is the fuzz target behind TestDecodeGarbageNeverPanics:
// go test -fuzz FuzzDecode ./fsm.
func FuzzDecode(f *testing.F) {
	for _, c := range allCommands() {
		b, err := fsm.Encode(c)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, in []byte) { decodeNoPanic(t, in) })
}

func decodeNoPanic(t *testing.T, in []byte) {
	t.Helper()
	defer func() {
		if r := recover(); r != nil {
			t.Fatalf("input %q: panic %v", in, r)
		}
	}()
	cmd, err := fsm.Decode(in)
	if (cmd == nil) == (err == nil) {
		t.Fatalf("Decode(%q) = %v, %v: want a command or an error", in, cmd, err)
	}
	f := fsm.New()
	res, ok := f.Apply(&raft.Log{Index: 1, Type: raft.LogCommand, Data: in}).(fsm.Result)
	if !ok {
		t.Fatalf("Apply(%q) did not return a Result", in)
	}
	_, halted := f.Halted()
	switch {
	case err == nil && res.Err == nil: // applied
	case err == nil && errors.Is(res.Err, fsm.ErrInvalidCommand): // refused
	case errors.Is(err, fsm.ErrUnknownIgnorable) && res.Err == nil && !halted: // skipped
	case err != nil && !errors.Is(err, fsm.ErrUnknownIgnorable) && halted && errors.Is(res.Err, fsm.ErrHalted): // halted
	default:
		t.Fatalf("Apply(%q): decode error %v, result %+v, halted %v: not one of applied, refused, skipped, halted", in, err, res, halted)
	}
}
