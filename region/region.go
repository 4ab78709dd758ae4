// Package region maps keys to the 16 regions of the key space and assigns regions to pool members.
package region

// Design note: the assignment rule.
//
// With n members, q = Count/n and r = Count%n, r members own q+1 regions and
// the rest own q. Assign maximises the number of regions that stay with their
// current owner, which for a given choice of quotas is the sum over members of
// min(current count, quota). Giving the larger quota to a member raises that sum
// by one exactly when the member already owns more than q regions, so handing
// the r larger quotas to the members that currently own the most regions is
// optimal. Every other region (owned by a removed member, unowned, or surplus
// of a member over its quota) must move, so the result moves the fewest
// regions any balanced map can. From a balanced map this means: growing moves
// only the regions the new members take, and shrinking moves only the regions
// of the removed members.

import (
	"crypto/md5"
	"fmt"
	"slices"
)

// Count is the number of regions in the key space.
const Count = 16

// Of returns the region of key: the first 4 bits of MD5(key) (md5sum[0] >> 4), 0..15.
func Of(key string) int {
	sum := md5.Sum([]byte(key))
	return int(sum[0] >> 4)
}

// Map says which member owns each region; "" means unowned.
type Map [Count]string

// Assign returns the region map for the member list members, starting from cur.
//
// Assign is pure and deterministic. members are distinct non-empty ids; their
// order matters only for breaking ties. No members gives a map with every
// region unowned. Assign panics if members holds an empty or duplicate id,
// which is a programming error: callers validate their input first.
//
// The rule: every member owns floor(Count/n) or ceil(Count/n) regions, and as
// few regions as possible change owner.
//   - The Count%n members that get ceil(Count/n) are those that currently own
//     the most regions, ties broken by position in members.
//   - A region stays with its current owner while that owner is a member and
//     within its quota; a member over its quota gives up its highest-numbered
//     regions.
//   - Freed regions (owned by removed members, unowned, or surplus) are handed
//     out in ascending region order to the members under quota, in members
//     order: the first such member fills up first.
func Assign(cur Map, members []string) Map {
	var next Map
	n := len(members)
	if n == 0 {
		return next
	}
	index := make(map[string]int, n)
	for i, id := range members {
		if id == "" {
			panic("region: Assign: empty member id")
		}
		if _, dup := index[id]; dup {
			panic(fmt.Sprintf("region: Assign: duplicate member id %q", id))
		}
		index[id] = i
	}

	have := make([]int, n)
	for _, owner := range cur {
		if i, ok := index[owner]; ok {
			have[i]++
		}
	}

	// Quotas: the members owning the most regions get the larger quota.
	q, r := Count/n, Count%n
	order := make([]int, n)
	for i := range order {
		order[i] = i
	}
	slices.SortStableFunc(order, func(a, b int) int { return have[b] - have[a] })
	quota := make([]int, n)
	for rank, i := range order {
		quota[i] = q
		if rank < r {
			quota[i]++
		}
	}

	// Keep what fits, lowest-numbered regions first.
	held := make([]int, n)
	var freed []int
	for reg, owner := range cur {
		if i, ok := index[owner]; ok && held[i] < quota[i] {
			next[reg] = owner
			held[i]++
			continue
		}
		freed = append(freed, reg)
	}

	// Hand out the rest in ascending region order, in members order.
	i := 0
	for _, reg := range freed {
		for held[i] == quota[i] {
			i++
		}
		next[reg] = members[i]
		held[i]++
	}
	return next
}

// ModN returns the seed's naive map, region r owned by members[r % len(members)].
// It moves most regions on every resize and is kept only for comparison.
// No members gives a map with every region unowned.
func ModN(members []string) Map {
	var m Map
	if len(members) == 0 {
		return m
	}
	for reg := range m {
		m[reg] = members[reg%len(members)]
	}
	return m
}

// Moved counts the regions whose owner differs between a and b.
func Moved(a, b Map) int {
	n := 0
	for reg := range a {
		if a[reg] != b[reg] {
			n++
		}
	}
	return n
}

// Counts returns how many regions each owner holds. Unowned regions and owners
// with zero regions are absent.
func (m Map) Counts() map[string]int {
	counts := make(map[string]int)
	for _, owner := range m {
		if owner != "" {
			counts[owner]++
		}
	}
	return counts
}

// Owned returns the sorted list of regions owned by id, or nil if it owns none.
// Owned("") lists the unowned regions.
func (m Map) Owned(id string) []int {
	var regs []int
	for reg, owner := range m {
		if owner == id {
			regs = append(regs, reg)
		}
	}
	return regs
}
