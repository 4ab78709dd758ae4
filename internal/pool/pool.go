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

// Validate reports, wrapping ErrBadConfig, what is wrong with c.
func (c CacheConfig) Validate() error {
	if c.CapacityMB < MinCapacityMB || c.CapacityMB > MaxCapacityMB {
		return fmt.Errorf("%w: capacity_mb %d is outside %d..%d", ErrBadConfig, c.CapacityMB, MinCapacityMB, MaxCapacityMB)
	}
	if c.Policy != LRU && c.Policy != RR {
		return fmt.Errorf("%w: policy %q is not %s or %s", ErrBadConfig, c.Policy, LRU, RR)
	}
	return nil
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
