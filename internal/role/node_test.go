package role_test

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"runtime/debug"
	"strings"
	"testing"
	"time"

	"github.com/memcache/memcache/gossip"
	"github.com/memcache/memcache/internal/pool"
	"github.com/memcache/memcache/internal/role"
	"github.com/memcache/memcache/internal/waitfor"
	"github.com/memcache/memcache/node"
)

// childEnv makes the test binary run a cache node instead of the
// tests: the parent kills it with SIGKILL to test a node that dies without
// leaving.
const childEnv = "MEMCACHE_TEST_CHILD_NODE"

func TestMain(m *testing.M) {
	if join := os.Getenv(childEnv); join != "" {
		runChildNode(join)
		return
	}
	os.Exit(m.Run())
}

func runChildNode(join string) {
	svc, err := role.StartNode(context.Background(), role.NodeConfig{
		Name:   "child",
		Gossip: gossip.Config{Join: []string{join}, Fast: true},
	}, slog.New(slog.DiscardHandler))
	if err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	fmt.Println("gossip:", svc.Gossip().Addr())
	select {} // until killed
}

func startNode(t *testing.T, id string, join ...string) *role.Node {
	t.Helper()
	svc, err := role.StartNode(t.Context(), role.NodeConfig{
		Name:   id,
		Gossip: gossip.Config{Join: join, Fast: true},
	}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		svc.Close(ctx)
	})
	return svc
}

func memberIDs(g *gossip.Gossip) string {
	var ids []string
	for _, m := range g.Members() {
		ids = append(ids, m.Meta.ID)
	}
	return strings.Join(ids, ",")
}

// waitEvent waits for an event of kind about member id.
func waitEvent(t *testing.T, events <-chan gossip.Event, kind gossip.EventKind, id string) gossip.Event {
	t.Helper()
	timeout := time.After(20 * time.Second)
	for {
		select {
		case ev, ok := <-events:
			if !ok {
				t.Fatalf("event channel closed waiting for %v of %s", kind, id)
			}
			if ev.Member.Meta.ID == id && (ev.Kind == gossip.EventLeave || ev.Kind == gossip.EventFail) && ev.Kind != kind {
				t.Fatalf("got %v for %s, want %v", ev.Kind, id, kind)
			}
			if ev.Kind == kind && ev.Member.Meta.ID == id {
				return ev
			}
		case <-timeout:
			t.Fatalf("no %v event for %s", kind, id)
		}
	}
}

func TestNodesFormClusterAndNoticeLeaveAndDeath(t *testing.T) {
	a := startNode(t, "a")
	b := startNode(t, "b", a.Gossip().Addr())
	c := startNode(t, "c", a.Gossip().Addr())
	for _, s := range []*role.Node{a, b, c} {
		waitfor.True(t, 10*time.Second, s.Node().ID()+" to see a,b,c", func() bool { return memberIDs(s.Gossip()) == "a,b,c" })
	}
	// Every member sees the others' metadata: role, id and HTTP address.
	urls := map[string]string{"a": a.URL(), "b": b.URL(), "c": c.URL()}
	for _, m := range b.Gossip().Members() {
		if m.Meta.Role != gossip.RoleNode || m.Meta.HTTP != urls[m.Meta.ID] {
			t.Errorf("b sees %s as %+v, want role node, http %s", m.Meta.ID, m.Meta, urls[m.Meta.ID])
		}
	}
	events, cancel := a.Gossip().Subscribe()
	defer cancel()

	// c leaves gracefully.
	ctx, stop := context.WithTimeout(context.Background(), 10*time.Second)
	defer stop()
	if err := c.Close(ctx); err != nil {
		t.Fatal(err)
	}
	ev := waitEvent(t, events, gossip.EventLeave, "c")
	if ev.Member.State != gossip.StateLeft {
		t.Errorf("leave event state %v, want left", ev.Member.State)
	}
	waitfor.True(t, 10*time.Second, "a and b to drop c", func() bool {
		return memberIDs(a.Gossip()) == "a,b" && memberIDs(b.Gossip()) == "a,b"
	})

	// A node in another process joins, then is killed without leaving.
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+a.Gossip().Addr())
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "gossip: ") {
		t.Fatalf("child node: %q, %v", line, err)
	}
	waitEvent(t, events, gossip.EventJoin, "child")
	waitfor.True(t, 10*time.Second, "b to see the child", func() bool { return memberIDs(b.Gossip()) == "a,b,child" })
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	ev = waitEvent(t, events, gossip.EventFail, "child")
	if ev.Member.State != gossip.StateDead {
		t.Errorf("fail event state %v, want dead", ev.Member.State)
	}
	waitfor.True(t, 10*time.Second, "a and b to drop the child", func() bool {
		return memberIDs(a.Gossip()) == "a,b" && memberIDs(b.Gossip()) == "a,b"
	})
}

// TestBindingEveryInterfaceNeedsAnAdvertiseAddress: 0.0.0.0 is no address
// a peer can dial, so a role bound there must be told the one to advertise.
func TestBindingEveryInterfaceNeedsAnAdvertiseAddress(t *testing.T) {
	_, err := role.StartNode(context.Background(), role.NodeConfig{Name: "n", HTTPAddr: "0.0.0.0:0"}, slog.New(slog.DiscardHandler))
	if err == nil || !strings.Contains(err.Error(), "advertise") {
		t.Fatalf("node bound to 0.0.0.0 without an advertise address: %v, want a refusal naming the advertise flag", err)
	}
	n, err := role.StartNode(context.Background(), role.NodeConfig{Name: "n", HTTPAddr: "0.0.0.0:0", AdvertiseHTTP: "http://127.0.0.1:1"}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close(context.Background())
	if n.URL() != "http://127.0.0.1:1" {
		t.Errorf("URL %q, want the advertised one", n.URL())
	}
}

// TestNodeGovernsMemoryLimit: a node started with MemoryLimit sets the
// process's soft memory limit from its capacity, moves it when the capacity
// changes over its HTTP API (PUT /config), and restores it on Close.
func TestNodeGovernsMemoryLimit(t *testing.T) {
	before := debug.SetMemoryLimit(-1)
	svc, err := role.StartNode(t.Context(), role.NodeConfig{
		Name: "governed", Gossip: gossip.Config{Fast: true}, MemoryLimit: true,
		Cache: pool.CacheConfig{CapacityMB: 1024, Policy: pool.LRU},
	}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	t.Cleanup(func() {
		if !closed {
			svc.Close(context.Background())
		}
		debug.SetMemoryLimit(before)
	})
	if got, want := debug.SetMemoryLimit(-1), node.MemoryLimit(1024<<20, 0); got != want {
		t.Fatalf("memory limit of a 1024 MB node: got %d MiB, want %d MiB", got>>20, want>>20)
	}
	client := node.NewClient(node.ClientConfig{})
	if _, err := client.SetConfig(t.Context(), svc.URL(), pool.CacheConfig{CapacityMB: 512, Policy: pool.LRU}); err != nil {
		t.Fatal(err)
	}
	if got, want := debug.SetMemoryLimit(-1), node.MemoryLimit(512<<20, 0); got != want {
		t.Fatalf("memory limit after PUT /config 512 MB: got %d MiB, want %d MiB", got>>20, want>>20)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := svc.Close(ctx); err != nil {
		t.Fatal(err)
	}
	closed = true
	if got := debug.SetMemoryLimit(-1); got != before {
		t.Fatalf("memory limit after Close: got %d, want the one before (%d)", got, before)
	}
}
