// Package fsm holds the replicated state of the memcache pool and the commands that change it.
package fsm

// Design note.
//
// State is a plain value: the FSM keeps one copy under its mutex and hands out
// deep copies (Clone), so readers never share memory with Apply. Commands are
// typed and versioned on the wire (see Encode); each has a Validate method,
// run by the proposer before it proposes and again in Apply against the state
// the command actually meets, and one apply function that cannot fail once
// Validate has passed. A refused command changes nothing, not even Index, and
// its error comes back to the proposer as Result.Err.
//
// Pool changes go through setPool, the single place that applies the epoch
// rule: the epoch goes up by one when the member list or the region map
// changes, and Since[r] records the epoch at which region r got its current
// owner.
//
// Entries a replica cannot apply. A committed entry is in every replica's
// log and is replayed at every start, so a panic in Apply would be a crash
// loop that no restart ends. Instead, as Nomad does:
//
//   - Unknown types are refused at propose time: Encode refuses a command
//     it cannot decode, and the leader decodes a forwarded command before
//     it proposes it (ErrInvalidCommand, 400 at the API). Only a leader of a
//     newer build can commit a type an older replica does not know.
//   - A type byte with IgnoreUnknownFlag marks a command that replicas that
//     do not know its type (or version) may skip: Apply logs it, counts it
//     (Stats.Ignored) and changes nothing, not even Index, so every replica
//     of the same build reaches the same state.
//   - Any other entry that does not decode (an unknown type without the
//     flag, an unknown version, a body that is not the JSON of its type)
//     halts the FSM: it logs the index and type once, keeps the state of
//     the entry before, and applies nothing more, answering ErrHalted for
//     every later entry (counted in Stats.HeldBack). Every replica of that
//     build halts at the same index with the same state; none applies half
//     of the log. A halted FSM refuses Snapshot, so Raft keeps the entries
//     from the halt on and a replica restarted with a build that knows the
//     entry replays and applies them; restarted with the same build, it
//     halts again at the same index instead of panicking. Restore (a
//     snapshot from a leader that could apply the entry) ends the halt.
//     The replica stays up so that its /raft/status, /healthz and /readyz
//     say why; its cluster package stops serving reads and the watch, and
//     refuses writes, until then.

import (
	"errors"
	"fmt"
	"net/url"
	"time"

	"github.com/memcache/memcache/internal/pool"
	"github.com/memcache/memcache/region"
)

// Pool bounds: the number of members a Resize may ask for.
const (
	MaxNodes = 8
	MinNodes = 1
)

// Scaling modes.
const (
	ModeManual = "manual" // the pool changes only on request; the scaler is idle
	ModeAuto   = "auto"   // the leader's scaler resizes the pool by miss rate
)

// Policy is a cache replacement policy (the data plane's vocabulary).
type Policy = pool.Policy

// Replacement policies of the cache nodes.
const (
	PolicyLRU = pool.LRU // least recently used
	PolicyRR  = pool.RR  // random replacement
)

// Cache capacity bounds, in MB per node.
const (
	MinCapacityMB = pool.MinCapacityMB
	MaxCapacityMB = pool.MaxCapacityMB
)

// Scaler actions, the Action of a Decision.
const (
	ActionGrow   = "grow"   // the pool was asked to grow to Target
	ActionShrink = "shrink" // the pool was asked to shrink to Target
	ActionNone   = "none"   // no resize; Reason says why
)

// MaxDecisions is how many decisions State keeps, the newest last.
const MaxDecisions = 60

// MaxExpandRatio bounds ScalingPolicy.ExpandRatio: growing by more than the
// whole pool range in one step makes no sense.
const MaxExpandRatio = MaxNodes

// Errors returned by this package. Validation failures wrap ErrInvalidCommand
// with a message that says what is wrong; Apply returns them in Result.Err.
var (
	// ErrInvalidCommand: the command is well formed but not allowed, by itself
	// or against the current state. It changed nothing.
	ErrInvalidCommand = errors.New("invalid command")
	// ErrUnknownCommand: the type tag or version is not one this build knows.
	ErrUnknownCommand = errors.New("unknown command")
	// ErrUnknownIgnorable: the type tag or version is unknown but carries
	// IgnoreUnknownFlag, so the command may be skipped (rolling upgrades).
	ErrUnknownIgnorable = errors.New("unknown command, ignorable")
	// ErrCorruptCommand: the bytes are not an encoded command (too short, or
	// the body is not the JSON of its type).
	ErrCorruptCommand = errors.New("corrupt command")
	// ErrCorruptSnapshot: Restore was given a snapshot it cannot read or
	// whose state is not sane; the FSM keeps its state.
	ErrCorruptSnapshot = errors.New("corrupt snapshot")
	// ErrHalted: the FSM met a committed entry it cannot apply and applies
	// nothing more (see Halt); the replica needs a build that knows it.
	ErrHalted = errors.New("state machine halted")
)

// CacheConfig is the configuration every cache node applies; the data
// plane's own type, so the FSM and the nodes share one vocabulary.
type CacheConfig = pool.CacheConfig

// ValidateCache reports, wrapping ErrInvalidCommand and a FieldErrors,
// what is wrong with c; the bounds are the data plane's
// (pool.CacheConfig.Problems).
func ValidateCache(c CacheConfig) error { return invalidFields(c.Problems()) }

// FieldError is one refused field of the cache config or the scaling policy,
// with the bounds it broke; FieldErrors is all of them. A validation error
// of this package wraps a FieldErrors when the fault is in those fields, so
// that a caller can word the refusal itself (errors.As).
type (
	FieldError  = pool.FieldError
	FieldErrors = pool.FieldErrors
)

// invalidFields wraps fes in ErrInvalidCommand, or returns nil if it is empty.
func invalidFields(fes FieldErrors) error {
	if len(fes) == 0 {
		return nil
	}
	return fmt.Errorf("%w: %w", ErrInvalidCommand, fes)
}

// ScalingPolicy says how the leader's scaler sizes the pool (DESIGN.md §7).
type ScalingPolicy struct {
	Mode        string  `json:"mode"`          // ModeManual or ModeAuto
	MaxMissRate float64 `json:"max_miss_rate"` // grow above this; 0..1
	MinMissRate float64 `json:"min_miss_rate"` // shrink below this; 0..1, below MaxMissRate
	ExpandRatio float64 `json:"expand_ratio"`  // > 1 and <= MaxExpandRatio
	ShrinkRatio float64 `json:"shrink_ratio"`  // strictly between 0 and 1
}

// Validate reports, wrapping ErrInvalidCommand and a FieldErrors with one
// entry per refused field, what is wrong with p.
func (p ScalingPolicy) Validate() error { return invalidFields(p.problems()) }

// problems returns the refused fields of p. The comparisons are written so
// that NaN fails them.
func (p ScalingPolicy) problems() FieldErrors {
	var fes FieldErrors
	if p.Mode != ModeManual && p.Mode != ModeAuto {
		fes = append(fes, &FieldError{Field: "mode", Value: p.Mode, OneOf: []string{ModeManual, ModeAuto}})
	}
	maxOK := p.MaxMissRate >= 0 && p.MaxMissRate <= 1
	if !maxOK {
		fes = append(fes, &FieldError{Field: "max_miss_rate", Value: p.MaxMissRate, Min: 0, Max: 1})
	}
	minOK := p.MinMissRate >= 0 && p.MinMissRate <= 1
	if !minOK {
		fes = append(fes, &FieldError{Field: "min_miss_rate", Value: p.MinMissRate, Min: 0, Max: 1})
	}
	if minOK && maxOK && !(p.MinMissRate < p.MaxMissRate) {
		fes = append(fes, &FieldError{Field: "min_miss_rate", Value: p.MinMissRate, Below: "max_miss_rate", Limit: p.MaxMissRate})
	}
	if !(p.ExpandRatio > 1 && p.ExpandRatio <= MaxExpandRatio) {
		fes = append(fes, &FieldError{Field: "expand_ratio", Value: p.ExpandRatio, Min: 1, MinOpen: true, Max: MaxExpandRatio})
	}
	if !(p.ShrinkRatio > 0 && p.ShrinkRatio < 1) {
		fes = append(fes, &FieldError{Field: "shrink_ratio", Value: p.ShrinkRatio, Min: 0, MinOpen: true, Max: 1, MaxOpen: true})
	}
	return fes
}

// Discount kinds, the Discounted of a Decision: why the window was not read
// as the steady miss rate of the pool's size.
const (
	DiscountResize       = "resize"        // the window included a resize of the pool or the warm-up after it
	DiscountHandoff      = "handoff"       // a warm handoff was running when the round read the window
	DiscountAfterHandoff = "after-handoff" // the window included a round that found a handoff running, or the warm-up after it
)

// Decision is one round of the leader's scaler (DESIGN.md §7): a resize it
// asked for, or a non-decision with its reason. The proposer fills in every
// field, Time included; Apply stores it as it is (its Time in UTC) and never
// reads the clock.
//
// Discounted and the Estimate fields are the scaler's guards against
// flapping (scaler/autoscale.go). Entries and snapshots written before
// they existed decode with them empty: a steady window, no estimate. A
// replica of an older build halts at the first decision that carries them
// (unknown fields), as it does for any entry it cannot apply, until it is
// upgraded.
type Decision struct {
	Time     time.Time `json:"time"`      // when the scaler decided
	Mode     string    `json:"mode"`      // ModeManual or ModeAuto, the policy's mode
	Nodes    int       `json:"nodes"`     // pool size when deciding; 0..MaxNodes
	Target   int       `json:"target"`    // size asked for; == Nodes when Action is ActionNone
	Gets     uint64    `json:"gets"`      // GETs in the window
	MissRate *float64  `json:"miss_rate"` // misses/GETs in the window; nil when there were no GETs
	Action   string    `json:"action"`    // ActionGrow, ActionShrink or ActionNone
	Reason   string    `json:"reason"`    // human-readable, e.g. "miss rate 0.62 > max 0.50: grow 2 -> 4 (x2.0)"
	Applied  bool      `json:"applied"`   // the resize was committed
	Error    string    `json:"error,omitempty"`
	By       string    `json:"by,omitempty"` // the replica (Raft leader) that decided

	// Discounted, if not empty, says why the window's miss rate is not the
	// steady miss rate of Nodes nodes (DiscountResize, DiscountHandoff,
	// DiscountAfterHandoff):
	// the scaler took no action on it, and never uses it as an estimate.
	Discounted string `json:"discounted,omitempty"`
	// EstimateNodes, if not zero, is the smaller size a shrink was checked
	// at: the shrink guard estimated the miss rate the pool would have
	// there. Estimate is that estimate, nil if there was none (the shrink
	// is then taken); EstimateFrom says what it comes from, for people
	// ("measured at 4 nodes at 14:02:05 UTC"), and EstimateAt is when that
	// measurement was made, so a later round can reuse it while it is
	// recent (the history keeps only MaxDecisions).
	EstimateNodes int       `json:"estimate_nodes,omitempty"`
	Estimate      *float64  `json:"estimate,omitempty"`
	EstimateFrom  string    `json:"estimate_from,omitempty"`
	EstimateAt    time.Time `json:"estimate_at,omitzero"`
}

// Validate reports, wrapping ErrInvalidCommand, what is wrong with d.
// Besides each field's range it checks that Target agrees with Action
// (above Nodes to grow, below to shrink, equal for none), that only a resize
// can be Applied, that a miss rate comes with GETs, that a discounted
// window has a miss rate and took no action, and that an estimate is for a
// smaller pool, in 0..1, with its source and a time no later than Time.
func (d Decision) Validate() error {
	switch {
	case d.Mode != ModeManual && d.Mode != ModeAuto:
		return invalidf("decision mode %q is not %s or %s", d.Mode, ModeManual, ModeAuto)
	case d.Nodes < 0 || d.Nodes > MaxNodes:
		return invalidf("decision nodes %d is outside 0..%d", d.Nodes, MaxNodes)
	case d.Target < 0 || d.Target > MaxNodes:
		return invalidf("decision target %d is outside 0..%d", d.Target, MaxNodes)
	case d.Reason == "":
		return invalidf("decision reason is empty")
	case d.MissRate != nil && !(*d.MissRate >= 0 && *d.MissRate <= 1):
		return invalidf("decision miss_rate %g is outside 0..1", *d.MissRate)
	case d.MissRate != nil && d.Gets == 0:
		return invalidf("decision miss_rate %g with no GETs", *d.MissRate)
	}
	if err := d.validateGuards(); err != nil {
		return err
	}
	switch d.Action {
	case ActionGrow:
		if d.Target <= d.Nodes {
			return invalidf("decision grow from %d to %d nodes", d.Nodes, d.Target)
		}
	case ActionShrink:
		if d.Target >= d.Nodes {
			return invalidf("decision shrink from %d to %d nodes", d.Nodes, d.Target)
		}
	case ActionNone:
		if d.Target != d.Nodes {
			return invalidf("decision with no action has target %d, want nodes %d", d.Target, d.Nodes)
		}
		if d.Applied {
			return invalidf("decision with no action is applied")
		}
	default:
		return invalidf("decision action %q is not %s, %s or %s", d.Action, ActionGrow, ActionShrink, ActionNone)
	}
	return nil
}

// validateGuards checks Discounted and the Estimate fields.
func (d Decision) validateGuards() error {
	switch d.Discounted {
	case "":
	case DiscountResize, DiscountHandoff, DiscountAfterHandoff:
		if d.MissRate == nil {
			return invalidf("decision discounted (%s) with no miss rate", d.Discounted)
		}
		if d.Action != ActionNone {
			return invalidf("decision discounted (%s) with action %s", d.Discounted, d.Action)
		}
	default:
		return invalidf("decision discounted %q is not %s, %s or %s", d.Discounted, DiscountResize, DiscountHandoff, DiscountAfterHandoff)
	}
	if d.EstimateNodes == 0 {
		if d.Estimate != nil || d.EstimateFrom != "" || !d.EstimateAt.IsZero() {
			return invalidf("decision estimate with no estimate_nodes")
		}
		return nil
	}
	switch {
	case d.EstimateNodes < MinNodes || d.EstimateNodes >= d.Nodes:
		return invalidf("decision estimate_nodes %d is outside %d..%d (below nodes)", d.EstimateNodes, MinNodes, d.Nodes-1)
	case d.Estimate == nil && (d.EstimateFrom != "" || !d.EstimateAt.IsZero()):
		return invalidf("decision estimate_from or estimate_at with no estimate")
	case d.Estimate == nil:
		return nil
	case !(*d.Estimate >= 0 && *d.Estimate <= 1):
		return invalidf("decision estimate %g is outside 0..1", *d.Estimate)
	case d.EstimateFrom == "":
		return invalidf("decision estimate with no estimate_from")
	case d.EstimateAt.IsZero() || d.EstimateAt.After(d.Time):
		return invalidf("decision estimate_at %v is not a time before the decision's %v", d.EstimateAt, d.Time)
	}
	return nil
}

// clone returns a copy of d that shares no memory with it.
func (d Decision) clone() Decision {
	if d.MissRate != nil {
		r := *d.MissRate
		d.MissRate = &r
	}
	if d.Estimate != nil {
		e := *d.Estimate
		d.Estimate = &e
	}
	return d
}

// Member is one cache node of the pool.
type Member = pool.Member

// ValidateMember reports, wrapping ErrInvalidCommand, what is wrong with m.
func ValidateMember(m Member) error {
	if m.ID == "" {
		return invalidf("member id is empty")
	}
	u, err := url.Parse(m.HTTP)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return invalidf("member %q: http %q is not an http(s) URL with a host", m.ID, m.HTTP)
	}
	return nil
}

// validateMembers checks a complete member list: each member valid, ids distinct.
// It is what region.Assign requires of its input.
func validateMembers(ms []Member) error {
	seen := make(map[string]bool, len(ms))
	for _, m := range ms {
		if err := ValidateMember(m); err != nil {
			return err
		}
		if seen[m.ID] {
			return invalidf("duplicate member id %q", m.ID)
		}
		seen[m.ID] = true
	}
	return nil
}

// State is the replicated state of the pool.
type State struct {
	Index     uint64               `json:"index"`      // Raft log index of the last command applied successfully
	ViewIndex uint64               `json:"view_index"` // Raft log index of the last command that changed View()
	Epoch     uint64               `json:"epoch"`      // +1 on every change of Members or Regions; 0 = no pool yet
	Cache     CacheConfig          `json:"cache"`      // what every node applies
	Scaling   ScalingPolicy        `json:"scaling"`    // what the scaler follows
	Members   []Member             `json:"members"`    // the pool, ordered; never nil in states this package makes
	Regions   region.Map           `json:"regions"`    // owner id per region; all "" when there are no members
	Since     [region.Count]uint64 `json:"since"`      // epoch at which each region got its current owner
	// From[r] is the member that owned region r until Since[r], if it kept
	// running (a resize moved the region): the new owner fills the region
	// from it (node/handoff.go). Zero if the region had no owner or its
	// owner failed.
	From      [region.Count]Member `json:"from"`
	ClearGen  uint64               `json:"clear_gen"`  // +1 on every ClearCaches
	DeleteGen uint64               `json:"delete_gen"` // +1 on every DeleteAll
	Decisions []Decision           `json:"decisions"`  // the scaler's last MaxDecisions, newest last; never nil in states this package makes
}

// DefaultState returns the state of a new cluster: 64 MB LRU caches, manual
// scaling with thresholds 0.8/0.2 and ratios 2.0/0.5, no members, no
// decisions, epoch 0.
func DefaultState() State {
	return State{
		Cache: CacheConfig{CapacityMB: 64, Policy: PolicyLRU},
		Scaling: ScalingPolicy{
			Mode:        ModeManual,
			MaxMissRate: 0.8,
			MinMissRate: 0.2,
			ExpandRatio: 2.0,
			ShrinkRatio: 0.5,
		},
		Members:   []Member{},
		Decisions: []Decision{},
	}
}

// Clone returns a deep copy of s. Members and Decisions of the copy are
// never nil, so empty lists encode as [] in JSON.
func (s State) Clone() State {
	c := s
	c.Members = make([]Member, len(s.Members))
	copy(c.Members, s.Members)
	c.Decisions = make([]Decision, len(s.Decisions))
	for i, d := range s.Decisions {
		c.Decisions[i] = d.clone()
	}
	return c
}

// View returns the data plane's view of s: what nodes and frontends act on.
// Its Index is ViewIndex, so a change the data plane need not see (a scaler
// decision, a scaling policy) leaves the view as it was.
func (s State) View() pool.View {
	v := pool.View{Index: s.ViewIndex, Epoch: s.Epoch, Cache: s.Cache, Regions: s.Regions, Since: s.Since, From: s.From,
		ClearGen: s.ClearGen, DeleteGen: s.DeleteGen, Members: make([]Member, len(s.Members))}
	copy(v.Members, s.Members)
	return v
}

// Member returns the member with id, if it is in the pool.
func (s State) Member(id string) (Member, bool) {
	for _, m := range s.Members {
		if m.ID == id {
			return m, true
		}
	}
	return Member{}, false
}

// check reports whether s is sane: what Apply can produce. Restore uses it.
func (s State) check() error {
	if err := ValidateCache(s.Cache); err != nil {
		return err
	}
	if err := s.Scaling.Validate(); err != nil {
		return err
	}
	if len(s.Members) > MaxNodes {
		return fmt.Errorf("%d members is above %d", len(s.Members), MaxNodes)
	}
	if err := validateMembers(s.Members); err != nil {
		return err
	}
	for r, owner := range s.Regions {
		if len(s.Members) == 0 && owner != "" {
			return fmt.Errorf("region %d is owned by %q in an empty pool", r, owner)
		}
		if len(s.Members) > 0 {
			if _, ok := s.Member(owner); !ok {
				return fmt.Errorf("region %d is owned by %q, not a member", r, owner)
			}
		}
		if s.Since[r] > s.Epoch {
			return fmt.Errorf("region %d since epoch %d, after the epoch %d", r, s.Since[r], s.Epoch)
		}
		if from := s.From[r]; from.ID != "" && from.ID == owner {
			return fmt.Errorf("region %d is handed off from its own owner %q", r, owner)
		}
	}
	if s.ViewIndex > s.Index {
		return fmt.Errorf("view index %d is after the index %d", s.ViewIndex, s.Index)
	}
	if len(s.Decisions) > MaxDecisions {
		return fmt.Errorf("%d decisions is above %d", len(s.Decisions), MaxDecisions)
	}
	for i, d := range s.Decisions {
		if err := d.Validate(); err != nil {
			return fmt.Errorf("decision %d: %w", i, err)
		}
	}
	return nil
}

// setPool makes members the pool, reassigns the regions starting from cur
// (normally s.Regions) and applies the epoch rule, recording where each
// moved region comes from unless its owner was failed. members must have
// passed validateMembers; setPool takes ownership of the slice.
func (s *State) setPool(members []Member, cur region.Map, failed string) {
	ids := make([]string, len(members))
	for i, m := range members {
		ids[i] = m.ID
	}
	regions := region.Assign(cur, ids)
	if regions == s.Regions && equalMembers(members, s.Members) {
		return
	}
	s.Epoch++
	for r := range regions {
		if regions[r] != s.Regions[r] {
			s.Since[r] = s.Epoch
			s.From[r] = Member{}
			if old, ok := s.Member(s.Regions[r]); ok && old.ID != failed && old.ID != regions[r] {
				s.From[r] = old
			}
		}
	}
	s.Members = members
	s.Regions = regions
}

func equalMembers(a, b []Member) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func invalidf(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalidCommand, fmt.Sprintf(format, args...))
}
