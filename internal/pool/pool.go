// Package pool is the data plane's view of the cache pool — members, region
// map, epoch, cache config and the clear/delete generations — and the watch
// protocol that pushes it from the manager replicas to nodes and frontends.
//
// The manager replicas hold the authoritative state in their Raft FSM; this
// package is what the data plane sees of it. Nodes and frontends depend on
// this package, never on the FSM or on hashicorp/raft, and the view changes
// only when the data plane must act: a scaler decision or a scaling-policy
// change does not wake them.
package pool

import (
	"errors"
	"fmt"
	"strings"

	"github.com/memcache/memcache/region"
)

// Policy is a cache replacement policy.
type Policy string

// Replacement policies.
const (
	// LRU evicts the least recently used entry.
	LRU Policy = "LRU"
	// RR evicts a uniformly random entry.
	RR Policy = "RR"
)

// Capacity bounds of a cache node, in MB.
const (
	MinCapacityMB = 1
	MaxCapacityMB = 1024
)

// ErrBadConfig is returned for a cache configuration outside its bounds.
var ErrBadConfig = errors.New("bad cache config")

// CacheConfig is the configuration every cache node applies.
type CacheConfig struct {
	CapacityMB int    `json:"capacity_mb"` // MinCapacityMB..MaxCapacityMB
	Policy     Policy `json:"policy"`      // LRU or RR
}

// Validate reports, wrapping ErrBadConfig and c.Problems(), what is wrong
// with c.
func (c CacheConfig) Validate() error {
	if fes := c.Problems(); len(fes) > 0 {
		return fmt.Errorf("%w: %w", ErrBadConfig, fes)
	}
	return nil
}

// Problems returns the refused fields of c, none if c is valid.
func (c CacheConfig) Problems() FieldErrors {
	var fes FieldErrors
	if c.CapacityMB < MinCapacityMB || c.CapacityMB > MaxCapacityMB {
		fes = append(fes, &FieldError{Field: "capacity_mb", Value: c.CapacityMB, Min: MinCapacityMB, Max: MaxCapacityMB})
	}
	if c.Policy != LRU && c.Policy != RR {
		fes = append(fes, &FieldError{Field: "policy", Value: string(c.Policy), OneOf: []string{string(LRU), string(RR)}})
	}
	return fes
}

// A FieldError is one refused field of a configuration, with the rule it
// broke, so that a caller (the web UI) can word the refusal for its own
// readers while the bounds stay where they are checked. Exactly one rule
// applies: OneOf if it is set, else Below if it is set, else the range
// Min..Max.
type FieldError struct {
	Field string // the field's JSON name, such as "capacity_mb"
	Value any    // the refused value: an int, a float64 or a string

	OneOf []string // the values the field may take

	Below string  // the field this one must be below...
	Limit float64 // ...and that field's value

	Min, Max         float64 // the range of the field
	MinOpen, MaxOpen bool    // whether Min, Max themselves are refused
}

// Error says what is wrong, in the APIs' words, such as
// "capacity_mb 0 is outside 1..1024" or `policy "LFU" is not LRU or RR`.
func (e *FieldError) Error() string {
	x, _ := e.Value.(float64)
	if i, ok := e.Value.(int); ok {
		x = float64(i)
	}
	switch {
	case e.OneOf != nil:
		return fmt.Sprintf("%s %q is not %s", e.Field, e.Value, strings.Join(e.OneOf, " or "))
	case e.Below != "" && x == e.Limit:
		return fmt.Sprintf("%s %v equals %s %v; it must be below", e.Field, e.Value, e.Below, e.Limit)
	case e.Below != "":
		return fmt.Sprintf("%s %v is above %s %v", e.Field, e.Value, e.Below, e.Limit)
	case !e.MinOpen && !e.MaxOpen:
		return fmt.Sprintf("%s %v is outside %v..%v", e.Field, e.Value, e.Min, e.Max)
	case e.MinOpen && e.MaxOpen:
		return fmt.Sprintf("%s %v must be between %v and %v", e.Field, e.Value, e.Min, e.Max)
	case e.MinOpen && !(x > e.Min):
		return fmt.Sprintf("%s %v must be greater than %v", e.Field, e.Value, e.Min)
	case !(x >= e.Min):
		return fmt.Sprintf("%s %v must be at least %v", e.Field, e.Value, e.Min)
	case e.MaxOpen:
		return fmt.Sprintf("%s %v must be below %v", e.Field, e.Value, e.Max)
	default:
		return fmt.Sprintf("%s %v must be at most %v", e.Field, e.Value, e.Max)
	}
}

// FieldErrors is every refused field of one configuration, in field order.
type FieldErrors []*FieldError

// Error joins the fields' errors with "; ".
func (es FieldErrors) Error() string {
	msgs := make([]string, len(es))
	for i, e := range es {
		msgs[i] = e.Error()
	}
	return strings.Join(msgs, "; ")
}

// Unwrap returns the fields' errors, for errors.As.
func (es FieldErrors) Unwrap() []error {
	errs := make([]error, len(es))
	for i, e := range es {
		errs[i] = e
	}
	return errs
}

// Member is one cache node of the pool.
type Member struct {
	ID   string `json:"id"`   // the node's id, as it joined by gossip
	HTTP string `json:"http"` // base URL of the node's HTTP API, http(s)://host[:port]
}

// View is the pool as the data plane acts on it.
type View struct {
	// Index is the Raft index of the last command that changed the view.
	// It only grows; a watcher asks for changes after the index it holds.
	Index uint64 `json:"index"`
	// Epoch goes up by one on every change of Members or Regions; 0 means
	// there is no pool yet.
	Epoch   uint64      `json:"epoch"`
	Cache   CacheConfig `json:"cache"`
	Members []Member    `json:"members"` // ordered; never nil in views this package makes
	Regions region.Map  `json:"regions"` // owner id per region; all "" when there are no members
	// Since[r] is the epoch at which region r got its current owner.
	Since [region.Count]uint64 `json:"since"`
	// From[r] is the member that owned region r until Since[r] and kept
	// running (a resize moved the region): its new owner fills the region
	// from it. Zero if the region had no owner before or its owner failed.
	From [region.Count]Member `json:"from"`
	// ClearGen and DeleteGen go up by one on every clear-caches and
	// delete-all, so a node that was away still learns it must clear.
	ClearGen  uint64 `json:"clear_gen"`
	DeleteGen uint64 `json:"delete_gen"`
}

// Generation is the view's cache generation: it goes up on every
// clear-caches and every delete-all. A node refuses a fill stamped with a
// generation older than the newest clear it has carried out.
func (v View) Generation() uint64 { return v.ClearGen + v.DeleteGen }

// Member returns the member with id, if it is in the pool.
func (v View) Member(id string) (Member, bool) {
	for _, m := range v.Members {
		if m.ID == id {
			return m, true
		}
	}
	return Member{}, false
}

// Owner returns the member that owns key's region, if any.
func (v View) Owner(key string) (Member, bool) {
	id := v.Regions[region.Of(key)]
	if id == "" {
		return Member{}, false
	}
	return v.Member(id)
}

// Clone returns a deep copy of v; Members is never nil.
func (v View) Clone() View {
	c := v
	c.Members = make([]Member, len(v.Members))
	copy(c.Members, v.Members)
	return c
}

// Equal reports whether a and b hold the same pool, ignoring Index.
func Equal(a, b View) bool {
	if a.Epoch != b.Epoch || a.Cache != b.Cache || a.Regions != b.Regions || a.Since != b.Since ||
		a.ClearGen != b.ClearGen || a.DeleteGen != b.DeleteGen || len(a.Members) != len(b.Members) {
		return false
	}
	for i := range a.Members {
		if a.Members[i] != b.Members[i] {
			return false
		}
	}
	return true
}
