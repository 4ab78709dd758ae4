package fsm_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/memcache/memcache/fsm"
)

func ptr[T any](v T) *T { return &v }

// TestConfigurePatchesMergeInApply: two partial updates prepared against
// the same state (as two replicas would prepare them concurrently) both take
// effect, because each is merged with the state it meets in Apply.
func TestConfigurePatchesMergeInApply(t *testing.T) {
	l := newLog(t)
	l.mustApply(fsm.Configure{CapacityMB: ptr(200)})
	st := l.mustApply(fsm.Configure{Policy: ptr(string(fsm.PolicyRR)), Mode: ptr(fsm.ModeAuto)})
	if st.Cache != (fsm.CacheConfig{CapacityMB: 200, Policy: fsm.PolicyRR}) {
		t.Errorf("cache: got %+v, want 200 MB RR (neither patch lost)", st.Cache)
	}
	want := fsm.DefaultState().Scaling
	want.Mode = fsm.ModeAuto
	if st.Scaling != want {
		t.Errorf("scaling: got %+v, want %+v", st.Scaling, want)
	}
	// Repeating a patch changes nothing more.
	again := l.mustApply(fsm.Configure{Policy: ptr(string(fsm.PolicyRR)), Mode: ptr(fsm.ModeAuto)})
	if again.Cache != st.Cache || again.Scaling != st.Scaling {
		t.Errorf("repeat: got %+v %+v, want %+v %+v", again.Cache, again.Scaling, st.Cache, st.Scaling)
	}
}

// TestConfigureIsValidatedAgainstTheStateItMeets: a patch valid against the
// state it was prepared from is refused in Apply if, merged with the current
// state, it is not valid; the refusal changes nothing.
func TestConfigureIsValidatedAgainstTheStateItMeets(t *testing.T) {
	l := newLog(t)
	prepared := l.f.State() // max 0.8, min 0.2
	lower := fsm.Configure{MaxMissRate: ptr(0.5)}
	if err := lower.Validate(prepared); err != nil {
		t.Fatalf("max 0.5 against min 0.2: got %v, want valid", err)
	}
	// Meanwhile another replica raises the minimum.
	before := l.mustApply(fsm.Configure{MinMissRate: ptr(0.6)})
	res := l.apply(lower)
	if !errors.Is(res.Err, fsm.ErrInvalidCommand) || !strings.Contains(res.Err.Error(), "min_miss_rate 0.6 is above max_miss_rate 0.5") {
		t.Fatalf("max 0.5 against min 0.6: got %v, want refused", res.Err)
	}
	if after := l.f.State(); after.Index != before.Index || after.Scaling != before.Scaling || after.Cache != before.Cache {
		t.Errorf("refused patch changed the state: got %+v, want %+v", after, before)
	}
}

func TestConfigureRefusesBadPatches(t *testing.T) {
	tests := []struct {
		name string
		cmd  fsm.Configure
		want string
	}{
		{"empty", fsm.Configure{}, "sets nothing"},
		{"capacity 0", fsm.Configure{CapacityMB: ptr(0)}, "capacity_mb 0"},
		{"capacity 1025", fsm.Configure{CapacityMB: ptr(1025), Policy: ptr(string(fsm.PolicyRR))}, "capacity_mb 1025"},
		{"policy", fsm.Configure{Policy: ptr("FIFO")}, `policy "FIFO"`},
		{"mode", fsm.Configure{Mode: ptr("")}, `mode ""`},
		{"expand 1", fsm.Configure{ExpandRatio: ptr(1.0)}, "expand_ratio 1"},
		{"shrink 1", fsm.Configure{ShrinkRatio: ptr(1.0)}, "shrink_ratio 1"},
		{"min above default max", fsm.Configure{MinMissRate: ptr(0.9)}, "above max_miss_rate"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := newLog(t)
			before := l.f.State()
			res := l.apply(tt.cmd)
			if !errors.Is(res.Err, fsm.ErrInvalidCommand) || !strings.Contains(res.Err.Error(), tt.want) {
				t.Fatalf("got %v, want an invalid command containing %q", res.Err, tt.want)
			}
			if after := l.f.State(); after.Index != before.Index || after.Cache != before.Cache || after.Scaling != before.Scaling {
				t.Errorf("refused patch changed the state")
			}
		})
	}
}

// TestSettledRecognisesAnAppliedResizeAndMarkFailed: a Resize or MarkFailed
// sent again after it was applied is refused; SettledIn tells the proposer
// that its effect already holds, and only then.
func TestSettledRecognisesAnAppliedResizeAndMarkFailed(t *testing.T) {
	l := newLog(t)
	st := l.mustApply(fsm.Resize{Members: pool(3)})
	grow := fsm.Resize{Members: pool(4), Epoch: st.Epoch}
	if grow.SettledIn(st) {
		t.Fatal("a resize to 4 is settled in a pool of 3")
	}
	st = l.mustApply(grow)
	if err := grow.Validate(st); err == nil || !grow.SettledIn(st) {
		t.Errorf("resize sent again: Validate %v, SettledIn %v; want refused and settled", err, grow.SettledIn(st))
	}
	repl := fsm.Member{ID: "r1", HTTP: "http://r1.test:7000"}
	fail := fsm.MarkFailed{ID: st.Members[1].ID, Replacement: &repl}
	if fail.SettledIn(st) {
		t.Fatal("MarkFailed settled before it was applied")
	}
	st = l.mustApply(fail)
	if err := fail.Validate(st); err == nil || !fail.SettledIn(st) {
		t.Errorf("MarkFailed sent again: Validate %v, SettledIn %v; want refused and settled", err, fail.SettledIn(st))
	}
	other := fsm.MarkFailed{ID: st.Members[0].ID}
	if other.SettledIn(st) {
		t.Error("MarkFailed of a member still in the pool reported settled")
	}
	// The member is out, but not by this command: its replacement is
	// missing, or is in the pool with another address.
	gone := fsm.MarkFailed{ID: "n2", Replacement: &fsm.Member{ID: "r9", HTTP: "http://r9.test:7000"}}
	if gone.SettledIn(st) {
		t.Error("MarkFailed whose replacement is not in the pool reported settled")
	}
	moved := fsm.MarkFailed{ID: "n2", Replacement: &fsm.Member{ID: "r1", HTTP: "http://r1.test:7999"}}
	if moved.SettledIn(st) {
		t.Error("MarkFailed whose replacement is in the pool with another address reported settled")
	}
	if plain := (fsm.MarkFailed{ID: "n2"}); !plain.SettledIn(st) {
		t.Error("MarkFailed without replacement of a member out of the pool: not settled, want settled")
	}
}

// TestConfigureNamesEveryRefusedField: a refusal carries one FieldError per
// refused field of the cache config and the policy, with the bounds it
// broke, so that a caller can word it (the web UI does) without re-coding
// the bounds.
func TestConfigureNamesEveryRefusedField(t *testing.T) {
	patch := fsm.Configure{CapacityMB: ptr(2000), Policy: ptr("LFU"), MinMissRate: ptr(0.9), ShrinkRatio: ptr(1.0)}
	err := patch.Validate(fsm.DefaultState()) // max miss rate 0.8
	var fes fsm.FieldErrors
	if !errors.Is(err, fsm.ErrInvalidCommand) || !errors.As(err, &fes) {
		t.Fatalf("got %v, want an invalid command wrapping FieldErrors", err)
	}
	want := []fsm.FieldError{
		{Field: "capacity_mb", Value: 2000, Min: fsm.MinCapacityMB, Max: fsm.MaxCapacityMB},
		{Field: "policy", Value: "LFU", OneOf: []string{"LRU", "RR"}},
		{Field: "min_miss_rate", Value: 0.9, Below: "max_miss_rate", Limit: 0.8},
		{Field: "shrink_ratio", Value: 1.0, Min: 0, MinOpen: true, Max: 1, MaxOpen: true},
	}
	if len(fes) != len(want) {
		t.Fatalf("got %d refused fields (%v), want %d", len(fes), err, len(want))
	}
	for i, fe := range fes {
		if fe.Field != want[i].Field || fe.Value != want[i].Value || strings.Join(fe.OneOf, ",") != strings.Join(want[i].OneOf, ",") ||
			fe.Below != want[i].Below || fe.Limit != want[i].Limit ||
			fe.Min != want[i].Min || fe.Max != want[i].Max || fe.MinOpen != want[i].MinOpen || fe.MaxOpen != want[i].MaxOpen {
			t.Errorf("field %d: got %+v, want %+v", i, *fe, want[i])
		}
	}
	const msg = `capacity_mb 2000 is outside 1..1024; policy "LFU" is not LRU or RR; ` +
		`min_miss_rate 0.9 is above max_miss_rate 0.8; shrink_ratio 1 must be between 0 and 1`
	if !strings.HasSuffix(err.Error(), msg) {
		t.Errorf("message: got %q, want it to end with %q", err, msg)
	}
}
