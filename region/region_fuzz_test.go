package region

import (
	"slices"
	"strconv"
	"testing"
)

// FuzzResizeWalk walks a pool through a fuzzed sequence of grows and
// shrinks, starting from Assign of a fuzzed (possibly unbalanced) map.
// Each input byte is one step: its low bit says grow or shrink, the rest
// picks how many members and which. After every step the map is
// balanced over the members (every region has exactly one owner, a
// member, and every member owns Count/n rounded down or up), and, as the
// package doc promises from a balanced map, growing moves only regions
// that the new members take, shrinking moves only the removed members'
// regions, and both move exactly that many.
// go test -run '^$' -fuzz '^FuzzResizeWalk$' ./region.
func FuzzResizeWalk(f *testing.F) {
	f.Add([]byte{}, []byte{0, 0, 0, 0, 0, 0, 0})                                   // 1 -> 8 one at a time
	f.Add([]byte{8, 0, 1, 2, 3, 4, 5, 6, 7}, []byte{1, 1, 1, 1, 1, 1, 1, 0, 0, 0}) // 8 -> 1 -> 4
	f.Add([]byte{3, 0, 1, 2}, []byte{6, 3, 9, 1, 0, 4})                            // jumps of several members
	f.Add([]byte{2, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, []byte{0, 5, 2, 0xff, 0xfe})
	f.Add([]byte{16, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}, []byte{0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1})
	f.Fuzz(func(t *testing.T, start, steps []byte) {
		cur, members := decodeCase(start)
		if len(members) == 0 {
			members = []string{"m0"}
		}
		m := Assign(cur, members)
		checkBalanced(t, m, members)
		next := 100 // ids of new members: m100, m101, …
		for i, step := range steps {
			if i == 64 {
				break
			}
			grow := step&1 == 0
			k := 1 + int(step>>1)%4 // 1..4 members at a time
			var after []string
			switch {
			case grow && len(members)+k > Count:
				continue
			case grow:
				// New members go anywhere in the list: order only breaks ties.
				after = slices.Clone(members)
				for j := range k {
					at := (int(step) + j*7) % (len(after) + 1)
					after = slices.Insert(after, at, "m"+strconv.Itoa(next))
					next++
				}
			case len(members)-k < 1:
				continue
			default:
				after = slices.Clone(members)
				for j := range k {
					at := (int(step)/8 + j*5) % len(after)
					after = slices.Delete(after, at, at+1)
				}
			}
			got := Assign(m, after)
			checkBalanced(t, got, after)
			if t.Failed() {
				t.Fatalf("step %d: %q -> %q from %s", i, members, after, show(m))
			}
			moved := Moved(m, got)
			if grow {
				// Every moved region goes to a new member, and the new
				// members own nothing else.
				took := 0
				for reg := range got {
					isNew := !slices.Contains(members, got[reg])
					if m[reg] != got[reg] && !isNew {
						t.Fatalf("step %d: grow %q -> %q moved region %d from %q to the old member %q (%s -> %s)",
							i, members, after, reg, m[reg], got[reg], show(m), show(got))
					}
					if isNew {
						took++
					}
				}
				if moved != took {
					t.Fatalf("step %d: grow %q -> %q moved %d regions, want %d, the new members' (%s -> %s)", i, members, after, moved, took, show(m), show(got))
				}
			} else {
				// Every moved region was a removed member's, and each of
				// those moved.
				lost := 0
				for reg := range m {
					removed := !slices.Contains(after, m[reg])
					if m[reg] != got[reg] && !removed {
						t.Fatalf("step %d: shrink %q -> %q moved region %d from the remaining member %q to %q (%s -> %s)",
							i, members, after, reg, m[reg], got[reg], show(m), show(got))
					}
					if removed {
						lost++
					}
				}
				if moved != lost {
					t.Fatalf("step %d: shrink %q -> %q moved %d regions, want %d, the removed members' (%s -> %s)", i, members, after, moved, lost, show(m), show(got))
				}
			}
			if len(after) <= 10 {
				if want := lowerBound(m, after); moved != want {
					t.Fatalf("step %d: %q -> %q moved %d, want the lower bound %d", i, members, after, moved, want)
				}
			}
			m, members = got, after
		}
	})
}
