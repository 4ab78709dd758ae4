package region_test

import (
	"fmt"
	"strings"

	"github.com/memcache/memcache/region"
)

func ExampleAssign() {
	members := []string{"A", "B", "C"}
	line := func(label string, prev, next region.Map) {
		moved := fmt.Sprint(region.Moved(prev, next))
		if prev == (region.Map{}) {
			moved += " (from empty)"
		}
		fmt.Printf("%-8s %s  %s\n", label, strings.Join(next[:], " "), moved)
	}
	header := fmt.Sprintf("%-8s %s  %s", "region", "0 1 2 3 4 5 6 7 8 9 a b c d e f", "moved")

	fmt.Println("Assign")
	fmt.Println(header)
	var cur region.Map
	for n := 1; n <= len(members); n++ {
		next := region.Assign(cur, members[:n])
		line(nodes(n), cur, next)
		cur = next
	}

	fmt.Println("ModN (the seed's region mod n)")
	fmt.Println(header)
	var naive region.Map
	for n := 1; n <= len(members); n++ {
		next := region.ModN(members[:n])
		line(nodes(n), naive, next)
		naive = next
	}
	// Output:
	// Assign
	// region   0 1 2 3 4 5 6 7 8 9 a b c d e f  moved
	// 1 node   A A A A A A A A A A A A A A A A  16 (from empty)
	// 2 nodes  A A A A A A A A B B B B B B B B  8
	// 3 nodes  A A A A A A C C B B B B B C C C  5
	// ModN (the seed's region mod n)
	// region   0 1 2 3 4 5 6 7 8 9 a b c d e f  moved
	// 1 node   A A A A A A A A A A A A A A A A  16 (from empty)
	// 2 nodes  A B A B A B A B A B A B A B A B  8
	// 3 nodes  A B C A B C A B C A B C A B C A  10
}

func nodes(n int) string {
	if n == 1 {
		return "1 node"
	}
	return fmt.Sprintf("%d nodes", n)
}
