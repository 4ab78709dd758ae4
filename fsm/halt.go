package fsm

import (
	"fmt"

	"github.com/hashicorp/raft"
)

// Halt records the committed entry that stopped an FSM: the first one it
// could not apply.
type Halt struct {
	// Index is the entry's Raft index.
	Index uint64 `json:"index"`
	// Type is the entry's type byte as written, IgnoreUnknownFlag included
	// (0 for an entry too short to have one).
	Type CommandType `json:"type"`
	// Err says why the entry could not be applied.
	Err string `json:"error"`
}

// String says what happened and what the operator should do.
func (h Halt) String() string {
	return fmt.Sprintf("the replica cannot apply committed Raft entry %d (type byte %d: %s) and stopped applying at it; "+
		"it was probably written by a newer memcache: run a build that knows it on this replica, which then applies it and everything after",
		h.Index, uint8(h.Type), h.Err)
}

// Stats counts the entries the FSM did not apply.
type Stats struct {
	// Ignored is how many entries of unknown ignorable types were skipped.
	Ignored uint64
	// HeldBack is how many entries were not applied because the FSM halted.
	HeldBack uint64
	// Halt is the entry that halted the FSM, or nil.
	Halt *Halt
}

// Stats returns the FSM's counts of entries it did not apply.
func (f *FSM) Stats() Stats {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := Stats{Ignored: f.ignored, HeldBack: f.heldBack}
	if f.halt != nil {
		h := *f.halt
		s.Halt = &h
	}
	return s
}

// Halted returns the entry that halted the FSM, if it has halted.
func (f *FSM) Halted() (Halt, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.halt == nil {
		return Halt{}, false
	}
	return *f.halt, true
}

// haltLocked halts the FSM at entry l, which failed to decode with err,
// logs it once and wakes every waiter; it returns the error Apply answers.
// f.mu must be held.
func (f *FSM) haltLocked(l *raft.Log, err error) error {
	f.halt = &Halt{Index: l.Index, Type: entryType(l.Data), Err: err.Error()}
	f.log.Error("state machine halted: "+f.halt.String(),
		"index", l.Index, "type", uint8(f.halt.Type), "err", err, "applied_index", f.state.Index)
	f.notifyLocked()
	return f.haltErrLocked()
}

// haltErrLocked returns an error wrapping ErrHalted if the FSM has halted,
// else nil. f.mu must be held.
func (f *FSM) haltErrLocked() error {
	if f.halt == nil {
		return nil
	}
	return fmt.Errorf("%w at Raft index %d: %s", ErrHalted, f.halt.Index, f.halt.Err)
}

// entryType returns the type byte of an encoded command, 0 if it has none.
func entryType(data []byte) CommandType {
	if len(data) == 0 {
		return 0
	}
	return CommandType(data[0])
}
