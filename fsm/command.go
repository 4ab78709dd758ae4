package fsm

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"slices"
)

// CommandType tags an encoded command: the first byte on the wire.
type CommandType uint8

// Command types. Never renumber them: they are in every Raft log and snapshot
// that has been written.
const (
	CmdSetCache       CommandType = 1
	CmdSetScaling     CommandType = 2
	CmdResize         CommandType = 3
	CmdMarkFailed     CommandType = 4
	CmdClearCaches    CommandType = 5
	CmdDeleteAll      CommandType = 6
	CmdRecordDecision CommandType = 7
	CmdConfigure      CommandType = 8
)

// IgnoreUnknownFlag, set in the type byte, tells a replica that does not know
// the type (or its version) to skip the command instead of failing, as Nomad
// does for rolling upgrades. Commands of this build never set it.
const IgnoreUnknownFlag CommandType = 0x80

// commandVersion is the encoding version of every command type (byte 1).
const commandVersion = 1

// String returns the command's name, such as "SetCache".
func (t CommandType) String() string {
	switch t &^ IgnoreUnknownFlag {
	case CmdSetCache:
		return "SetCache"
	case CmdSetScaling:
		return "SetScaling"
	case CmdResize:
		return "Resize"
	case CmdMarkFailed:
		return "MarkFailed"
	case CmdClearCaches:
		return "ClearCaches"
	case CmdDeleteAll:
		return "DeleteAll"
	case CmdRecordDecision:
		return "RecordDecision"
	case CmdConfigure:
		return "Configure"
	}
	return fmt.Sprintf("CommandType(%d)", uint8(t))
}

// Command is a change to the State.
type Command interface {
	// Type returns the command's type tag.
	Type() CommandType
	// Validate checks the command against s, the current state. The same
	// check runs before the command is proposed and again in Apply; an error
	// wraps ErrInvalidCommand.
	Validate(s State) error
}

// SetCache sets the cache configuration of every node.
type SetCache struct {
	Config CacheConfig `json:"config"`
}

// SetScaling sets the scaling policy.
type SetScaling struct {
	Policy ScalingPolicy `json:"policy"`
}

// Resize replaces the pool with Members, the complete new member list:
// MinNodes..MaxNodes members with distinct non-empty ids and valid URLs.
// The regions are reassigned with region.Assign from the current map.
type Resize struct {
	Members []Member `json:"members"`
	// Epoch, if not zero, is the pool epoch the member list was computed
	// from: the command is refused if the pool has changed since (a leader
	// that lost leadership mid-resize must not undo its successor's work).
	Epoch uint64 `json:"epoch,omitempty"`
}

// MarkFailed removes member ID, which memberlist declared dead; the pool may
// become empty. With Replacement, the replacement takes the dead member's
// place in the member list and all of its regions, and no other region moves.
type MarkFailed struct {
	ID          string  `json:"id"`
	Replacement *Member `json:"replacement,omitempty"`
}

// ClearCaches tells every node to empty its cache (ClearGen+1).
type ClearCaches struct{}

// DeleteAll records that all data was deleted, so every node empties its
// cache (DeleteGen+1).
type DeleteAll struct{}

// RecordDecision appends a decision of the scaler (or a non-decision, with
// its reason) to State.Decisions, keeping the newest MaxDecisions. It changes
// nothing else, not the Epoch.
type RecordDecision struct {
	Decision Decision `json:"decision"`
}

// Configure is a partial update of the cache config and the scaling policy:
// every field that is not nil replaces the current value, the others keep
// the value of the state the command meets in Apply. The merged config and
// policy must be valid (so a patch checked against a stale state is checked
// again, against the current one, in Apply); a refused patch changes
// nothing. Because it is merged inside Apply, two concurrent patches of
// different fields both take effect, with no read-modify-write window and
// no retry; sent twice, a patch has the effect of sending it once.
// At least one field must be set.
type Configure struct {
	CapacityMB  *int     `json:"capacity_mb,omitempty"`
	Policy      *string  `json:"policy,omitempty"`
	Mode        *string  `json:"mode,omitempty"`
	MaxMissRate *float64 `json:"max_miss_rate,omitempty"`
	MinMissRate *float64 `json:"min_miss_rate,omitempty"`
	ExpandRatio *float64 `json:"expand_ratio,omitempty"`
	ShrinkRatio *float64 `json:"shrink_ratio,omitempty"`
}

// Empty reports whether c sets no field.
func (c Configure) Empty() bool { return c == Configure{} }

// Merge returns cache and scaling with c's fields replacing theirs.
func (c Configure) Merge(cache CacheConfig, scaling ScalingPolicy) (CacheConfig, ScalingPolicy) {
	set := func(dst *float64, v *float64) {
		if v != nil {
			*dst = *v
		}
	}
	if c.CapacityMB != nil {
		cache.CapacityMB = *c.CapacityMB
	}
	if c.Policy != nil {
		cache.Policy = Policy(*c.Policy)
	}
	if c.Mode != nil {
		scaling.Mode = *c.Mode
	}
	set(&scaling.MaxMissRate, c.MaxMissRate)
	set(&scaling.MinMissRate, c.MinMissRate)
	set(&scaling.ExpandRatio, c.ExpandRatio)
	set(&scaling.ShrinkRatio, c.ShrinkRatio)
	return cache, scaling
}

// Type implements Command.
func (SetCache) Type() CommandType { return CmdSetCache }

// Type implements Command.
func (SetScaling) Type() CommandType { return CmdSetScaling }

// Type implements Command.
func (Resize) Type() CommandType { return CmdResize }

// Type implements Command.
func (MarkFailed) Type() CommandType { return CmdMarkFailed }

// Type implements Command.
func (ClearCaches) Type() CommandType { return CmdClearCaches }

// Type implements Command.
func (DeleteAll) Type() CommandType { return CmdDeleteAll }

// Type implements Command.
func (RecordDecision) Type() CommandType { return CmdRecordDecision }

// Type implements Command.
func (Configure) Type() CommandType { return CmdConfigure }

// Validate implements Command.
func (c SetCache) Validate(State) error { return ValidateCache(c.Config) }

// Validate implements Command.
func (c SetScaling) Validate(State) error { return c.Policy.Validate() }

// Validate implements Command.
func (c Resize) Validate(s State) error {
	if n := len(c.Members); n < MinNodes || n > MaxNodes {
		return invalidf("%d nodes is outside %d..%d", n, MinNodes, MaxNodes)
	}
	if c.Epoch != 0 && c.Epoch != s.Epoch {
		return invalidf("the pool changed while this resize was prepared (prepared at epoch %d, now %d)", c.Epoch, s.Epoch)
	}
	return validateMembers(c.Members)
}

// Settled is implemented by a command that is not idempotent on the wire
// (sent again after it was applied, it is refused) but whose effect can be
// recognised in the state: a proposer that retried after an attempt that
// may have been committed asks SettledIn before it reports the refusal.
type Settled interface {
	// SettledIn reports whether s already holds the command's effect.
	SettledIn(s State) bool
}

// SettledIn implements Settled: the pool is exactly c.Members.
func (c Resize) SettledIn(s State) bool { return slices.Equal(s.Members, c.Members) }

// SettledIn implements Settled: c.ID is out of the pool, and its
// replacement, if any, is in it.
func (c MarkFailed) SettledIn(s State) bool {
	if _, in := s.Member(c.ID); in {
		return false
	}
	if c.Replacement != nil {
		m, in := s.Member(c.Replacement.ID)
		return in && m == *c.Replacement
	}
	return true
}

// Validate implements Command.
func (c MarkFailed) Validate(s State) error {
	if _, ok := s.Member(c.ID); !ok {
		return invalidf("member %q is not in the pool", c.ID)
	}
	if r := c.Replacement; r != nil {
		if err := ValidateMember(*r); err != nil {
			return fmt.Errorf("replacement: %w", err)
		}
		if _, ok := s.Member(r.ID); ok {
			return invalidf("replacement %q is already in the pool", r.ID)
		}
	}
	return nil
}

// Validate implements Command.
func (ClearCaches) Validate(State) error { return nil }

// Validate implements Command.
func (DeleteAll) Validate(State) error { return nil }

// Validate implements Command.
func (c RecordDecision) Validate(State) error { return c.Decision.Validate() }

// Validate implements Command: the config and policy that c makes of s's
// must both be valid. A refusal wraps a FieldErrors naming every refused
// field of both, unless c sets nothing.
func (c Configure) Validate(s State) error {
	if c.Empty() {
		return invalidf("the configuration update sets nothing")
	}
	cache, scaling := c.Merge(s.Cache, s.Scaling)
	return invalidFields(append(cache.Problems(), scaling.problems()...))
}

// The apply functions, one per command. Each runs only after the command's
// Validate passed against s, and cannot fail.

func (s *State) applySetCache(c SetCache) { s.Cache = c.Config }

func (s *State) applySetScaling(c SetScaling) { s.Scaling = c.Policy }

func (s *State) applyResize(c Resize) {
	members := make([]Member, len(c.Members))
	copy(members, c.Members)
	s.setPool(members, s.Regions, "")
}

func (s *State) applyMarkFailed(c MarkFailed) {
	members := make([]Member, 0, len(s.Members))
	cur := s.Regions
	for _, m := range s.Members {
		if m.ID != c.ID {
			members = append(members, m)
			continue
		}
		if c.Replacement != nil {
			// The replacement inherits the dead member's regions.
			members = append(members, *c.Replacement)
			for r, owner := range cur {
				if owner == c.ID {
					cur[r] = c.Replacement.ID
				}
			}
		}
	}
	s.setPool(members, cur, c.ID)
}

func (s *State) applyConfigure(c Configure) {
	s.Cache, s.Scaling = c.Merge(s.Cache, s.Scaling)
}

func (s *State) applyClearCaches(ClearCaches) { s.ClearGen++ }

func (s *State) applyDeleteAll(DeleteAll) { s.DeleteGen++ }

func (s *State) applyRecordDecision(c RecordDecision) {
	d := c.Decision.clone()
	// In UTC, as a snapshot restores it: a time decoded with a zero offset
	// may otherwise carry the replica's Local zone, and a replica restored
	// from a snapshot (or in another zone) would hold a different state.
	d.Time = d.Time.UTC()
	d.EstimateAt = d.EstimateAt.UTC()
	s.Decisions = append(s.Decisions, d)
	if extra := len(s.Decisions) - MaxDecisions; extra > 0 {
		s.Decisions = slices.Delete(s.Decisions, 0, extra)
	}
}

// apply runs the apply function of cmd. It reports false for a command type
// it does not know (a Command implemented outside this package).
func (s *State) apply(cmd Command) bool {
	switch c := cmd.(type) {
	case SetCache:
		s.applySetCache(c)
	case SetScaling:
		s.applySetScaling(c)
	case Resize:
		s.applyResize(c)
	case MarkFailed:
		s.applyMarkFailed(c)
	case ClearCaches:
		s.applyClearCaches(c)
	case DeleteAll:
		s.applyDeleteAll(c)
	case RecordDecision:
		s.applyRecordDecision(c)
	case Configure:
		s.applyConfigure(c)
	default:
		return false
	}
	return true
}

// Encode returns the wire form of c: byte 0 is c.Type(), byte 1 the encoding
// version (1), and the rest the JSON of c. c may be a command value or a
// pointer to one; Decode always returns values. A command this build cannot
// decode (a type it does not know, or one with IgnoreUnknownFlag set) is
// refused with an error wrapping both ErrInvalidCommand and
// ErrUnknownCommand: it is never proposed, so it never reaches the log.
func Encode(c Command) ([]byte, error) {
	if c == nil {
		return nil, fmt.Errorf("%w: %w: nil command", ErrInvalidCommand, ErrUnknownCommand)
	}
	t := c.Type()
	if _, ok := decoder(t); !ok {
		return nil, fmt.Errorf("%w: %w: type %d", ErrInvalidCommand, ErrUnknownCommand, uint8(t))
	}
	body, err := json.Marshal(c)
	if err != nil {
		return nil, fmt.Errorf("encoding %v: %w", t, err)
	}
	return append([]byte{byte(t), commandVersion}, body...), nil
}

// decoder returns the function decoding the JSON body of type t.
func decoder(t CommandType) (func([]byte) (Command, error), bool) {
	switch t {
	case CmdSetCache:
		return decodeAs[SetCache], true
	case CmdSetScaling:
		return decodeAs[SetScaling], true
	case CmdResize:
		return decodeAs[Resize], true
	case CmdMarkFailed:
		return decodeAs[MarkFailed], true
	case CmdClearCaches:
		return decodeAs[ClearCaches], true
	case CmdDeleteAll:
		return decodeAs[DeleteAll], true
	case CmdRecordDecision:
		return decodeAs[RecordDecision], true
	case CmdConfigure:
		return decodeAs[Configure], true
	}
	return nil, false
}

// Decode reads a command written by Encode. An unknown type or version
// returns an error wrapping ErrUnknownCommand, or ErrUnknownIgnorable if the
// type byte carries IgnoreUnknownFlag; bytes that are not a command return an
// error wrapping ErrCorruptCommand. Decode does not validate the command.
func Decode(b []byte) (Command, error) {
	if len(b) < 2 {
		return nil, fmt.Errorf("%w: %d bytes, want at least 2", ErrCorruptCommand, len(b))
	}
	t := CommandType(b[0])
	ignorable := t&IgnoreUnknownFlag != 0
	t &^= IgnoreUnknownFlag
	dec, ok := decoder(t)
	switch {
	case !ok && ignorable:
		return nil, fmt.Errorf("%w: type %d", ErrUnknownIgnorable, uint8(t))
	case !ok:
		return nil, fmt.Errorf("%w: type %d", ErrUnknownCommand, uint8(t))
	case b[1] != commandVersion && ignorable:
		return nil, fmt.Errorf("%w: %v version %d", ErrUnknownIgnorable, t, b[1])
	case b[1] != commandVersion:
		return nil, fmt.Errorf("%w: %v version %d, want %d", ErrUnknownCommand, t, b[1], commandVersion)
	}
	return dec(b[2:])
}

// decodeAs decodes a JSON body strictly: no unknown fields, nothing after it.
func decodeAs[T Command](body []byte) (Command, error) {
	var c T
	d := json.NewDecoder(bytes.NewReader(body))
	d.DisallowUnknownFields()
	if err := d.Decode(&c); err != nil {
		return nil, fmt.Errorf("%w: %v: %v", ErrCorruptCommand, c.Type(), err)
	}
	if _, err := d.Token(); err != io.EOF {
		return nil, fmt.Errorf("%w: %v: data after the JSON body", ErrCorruptCommand, c.Type())
	}
	return c, nil
}
