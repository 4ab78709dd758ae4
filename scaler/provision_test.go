package scaler

import (
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/memcache/memcache/gossip"
	"github.com/memcache/memcache/internal/testbin"
)

// provisionWait bounds every poll: generous, since -race slows everything down.
const provisionWait = 20 * time.Second

func TestMain(m *testing.M) {
	code := m.Run()
	testbin.Remove()
	os.Exit(code)
}

// poll fails the test unless cond becomes true within provisionWait.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.NewTimer(provisionWait)
	defer deadline.Stop()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-tick.C:
		case <-deadline.C:
			t.Fatalf("timed out after %v waiting for %s", provisionWait, what)
		}
	}
}

// newMember starts an in-process gossip member with test timings; Close
// runs at cleanup.
func startGossipMember(t *testing.T, id string, role gossip.Role, join ...string) *gossip.Gossip {
	t.Helper()
	g, err := gossip.New(gossip.Config{
		BindAddr: "127.0.0.1:0",
		Join:     join,
		Meta:     gossip.Meta{Role: role, ID: id, HTTP: "http://" + id + ".invalid:1"},
		Fast:     true,
	}, provisionLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Close() })
	return g
}

// testLogger discards logs unless the test runs verbose.
func provisionLogger(t *testing.T) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})).With("test", t.Name())
	}
	return slog.New(slog.DiscardHandler)
}

// has reports whether members lists an alive member with this id and role.
func hasAlive(members []gossip.Member, id string, role gossip.Role) bool {
	for _, m := range members {
		if m.Meta.ID == id && m.Meta.Role == role && m.State == gossip.StateAlive {
			return true
		}
	}
	return false
}

// staticView is a fixed gossip view.
type staticView []gossip.Member

func (f staticView) Members() []gossip.Member { return f }

var (
	_ Provisioner = (*Static)(nil)
	_ Provisioner = (*Local)(nil)
	_ Members     = (*gossip.Gossip)(nil)
)
