package fsm

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"

	"github.com/hashicorp/raft"

	"github.com/memcache/memcache/internal/pool"
)

// Result is what Apply returns to Raft, read back with
// raft.ApplyFuture.Response(). Index and Epoch are the state's after the
// command. Err is a domain error wrapping ErrInvalidCommand: the command was
// refused and changed nothing (Index and Epoch are then the unchanged ones).
type Result struct {
	Index uint64
	Epoch uint64
	Err   error
}

// FSM is the Raft state machine of the pool. It implements raft.FSM.
// Its methods are safe for concurrent use.
type FSM struct {
	log *slog.Logger

	mu       sync.Mutex
	state    State         // guarded by mu
	changed  chan struct{} // guarded by mu; closed and replaced on every change and on a halt
	halt     *Halt         // guarded by mu; set by the first entry that cannot be applied
	ignored  uint64        // guarded by mu; entries of unknown ignorable types skipped
	heldBack uint64        // guarded by mu; entries not applied because the FSM halted
}

var _ raft.FSM = (*FSM)(nil)

// New returns an FSM holding DefaultState() that discards its logs; it is
// NewLogged with a logger that discards.
func New() *FSM { return NewLogged(slog.New(slog.DiscardHandler)) }

// NewLogged returns an FSM holding DefaultState() that logs skipped
// entries and a halt to log.
func NewLogged(log *slog.Logger) *FSM {
	return &FSM{log: log.With("component", "fsm"), state: DefaultState(), changed: make(chan struct{})}
}

// State returns a deep copy of the current state, safe to keep and modify.
func (f *FSM) State() State {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.state.Clone()
}

// Changed returns a channel that is closed at the next change of the state:
// an applied command or a Restore. Every change closes the current channel
// and makes a new one, so every caller holding it wakes up.
//
// To wait without missing a change, take the channel before reading the state:
//
//	for {
//		ch := f.Changed()
//		st := f.State()
//		if st.Index > known {
//			return st
//		}
//		<-ch // or select with ctx.Done()
//	}
//
// Wait does exactly this.
func (f *FSM) Changed() <-chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.changed
}

// Wait returns the state as soon as its Index is above after, at once if it
// already is. It returns ctx.Err() if ctx ends first, and an error wrapping
// ErrHalted if the FSM halts first (it will not get there).
func (f *FSM) Wait(ctx context.Context, after uint64) (State, error) {
	for {
		f.mu.Lock()
		if f.state.Index > after {
			st := f.state.Clone()
			f.mu.Unlock()
			return st, nil
		}
		if err := f.haltErrLocked(); err != nil {
			f.mu.Unlock()
			return State{}, err
		}
		ch := f.changed
		f.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return State{}, ctx.Err()
		}
	}
}

// WaitView returns the data plane's view as soon as its Index is above
// after, at once if it already is. Changes outside the view (decisions,
// the scaling policy) do not end the wait. It returns ctx.Err() if ctx
// ends first, or an error wrapping ErrHalted if the FSM halts first.
func (f *FSM) WaitView(ctx context.Context, after uint64) (pool.View, error) {
	for {
		f.mu.Lock()
		if f.state.ViewIndex > after {
			v := f.state.View()
			f.mu.Unlock()
			return v, nil
		}
		if err := f.haltErrLocked(); err != nil {
			f.mu.Unlock()
			return pool.View{}, err
		}
		ch := f.changed
		f.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return pool.View{}, ctx.Err()
		}
	}
}

// View returns the data plane's view of the current state.
func (f *FSM) View() pool.View {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.state.View()
}

// notifyLocked wakes every watcher. f.mu must be held.
func (f *FSM) notifyLocked() {
	close(f.changed)
	f.changed = make(chan struct{})
}

// Apply implements raft.FSM. It decodes the command in l, validates it
// against the current state and applies it, setting Index to l.Index. It
// returns a Result; a refused command returns its error in Result.Err and
// changes nothing.
//
// An entry this build cannot apply never panics (see the package doc): a
// command of unknown type or version marked with IgnoreUnknownFlag is
// skipped, changing nothing; any other entry that does not decode halts
// the FSM, which then applies nothing more (Result.Err wraps ErrHalted)
// until Restore or a restart with a build that knows the entry.
func (f *FSM) Apply(l *raft.Log) any {
	if l.Type != raft.LogCommand {
		// Raft passes only commands to Apply; nothing to do otherwise.
		return f.result(nil)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.haltErrLocked(); err != nil {
		f.heldBack++
		return f.resultLocked(err)
	}
	cmd, err := Decode(l.Data)
	if errors.Is(err, ErrUnknownIgnorable) {
		f.ignored++
		f.log.Warn("skipped a committed command this build does not know; it is marked ignorable, so every replica of this build skips it",
			"index", l.Index, "type", entryType(l.Data), "err", err)
		return f.resultLocked(nil)
	}
	if err != nil {
		return f.resultLocked(f.haltLocked(l, err))
	}
	if err := cmd.Validate(f.state); err != nil {
		return f.resultLocked(err)
	}
	before := f.state.View()
	if !f.state.apply(cmd) {
		// Decode returns only this package's commands; this is a bug.
		return f.resultLocked(f.haltLocked(l, fmt.Errorf("%w: no apply function for %v", ErrUnknownCommand, cmd.Type())))
	}
	f.state.Index = l.Index
	if !pool.Equal(before, f.state.View()) {
		f.state.ViewIndex = l.Index
	}
	f.notifyLocked()
	return f.resultLocked(nil)
}

func (f *FSM) result(err error) Result {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.resultLocked(err)
}

func (f *FSM) resultLocked(err error) Result {
	return Result{Index: f.state.Index, Epoch: f.state.Epoch, Err: err}
}

// snapshotVersion is the format version of a persisted snapshot.
const snapshotVersion = 1

// snapshotFile is the JSON document a snapshot holds.
type snapshotFile struct {
	Version int   `json:"version"`
	State   State `json:"state"`
}

// Snapshot implements raft.FSM: it copies the state under the lock; the
// returned snapshot writes it out. A halted FSM refuses (ErrHalted): a
// snapshot would record the entries it could not apply as applied, Raft
// would compact them away, and a fixed build could never apply them.
func (f *FSM) Snapshot() (raft.FSMSnapshot, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.haltErrLocked(); err != nil {
		return nil, err
	}
	return &snapshot{state: f.state.Clone()}, nil
}

// Restore implements raft.FSM. It decodes the snapshot into a fresh state,
// checks it, and only then replaces the current state and wakes watchers. On
// error the current state is kept and the error wraps ErrCorruptSnapshot.
func (f *FSM) Restore(rc io.ReadCloser) error {
	data, err := io.ReadAll(rc)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrCorruptSnapshot, err)
	}
	d := json.NewDecoder(bytes.NewReader(data))
	d.DisallowUnknownFields()
	var sf snapshotFile
	if err := d.Decode(&sf); err != nil {
		return fmt.Errorf("%w: %v", ErrCorruptSnapshot, err)
	}
	if sf.Version != snapshotVersion {
		return fmt.Errorf("%w: format version %d, want %d", ErrCorruptSnapshot, sf.Version, snapshotVersion)
	}
	st := sf.State.Clone() // Members never nil, as in every state Apply makes
	if !hasViewIndex(data) {
		// A snapshot from before views had their own index: every part of
		// the state may have changed at its index. (A view index of 0 that
		// is written down is kept: only changes outside the view were
		// applied, and a replica that applied them has 0 too.)
		st.ViewIndex = st.Index
	}
	if err := st.check(); err != nil {
		return fmt.Errorf("%w: %v", ErrCorruptSnapshot, err)
	}

	f.mu.Lock()
	defer f.mu.Unlock()
	if f.halt != nil {
		// The snapshot holds the effect of the entry this FSM could not
		// apply (a leader of a newer build took it): the FSM is whole again.
		f.log.Info("restored a snapshot past the entry this replica could not apply; applying again",
			"halted_at", f.halt.Index, "snapshot_index", st.Index)
		f.halt = nil
	}
	f.state = st
	f.notifyLocked()
	return nil
}

// hasViewIndex reports whether the snapshot document data writes down the
// state's view_index.
func hasViewIndex(data []byte) bool {
	var probe struct {
		State struct {
			ViewIndex *uint64 `json:"view_index"`
		} `json:"state"`
	}
	return json.NewDecoder(bytes.NewReader(data)).Decode(&probe) == nil && probe.State.ViewIndex != nil
}

// snapshot is a point-in-time copy of the state.
type snapshot struct {
	state State
}

// Persist implements raft.FSMSnapshot: it writes the state as JSON to sink
// and closes it, or cancels it on error.
func (s *snapshot) Persist(sink raft.SnapshotSink) error {
	if err := json.NewEncoder(sink).Encode(snapshotFile{Version: snapshotVersion, State: s.state}); err != nil {
		_ = sink.Cancel()
		return fmt.Errorf("fsm: persisting snapshot: %w", err)
	}
	return sink.Close()
}

// Release implements raft.FSMSnapshot; there is nothing to release.
func (s *snapshot) Release() {}
