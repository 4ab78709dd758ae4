package gossip

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/memcache/memcache/internal/waitfor"
)

const waitFor = 10 * time.Second // generous: -race slows everything down

// recorder is a slog.Handler that keeps every record for assertions and
// prints them if the test fails. It never writes to t after the test ends
// (memberlist's goroutines may still log after Shutdown).
type recorder struct {
	mu    sync.Mutex
	lines []recLine
}

type recLine struct {
	level slog.Level
	msg   string
	attrs string
}

type recHandler struct {
	rec   *recorder
	attrs []slog.Attr
}

func (h recHandler) Enabled(context.Context, slog.Level) bool { return true }

func (h recHandler) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	for _, a := range h.attrs {
		fmt.Fprintf(&b, " %s", a)
	}
	r.Attrs(func(a slog.Attr) bool {
		fmt.Fprintf(&b, " %s", a)
		return true
	})
	h.rec.mu.Lock()
	h.rec.lines = append(h.rec.lines, recLine{r.Level, r.Message, b.String()})
	h.rec.mu.Unlock()
	return nil
}

func (h recHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return recHandler{rec: h.rec, attrs: append(slices.Clone(h.attrs), as...)}
}

func (h recHandler) WithGroup(string) slog.Handler { return h }

// count returns how many records have msg and level.
func (r *recorder) count(level slog.Level, msg string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, l := range r.lines {
		if l.level == level && l.msg == msg {
			n++
		}
	}
	return n
}

func (r *recorder) dump() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var b strings.Builder
	for _, l := range r.lines {
		fmt.Fprintf(&b, "%s %s%s\n", l.level, l.msg, l.attrs)
	}
	return b.String()
}

// waitEvent reads ch until want matches an event, failing the test on
// timeout or if reject matches first.
func waitEvent(t *testing.T, ch <-chan Event, want, reject func(Event) bool) Event {
	t.Helper()
	deadline := time.NewTimer(waitFor)
	defer deadline.Stop()
	for {
		select {
		case ev, ok := <-ch:
			if !ok {
				t.Fatal("event channel closed")
			}
			if reject != nil && reject(ev) {
				t.Fatalf("got unexpected event %v %+v", ev.Kind, ev.Member)
			}
			if want(ev) {
				return ev
			}
		case <-deadline.C:
			t.Fatalf("timed out after %v waiting for event", waitFor)
		}
	}
}

func isEvent(kind EventKind, id string) func(Event) bool {
	return func(ev Event) bool { return ev.Kind == kind && ev.Member.Meta.ID == id }
}

// newMember starts a Fast member on 127.0.0.1:0 and closes it when the test
// ends. cfg.Meta.ID must be set; Role and HTTP get defaults.
func newMember(t *testing.T, cfg Config) (*Gossip, *recorder) {
	t.Helper()
	if cfg.Meta.Role == "" {
		cfg.Meta.Role = RoleNode
	}
	if cfg.Meta.HTTP == "" {
		cfg.Meta.HTTP = "http://127.0.0.1:80/" + cfg.Meta.ID
	}
	if cfg.BindAddr == "" {
		cfg.BindAddr = "127.0.0.1:0"
	}
	cfg.Fast = true
	rec := &recorder{}
	// Registered first, so it runs last: after Close, with all logs in.
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("logs of %s:\n%s", cfg.Meta.ID, rec.dump())
		}
	})
	g, err := New(cfg, slog.New(recHandler{rec: rec}))
	if err != nil {
		t.Fatalf("New(%s): %v", cfg.Meta.ID, err)
	}
	t.Cleanup(func() { g.Close() })
	return g, rec
}

// ids returns the Meta.IDs of g's members, in Members order.
func ids(g *Gossip) []string {
	var out []string
	for _, m := range g.Members() {
		out = append(out, m.Meta.ID)
	}
	return out
}

// hasIDs reports whether g's members are exactly want (sorted).
func hasIDs(g *Gossip, want ...string) func() bool {
	return func() bool { return slices.Equal(ids(g), want) }
}

// cluster starts members a, b, c (node, manager, frontend); b and c join a.
func cluster(t *testing.T) (a, b, c *Gossip) {
	t.Helper()
	a, _ = newMember(t, Config{Meta: Meta{Role: RoleNode, ID: "a", HTTP: "http://127.0.0.1:8001"}})
	b, _ = newMember(t, Config{Meta: Meta{Role: RoleManager, ID: "b", HTTP: "http://127.0.0.1:8002", Raft: "127.0.0.1:9002"}, Join: []string{a.Addr()}})
	c, _ = newMember(t, Config{Meta: Meta{Role: RoleFrontend, ID: "c", HTTP: "http://127.0.0.1:8003"}, Join: []string{a.Addr()}})
	for _, g := range []*Gossip{a, b, c} {
		waitfor.True(t, waitFor, "three members at "+g.Addr(), hasIDs(g, "a", "b", "c"))
	}
	return a, b, c
}

func TestClusterForms(t *testing.T) {
	t.Parallel()
	a, b, c := cluster(t)

	for _, g := range []*Gossip{a, b, c} {
		host, port, err := net.SplitHostPort(g.Addr())
		if err != nil || host != "127.0.0.1" || port == "0" {
			t.Fatalf("Addr() = %q, want 127.0.0.1 with the real bound port", g.Addr())
		}
	}
	select {
	case <-b.Joined():
	default:
		t.Fatal("b.Joined() not closed after b joined")
	}

	want := []Member{
		{Name: "a", Addr: a.Addr(), Meta: Meta{Role: RoleNode, ID: "a", HTTP: "http://127.0.0.1:8001"}},
		{Name: "b", Addr: b.Addr(), Meta: Meta{Role: RoleManager, ID: "b", HTTP: "http://127.0.0.1:8002", Raft: "127.0.0.1:9002"}},
		{Name: "c", Addr: c.Addr(), Meta: Meta{Role: RoleFrontend, ID: "c", HTTP: "http://127.0.0.1:8003"}},
	}
	for _, g := range []*Gossip{a, b, c} {
		if got := g.Members(); !slices.Equal(got, want) {
			t.Errorf("%s: Members() = %+v, want %+v", g.Addr(), got, want)
		}
		for role, url := range map[Role]string{RoleNode: "http://127.0.0.1:8001", RoleManager: "http://127.0.0.1:8002", RoleFrontend: "http://127.0.0.1:8003"} {
			if got := g.HTTPURLs(role); !slices.Equal(got, []string{url}) {
				t.Errorf("%s: HTTPURLs(%s) = %v, want [%s]", g.Addr(), role, got, url)
			}
		}
	}
}

func TestGracefulLeave(t *testing.T) {
	t.Parallel()
	a, b, c := cluster(t)
	evA, cancelA := a.Subscribe()
	defer cancelA()
	evB, cancelB := b.Subscribe()
	defer cancelB()

	if err := c.Close(); err != nil {
		t.Fatalf("c.Close() = %v", err)
	}
	for _, ch := range []<-chan Event{evA, evB} {
		ev := waitEvent(t, ch, isEvent(EventLeave, "c"), isEvent(EventFail, "c"))
		if ev.Member.State != StateLeft || ev.Member.Meta.Role != RoleFrontend {
			t.Errorf("leave event member = %+v, want state left, role frontend", ev.Member)
		}
	}
	for _, g := range []*Gossip{a, b} {
		waitfor.True(t, waitFor, "c gone from "+g.Addr(), hasIDs(g, "a", "b"))
	}
	if err := c.Close(); err != nil {
		t.Errorf("second Close() = %v, want nil", err)
	}
	if err := c.Leave(time.Second); !errors.Is(err, ErrClosed) {
		t.Errorf("Leave after Close = %v, want ErrClosed", err)
	}
	if err := c.UpdateMeta(Meta{Role: RoleFrontend, ID: "c"}); !errors.Is(err, ErrClosed) {
		t.Errorf("UpdateMeta after Close = %v, want ErrClosed", err)
	}
}

func TestFailureDetected(t *testing.T) {
	t.Parallel()
	a, b, c := cluster(t)
	evA, cancelA := a.Subscribe()
	defer cancelA()
	evB, cancelB := b.Subscribe()
	defer cancelB()

	start := time.Now()
	c.kill()
	for _, ch := range []<-chan Event{evA, evB} {
		ev := waitEvent(t, ch, isEvent(EventFail, "c"), isEvent(EventLeave, "c"))
		if ev.Member.State != StateDead {
			t.Errorf("fail event state = %v, want dead", ev.Member.State)
		}
	}
	t.Logf("failure declared after %v", time.Since(start))
	for _, g := range []*Gossip{a, b} {
		waitfor.True(t, waitFor, "c gone from "+g.Addr(), hasIDs(g, "a", "b"))
	}
	if err := c.Close(); err != nil {
		t.Errorf("Close after kill = %v, want nil", err)
	}
}

func TestEncryption(t *testing.T) {
	t.Parallel()
	key := bytes.Repeat([]byte{7}, 32)
	a, _ := newMember(t, Config{Meta: Meta{ID: "a"}, SecretKey: key})
	b, _ := newMember(t, Config{Meta: Meta{ID: "b"}, SecretKey: key, Join: []string{a.Addr()}})
	waitfor.True(t, waitFor, "a and b see each other", func() bool {
		return hasIDs(a, "a", "b")() && hasIDs(b, "a", "b")()
	})

	for _, tc := range []struct {
		name string
		key  []byte
	}{
		{"other key", bytes.Repeat([]byte{9}, 32)},
		{"no key", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bad, rec := newMember(t, Config{Meta: Meta{ID: "x"}, SecretKey: tc.key, Join: []string{a.Addr()}})
			// The background join has really tried, and failed, twice.
			waitfor.True(t, waitFor, "two failed join attempts", func() bool {
				return rec.count(slog.LevelWarn, "join failed; will retry") >= 2
			})
			if n, err := bad.list.Join([]string{a.Addr(), b.Addr()}); n != 0 || err == nil {
				t.Errorf("Join with %s = (%d, %v), want (0, error)", tc.name, n, err)
			}
			select {
			case <-bad.Joined():
				t.Error("Joined() closed for a member with the wrong key")
			default:
			}
			if got := ids(bad); !slices.Equal(got, []string{"x"}) {
				t.Errorf("bad member sees %v, want [x]", got)
			}
			for _, g := range []*Gossip{a, b} {
				if got := ids(g); !slices.Equal(got, []string{"a", "b"}) {
					t.Errorf("%s sees %v, want [a b]", g.Addr(), got)
				}
			}
		})
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	t.Parallel()
	ok := Meta{Role: RoleNode, ID: "n1", HTTP: "http://127.0.0.1:8080"}
	for _, tc := range []struct {
		name string
		cfg  Config
		want error
		text string
	}{
		{"key 5 bytes", Config{Meta: ok, SecretKey: []byte("short")}, ErrInvalidKey, "16, 24 or 32 bytes"},
		{"key 33 bytes", Config{Meta: ok, SecretKey: make([]byte, 33)}, ErrInvalidKey, "got 33"},
		{"no id", Config{Meta: Meta{Role: RoleNode}}, ErrInvalidConfig, "Meta.ID"},
		{"bad role", Config{Meta: Meta{Role: "cache", ID: "n1"}}, ErrInvalidConfig, "unknown role"},
		{"meta too large", Config{Meta: Meta{Role: RoleNode, ID: "n1", HTTP: strings.Repeat("x", 600)}}, ErrMetaTooLarge, "limit 512"},
		{"bind not host:port", Config{Meta: ok, BindAddr: "127.0.0.1"}, ErrInvalidConfig, "BindAddr"},
		{"bind host name", Config{Meta: ok, BindAddr: "localhost:0"}, ErrInvalidConfig, "must be an IP"},
		{"advertise port with bind port 0", Config{Meta: ok, BindAddr: "127.0.0.1:0", AdvertiseAddr: "10.0.0.1:7946"}, ErrInvalidConfig, "fixed BindAddr port"},
		{"bad seed", Config{Meta: ok, BindAddr: "127.0.0.1:0", Join: []string{"nohost"}}, ErrInvalidConfig, "Join address"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g, err := New(tc.cfg, nil)
			if err == nil {
				g.Close()
				t.Fatalf("New() error = nil, want %v", tc.want)
			}
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.text) {
				t.Errorf("New() error = %q, want %v containing %q", err, tc.want, tc.text)
			}
		})
	}
}

func TestUpdateMeta(t *testing.T) {
	t.Parallel()
	a, _ := newMember(t, Config{Meta: Meta{ID: "a"}})
	b, _ := newMember(t, Config{Meta: Meta{Role: RoleManager, ID: "b"}, Join: []string{a.Addr()}})
	waitfor.True(t, waitFor, "a sees b", hasIDs(a, "a", "b"))
	ev, cancel := a.Subscribe()
	defer cancel()

	m := Meta{Role: RoleManager, ID: "b", HTTP: "http://127.0.0.1:9999", Raft: "127.0.0.1:7000"}
	if err := b.UpdateMeta(m); err != nil {
		t.Fatalf("UpdateMeta() = %v", err)
	}
	got := waitEvent(t, ev, isEvent(EventUpdate, "b"), nil)
	if got.Member.Meta != m || got.Member.State != StateAlive {
		t.Errorf("update event = %+v, want meta %+v, alive", got.Member, m)
	}
	if ms := a.Members(); len(ms) != 2 || ms[1].Meta != m {
		t.Errorf("a.Members() = %+v, want b with %+v", ms, m)
	}
	if ms := b.Members(); len(ms) != 2 || ms[1].Meta != m {
		t.Errorf("b.Members() = %+v, want itself with %+v", ms, m)
	}

	if err := b.UpdateMeta(Meta{Role: RoleManager}); !errors.Is(err, ErrInvalidConfig) {
		t.Errorf("UpdateMeta(no ID) = %v, want ErrInvalidConfig", err)
	}
	if err := b.Leave(3 * time.Second); err != nil {
		t.Fatalf("Leave() = %v", err)
	}
	// The leave is announced as an update to StateLeaving, then the leave.
	waitEvent(t, ev, isEvent(EventLeave, "b"), isEvent(EventFail, "b"))
	if err := b.UpdateMeta(m); !errors.Is(err, ErrLeft) {
		t.Errorf("UpdateMeta after Leave = %v, want ErrLeft", err)
	}
}

func TestJoinRetry(t *testing.T) {
	t.Parallel()
	// Reserve a port, then free it so nothing listens there yet.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()

	b, rec := newMember(t, Config{Meta: Meta{ID: "b"}, Join: []string{addr}})
	waitfor.True(t, waitFor, "a failed join attempt", func() bool {
		return rec.count(slog.LevelWarn, "join failed; will retry") >= 1
	})
	a, _ := newMember(t, Config{Meta: Meta{ID: "a"}, BindAddr: addr})
	if a.Addr() != addr {
		t.Fatalf("a.Addr() = %q, want %q", a.Addr(), addr)
	}
	waitfor.True(t, waitFor, "b joined", func() bool {
		select {
		case <-b.Joined():
			return true
		default:
			return false
		}
	})
	waitfor.True(t, waitFor, "a sees b", hasIDs(a, "a", "b"))
	waitfor.True(t, waitFor, "b sees a", hasIDs(b, "a", "b"))
}

func TestSubscribeCancelAndClose(t *testing.T) {
	t.Parallel()
	a, _ := newMember(t, Config{Meta: Meta{ID: "a"}})
	ch1, cancel1 := a.Subscribe()
	ch2, _ := a.Subscribe()
	cancel1()
	cancel1() // idempotent
	if _, ok := <-ch1; ok {
		t.Error("cancelled channel delivered an event, want closed")
	}
	if err := a.Close(); err != nil {
		t.Fatalf("Close() = %v", err)
	}
	for range ch2 { // the self leave may or may not arrive; then closed
	}
	ch3, cancel3 := a.Subscribe()
	cancel3()
	if _, ok := <-ch3; ok {
		t.Error("Subscribe after Close returned an open channel")
	}
	if got := a.Members(); len(got) != 0 {
		t.Errorf("Members() after Close = %+v, want none", got)
	}
}

func TestLogBridge(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		line  string
		level slog.Level
		msg   string
	}{
		{"[DEBUG] memberlist: Stream connection from=1.2.3.4:5", slog.LevelDebug, "Stream connection from=1.2.3.4:5"},
		{"[INFO] memberlist: Marking b as failed", slog.LevelInfo, "Marking b as failed"},
		{"[WARN] memberlist: Refuting a dead message", slog.LevelWarn, "Refuting a dead message"},
		{"[ERR] memberlist: Failed to send ping", slog.LevelError, "Failed to send ping"},
		{"[ERROR] memberlist: Failed to decrypt", slog.LevelError, "Failed to decrypt"},
		{"no tag at all", slog.LevelInfo, "no tag at all"},
		{"[ODD] memberlist: x", slog.LevelInfo, "[ODD] memberlist: x"},
	} {
		t.Run(tc.line, func(t *testing.T) {
			rec := &recorder{}
			newStdLogger(slog.New(recHandler{rec: rec})).Print(tc.line)
			if got := rec.count(tc.level, tc.msg); got != 1 {
				t.Errorf("got %q, want one %v record %q", rec.dump(), tc.level, tc.msg)
			}
		})
	}
}
