package region

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// mapOf builds a Map from 16 one-character owners; '.' means unowned.
func mapOf(t testing.TB, spec string) Map {
	t.Helper()
	if len(spec) != Count {
		t.Fatalf("mapOf(%q): got %d characters, want %d", spec, len(spec), Count)
	}
	var m Map
	for reg, c := range []byte(spec) {
		if c != '.' {
			m[reg] = string(c)
		}
	}
	return m
}

// show renders a map with one-character owners the way mapOf reads it.
func show(m Map) string {
	var b strings.Builder
	for _, owner := range m {
		switch {
		case owner == "":
			b.WriteByte('.')
		case len(owner) == 1:
			b.WriteString(owner)
		default:
			b.WriteString("[" + owner + "]")
		}
	}
	return b.String()
}

func TestOf(t *testing.T) {
	// Vectors from the shell: printf '%s' KEY | md5sum, first hex digit.
	tests := []struct {
		key  string
		want int
	}{
		{"", 0xd},                  // d41d8cd98f00b204e9800998ecf8427e
		{"a", 0x0},                 // 0cc175b9c0f1b6a831c399e269772661
		{"image-1", 0x7},           // 74513e0cda179230f7d62344869f004d
		{"héllo-wörld/猫.png", 0x1}, // 1fbdd57eee4336b350a20f999d27b889
		{"key-0", 0xb},             // b4428b7e85e1fa85481af6307d7f3cf7
	}
	for _, tt := range tests {
		t.Run(strconv.Quote(tt.key), func(t *testing.T) {
			if got := Of(tt.key); got != tt.want {
				t.Errorf("Of(%q): got %d, want %d", tt.key, got, tt.want)
			}
		})
	}
}

func TestOfUniform(t *testing.T) {
	const keys = 16000
	var hist [Count]int
	for i := range keys {
		reg := Of("key-" + strconv.Itoa(i))
		if reg < 0 || reg >= Count {
			t.Fatalf("Of(key-%d): got %d, want 0..%d", i, reg, Count-1)
		}
		hist[reg]++
	}
	// Pearson's chi-square against the uniform distribution, 15 degrees of
	// freedom: 37.70 is the 0.999 quantile, so a uniform hash exceeds it with
	// probability 0.1%. The keys are fixed, so the outcome is too.
	const bound = 37.70
	expected := float64(keys) / Count
	chi2 := 0.0
	for _, n := range hist {
		d := float64(n) - expected
		chi2 += d * d / expected
	}
	t.Logf("histogram %v, chi-square %.2f", hist, chi2)
	if chi2 > bound {
		t.Errorf("chi-square of %d keys over %d regions: got %.2f, want <= %.2f", keys, Count, chi2, bound)
	}
}

func TestAssign(t *testing.T) {
	tests := []struct {
		name    string
		cur     string
		members string // one character per member, in order
		want    string
	}{
		// Growing 1 -> 2 -> 3 from an empty map.
		{"empty to 1", "................", "A", "AAAAAAAAAAAAAAAA"},
		{"1 to 2", "AAAAAAAAAAAAAAAA", "AB", "AAAAAAAABBBBBBBB"},
		{"2 to 3", "AAAAAAAABBBBBBBB", "ABC", "AAAAAACCBBBBBCCC"},
		// Shrinking 3 -> 2 -> 1.
		{"3 to 2 without C", "AAAAAACCBBBBBCCC", "AB", "AAAAAAAABBBBBBBB"},
		{"2 to 1 without B", "AAAAAAAABBBBBBBB", "A", "AAAAAAAAAAAAAAAA"},
		{"3 to 2 without A", "AAAAAACCBBBBBCCC", "BC", "BBBCCCCCBBBBBCCC"},
		{"3 to 2 without B", "AAAAAACCBBBBBCCC", "AC", "AAAAAACCAACCCCCC"},
		{"2 to 1 without A", "AAAAAAAABBBBBBBB", "B", "BBBBBBBBBBBBBBBB"},
		// Quotas, ties and freed regions.
		{"empty to 3", "................", "ABC", "AAAAAABBBBBCCCCC"},
		{"tie goes to first member", "AAAAAAAABBBBBBBB", "BAC", "AAAAACCCBBBBBBCC"},
		{"larger quota to larger owner", "AAAABBBBBBBBBBBB", "ABC", "AAAABBBBBBACCCCC"},
		{"unowned and removed owners", "X.A.BXA.BBBBAAAA", "BA", "BBABBAAABBBBAAAA"},
		{"balanced map is kept", "ACBACBACBACBACBA", "ABC", "ACBACBACBACBACBA"},
		{"no members", "AAAAAAAABBBBBBBB", "", "................"},
		{"more members than regions", "................", "abcdefghijklmnopq", "abcdefghijklmnop"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var members []string
			for _, c := range tt.members {
				members = append(members, string(c))
			}
			got := Assign(mapOf(t, tt.cur), members)
			if want := mapOf(t, tt.want); got != want {
				t.Errorf("Assign(%s, %q): got %s, want %s", tt.cur, tt.members, show(got), tt.want)
			}
		})
	}
}

func TestAssignPanics(t *testing.T) {
	tests := []struct {
		name    string
		members []string
	}{
		{"empty id", []string{"A", ""}},
		{"duplicate id", []string{"A", "B", "A"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			defer func() {
				if recover() == nil {
					t.Errorf("Assign(_, %q): got no panic, want a panic", tt.members)
				}
			}()
			Assign(Map{}, tt.members)
		})
	}
}

func TestMovedCountsOwned(t *testing.T) {
	a := mapOf(t, "AAAAAACCBBBBBCCC")
	b := mapOf(t, "AAAAAAAABBBBBBBB")
	if got, want := Moved(a, b), 5; got != want {
		t.Errorf("Moved: got %d, want %d", got, want)
	}
	if got := Moved(a, a); got != 0 {
		t.Errorf("Moved(a, a): got %d, want 0", got)
	}
	if got, want := Moved(Map{}, b), Count; got != want {
		t.Errorf("Moved(empty, b): got %d, want %d", got, want)
	}

	partial := mapOf(t, "AAAAAACC.BBBB...")
	wantCounts := map[string]int{"A": 6, "B": 4, "C": 2}
	if got := partial.Counts(); !maps.Equal(got, wantCounts) {
		t.Errorf("Counts: got %v, want %v", got, wantCounts)
	}
	if got := (Map{}).Counts(); len(got) != 0 {
		t.Errorf("Counts of empty map: got %v, want empty", got)
	}

	tests := []struct {
		id   string
		want []int
	}{
		{"A", []int{0, 1, 2, 3, 4, 5}},
		{"B", []int{9, 10, 11, 12}},
		{"C", []int{6, 7}},
		{"", []int{8, 13, 14, 15}},
		{"Z", nil},
	}
	for _, tt := range tests {
		t.Run("Owned "+strconv.Quote(tt.id), func(t *testing.T) {
			if got := partial.Owned(tt.id); !slices.Equal(got, tt.want) {
				t.Errorf("Owned(%q): got %v, want %v", tt.id, got, tt.want)
			}
		})
	}
}

// ownedBy counts, without using the package, the regions of m owned by each member.
func ownedBy(m Map, members []string) []int {
	counts := make([]int, len(members))
	for _, owner := range m {
		for i, id := range members {
			if owner == id {
				counts[i]++
			}
		}
	}
	return counts
}

// checkBalanced fails unless every region of m is owned by a member and every
// member owns floor or ceil of Count/len(members) regions.
func checkBalanced(t *testing.T, m Map, members []string) {
	t.Helper()
	if len(members) == 0 {
		if m != (Map{}) {
			t.Errorf("no members: got %s, want every region unowned", show(m))
		}
		return
	}
	for reg, owner := range m {
		if !slices.Contains(members, owner) {
			t.Errorf("region %d: got owner %q, want one of %q", reg, owner, members)
		}
	}
	lo := Count / len(members)
	hi := (Count + len(members) - 1) / len(members)
	for i, c := range ownedBy(m, members) {
		if c < lo || c > hi {
			t.Errorf("member %q owns %d regions, want %d..%d (map %s)", members[i], c, lo, hi, show(m))
		}
	}
}

// lowerBound is the fewest regions any balanced map for members can move from
// cur, by brute force: over every choice of the Count%n members given the
// larger quota, keep = sum of min(current count, quota); the bound is
// Count - max keep.
func lowerBound(cur Map, members []string) int {
	n := len(members)
	if n == 0 {
		return Moved(cur, Map{})
	}
	q, r := Count/n, Count%n
	have := ownedBy(cur, members)
	best := 0
	for set := 0; set < 1<<n; set++ {
		if popcount(set) != r {
			continue
		}
		keep := 0
		for i := range n {
			quota := q
			if set&(1<<i) != 0 {
				quota++
			}
			keep += min(have[i], quota)
		}
		best = max(best, keep)
	}
	return Count - best
}

func popcount(x int) int {
	n := 0
	for ; x != 0; x &= x - 1 {
		n++
	}
	return n
}

// checkAssign runs the checks that hold from any start: balance, minimal
// movement, determinism, idempotence, and inputs left untouched. It returns
// the new map.
func checkAssign(t *testing.T, cur Map, members []string) Map {
	t.Helper()
	membersCopy := slices.Clone(members)
	curCopy := cur
	got := Assign(cur, members)
	checkBalanced(t, got, members)
	if moved, want := Moved(cur, got), lowerBound(cur, members); moved != want {
		t.Errorf("Assign(%s, %q) moved %d regions, want the lower bound %d (result %s)",
			show(cur), members, moved, want, show(got))
	}
	if again := Assign(curCopy, membersCopy); again != got {
		t.Errorf("Assign on copies: got %s, want %s", show(again), show(got))
	}
	if again := Assign(cur, members); again != got {
		t.Errorf("Assign again: got %s, want %s", show(again), show(got))
	}
	if !slices.Equal(members, membersCopy) {
		t.Errorf("Assign changed members: got %q, want %q", members, membersCopy)
	}
	if same := Assign(got, members); same != got {
		t.Errorf("Assign of its own result: got %s, want %s", show(same), show(got))
	}
	return got
}

func TestAssignGrowShrink(t *testing.T) {
	const (
		sequences = 400
		steps     = 12
		maxNodes  = 8
	)
	rng := rand.New(rand.NewPCG(58141752, 1))
	var grows, shrinks int
	for seq := range sequences {
		var cur Map
		var members []string
		fresh := 0
		for step := range steps {
			n := len(members)
			m := 1 + rng.IntN(maxNodes)
			for m == n {
				m = 1 + rng.IntN(maxNodes)
			}
			old := slices.Clone(members)
			var added, removed []string
			for len(members) < m { // fresh ids at random positions
				id := "n" + strconv.Itoa(fresh)
				fresh++
				added = append(added, id)
				members = slices.Insert(members, rng.IntN(len(members)+1), id)
			}
			for len(members) > m { // random members, not only the last
				i := rng.IntN(len(members))
				removed = append(removed, members[i])
				members = slices.Delete(members, i, i+1)
			}
			name := fmt.Sprintf("seq %d step %d %d->%d", seq, step, n, m)
			t.Run(name, func(t *testing.T) {
				next := checkAssign(t, cur, members)
				defer func() { cur = next }()
				if n == 0 {
					return
				}
				// cur is balanced for old: it came from Assign, checked in
				// the previous step.
				switch {
				case m > n:
					grows++
					// Only the new members gain regions, and they gain only their share.
					taken := 0
					for reg := range Count {
						if next[reg] != cur[reg] && !slices.Contains(added, next[reg]) {
							t.Errorf("growing %q -> %q: region %d moved %q -> %q, want it to move only to a new member",
								old, members, reg, cur[reg], next[reg])
						}
					}
					for _, c := range ownedBy(next, added) {
						taken += c
					}
					if got := Moved(cur, next); got != taken {
						t.Errorf("growing %q -> %q: got %d moved, want %d (taken by new members)", old, members, got, taken)
					}
				case m < n:
					shrinks++
					// Exactly the regions of removed members move.
					for reg := range Count {
						gone := slices.Contains(removed, cur[reg])
						if moved := next[reg] != cur[reg]; moved != gone {
							t.Errorf("shrinking %q -> %q: region %d of %q moved=%v, want moved=%v",
								old, members, reg, cur[reg], moved, gone)
						}
					}
				}
			})
			if t.Failed() {
				return
			}
		}
	}
	t.Logf("%d sequences: %d grow and %d shrink steps checked", sequences, grows, shrinks)
}

func TestAssignArbitraryStart(t *testing.T) {
	// Any current map: owners that are members, removed members, or nobody;
	// and member lists in any order, including more members than regions.
	rng := rand.New(rand.NewPCG(16, 8))
	ids := []string{"a", "b", "c", "d", "e", "f", "g", "h", "i", "j"}
	for i := range 500 {
		var cur Map
		for reg := range cur {
			if k := rng.IntN(len(ids) + 2); k < len(ids) {
				cur[reg] = ids[k]
			}
		}
		perm := rng.Perm(len(ids))
		members := make([]string, rng.IntN(len(ids)+1))
		for j := range members {
			members[j] = ids[perm[j]]
		}
		t.Run(fmt.Sprintf("case %d %s %q", i, show(cur), members), func(t *testing.T) {
			checkAssign(t, cur, members)
		})
	}
	many := make([]string, 20)
	for i := range many {
		many[i] = "m" + strconv.Itoa(i)
	}
	t.Run("20 members", func(t *testing.T) {
		checkAssign(t, ModN(many[:5]), many)
	})
}

func TestAssignMovesLessThanModN(t *testing.T) {
	const maxNodes = 8
	var members []string
	var assigned, naive Map
	assignMoved, naiveMoved := 0, 0
	for n := 1; n <= maxNodes; n++ {
		members = append(members, "n"+strconv.Itoa(n))
		nextAssigned, nextNaive := Assign(assigned, members), ModN(members)
		if n > 1 { // from the 1-node map onwards; both start by filling all 16
			assignMoved += Moved(assigned, nextAssigned)
			naiveMoved += Moved(naive, nextNaive)
			t.Logf("%d->%d nodes: Assign moved %d, ModN moved %d", n-1, n, Moved(assigned, nextAssigned), Moved(naive, nextNaive))
		}
		assigned, naive = nextAssigned, nextNaive
	}
	t.Logf("growth 1->%d: Assign moved %d regions in total, ModN moved %d", maxNodes, assignMoved, naiveMoved)
	if assignMoved >= naiveMoved {
		t.Errorf("regions moved growing 1->%d: got Assign %d, want fewer than ModN's %d", maxNodes, assignMoved, naiveMoved)
	}
}

func TestModN(t *testing.T) {
	tests := []struct {
		name    string
		members []string
		want    string
	}{
		{"none", nil, "................"},
		{"one", []string{"A"}, "AAAAAAAAAAAAAAAA"},
		{"three", []string{"A", "B", "C"}, "ABCABCABCABCABCA"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got, want := ModN(tt.members), mapOf(t, tt.want); got != want {
				t.Errorf("ModN(%q): got %s, want %s", tt.members, show(got), tt.want)
			}
		})
	}
}

// decodeCase turns fuzz bytes into a current map and a member list: the first
// byte gives the member count (0..18), the following bytes pick member ids
// from m0..m31 (duplicates skipped), and the last Count bytes (if present) give
// each region's owner from m0..m31 or unowned.
func decodeCase(data []byte) (Map, []string) {
	var cur Map
	if len(data) == 0 {
		return cur, nil
	}
	want := int(data[0]) % 19
	data = data[1:]
	var members []string
	for len(members) < want && len(data) > 0 {
		id := "m" + strconv.Itoa(int(data[0])%32)
		data = data[1:]
		if !slices.Contains(members, id) {
			members = append(members, id)
		}
	}
	for reg := 0; reg < Count && reg < len(data); reg++ {
		if v := int(data[reg]) % 40; v < 32 {
			cur[reg] = "m" + strconv.Itoa(v)
		}
	}
	return cur, members
}

func FuzzAssign(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte{3, 0, 1, 2})
	f.Add([]byte{3, 0, 1, 2, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1})
	f.Add([]byte{8, 7, 6, 5, 4, 3, 2, 1, 0, 9, 39, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15})
	f.Add([]byte{18, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17})
	f.Fuzz(func(t *testing.T, data []byte) {
		cur, members := decodeCase(data)
		got := Assign(cur, members)
		checkBalanced(t, got, members)
		if again := Assign(cur, slices.Clone(members)); again != got {
			t.Errorf("Assign again: got %s, want %s", show(again), show(got))
		}
		if same := Assign(got, members); same != got {
			t.Errorf("Assign of its own result: got %s, want %s", show(same), show(got))
		}
		if len(members) <= 10 { // brute force is 2^n
			if moved, want := Moved(cur, got), lowerBound(cur, members); moved != want {
				t.Errorf("Assign(%s, %q) moved %d, want the lower bound %d", show(cur), members, moved, want)
			}
		}
	})
}

// minMoves is the fewest regions any balanced map for members can move from
// cur, worked out in closed form (not by the brute force of lowerBound, nor
// by Assign's own steps). With n members, q = Count/n and r = Count%n, a
// balanced map gives r members q+1 regions and the rest q. A region must
// move if its owner is not a member, or if its owner holds more than its
// quota; each member above q that gets one of the r larger quotas keeps one
// more, and giving them to such members is all they can save.
func minMoves(cur Map, members []string) int {
	n := len(members)
	orphans := 0
	have := map[string]int{}
	for _, owner := range cur {
		if slices.Contains(members, owner) {
			have[owner]++
		} else if owner != "" || n > 0 {
			orphans++ // unowned regions move only if there is someone to take them
		}
	}
	if n == 0 {
		return orphans
	}
	q, r := Count/n, Count%n
	surplus, above := 0, 0
	for _, id := range members {
		if have[id] > q {
			surplus += have[id] - q
			above++
		}
	}
	return orphans + surplus - min(r, above)
}

// differ counts, without using the package, the regions whose owner differs.
func differ(a, b Map) int {
	n := 0
	for reg := range Count {
		if a[reg] != b[reg] {
			n++
		}
	}
	return n
}

// balancedMaps returns balanced maps for members (none if members is
// empty): the one Assign grows to one member at a time, the seed's mod-n
// map, and shuffled ones where the larger quotas go to random members.
func balancedMaps(rng *rand.Rand, members []string) []Map {
	n := len(members)
	if n == 0 {
		return []Map{{}}
	}
	var grown Map
	for k := 1; k <= n; k++ {
		grown = Assign(grown, members[:k])
	}
	maps := []Map{grown, ModN(members)}
	for range 6 {
		var owners []string
		for i, j := range rng.Perm(n) {
			c := Count / n
			if i < Count%n {
				c++
			}
			for range c {
				owners = append(owners, members[j])
			}
		}
		rng.Shuffle(len(owners), func(a, b int) { owners[a], owners[b] = owners[b], owners[a] })
		var m Map
		copy(m[:], owners)
		maps = append(maps, m)
	}
	return maps
}

// TestAssignExactMinimumMovement: from a balanced map, adding one member
// (n-1 -> n) or removing one (n -> n-1), for every n in 1..8, every
// position of the member added or removed and several starting maps, moves
// exactly the minimum the rule implies, computed independently by minMoves;
// one region more is a failure. The first rows pin the minimum itself for
// members appended and the last one removed: the new member takes q =
// Count/n (the r larger quotas go to old members, which already hold more
// than q), and the last member leaves with what it took.
func TestAssignExactMinimumMovement(t *testing.T) {
	// want[n] is the minimum moved growing n-1 -> n by appending a member,
	// and shrinking n -> n-1 by removing the last one, from the map Assign
	// grew one member at a time: 16/1, 16/2, 16/3, ... rounded down.
	want := map[int]int{1: 16, 2: 8, 3: 5, 4: 4, 5: 3, 6: 2, 7: 2, 8: 2}
	all := []string{"A", "B", "C", "D", "E", "F", "G", "H"}
	var grown Map
	for n := 1; n <= 8; n++ {
		next := Assign(grown, all[:n])
		if got := differ(grown, next); got != want[n] || minMoves(grown, all[:n]) != want[n] {
			t.Errorf("growing %d -> %d by appending: got %d moved (minMoves %d), want %d",
				n-1, n, got, minMoves(grown, all[:n]), want[n])
		}
		if got := differ(next, Assign(next, all[:n-1])); got != want[n] {
			t.Errorf("shrinking %d -> %d by removing the last member: got %d moved, want %d", n, n-1, got, want[n])
		}
		grown = next
	}

	rng := rand.New(rand.NewPCG(1, 8))
	for n := 1; n <= 8; n++ {
		t.Run(fmt.Sprintf("grow %d to %d", n-1, n), func(t *testing.T) {
			old := all[:n-1]
			for k, cur := range balancedMaps(rng, old) {
				for pos := range n {
					members := slices.Insert(slices.Clone(old), pos, "N")
					next := Assign(cur, members)
					checkBalanced(t, next, members)
					if got, want := differ(cur, next), minMoves(cur, members); got != want {
						t.Errorf("map %d %s, %q: got %d moved (%s), want exactly %d",
							k, show(cur), members, got, show(next), want)
					}
				}
			}
		})
		t.Run(fmt.Sprintf("shrink %d to %d", n, n-1), func(t *testing.T) {
			for k, cur := range balancedMaps(rng, all[:n]) {
				for pos := range n {
					members := slices.Delete(slices.Clone(all[:n]), pos, pos+1)
					next := Assign(cur, members)
					checkBalanced(t, next, members)
					if got, want := differ(cur, next), minMoves(cur, members); got != want {
						t.Errorf("map %d %s, %q: got %d moved (%s), want exactly %d",
							k, show(cur), members, got, show(next), want)
					}
				}
			}
		})
	}
}
