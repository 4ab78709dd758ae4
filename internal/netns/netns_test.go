package netns_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/memcache/memcache/internal/netns"
	"github.com/memcache/memcache/internal/waitfor"
)

// helperEnv makes the test binary a helper program instead of running the
// tests: the harness's tests run it inside hosts.
const helperEnv = "NETNS_TEST_HELPER"

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) == "1" {
		os.Exit(helper(os.Args[1:]))
	}
	os.Exit(m.Run())
}

// helper runs one of the helper programs:
//
//	serve ADDR TEXT    HTTP server answering TEXT, until SIGTERM
//	get URL TIMEOUT    exit 0 if GET URL answers 200 within TIMEOUT, printing the body
//	udp-recv ADDR      print "got MSG" for every datagram received, until SIGTERM
//	udp-send ADDR MSG  send one datagram
func helper(args []string) int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	switch {
	case len(args) == 3 && args[0] == "serve":
		l, err := net.Listen("tcp", args[1])
		if err != nil {
			fmt.Println(err)
			return 1
		}
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, args[2]) })}
		go func() { <-ctx.Done(); srv.Close() }()
		fmt.Println("serving on", l.Addr())
		srv.Serve(l)
		return 0
	case len(args) == 3 && args[0] == "get":
		timeout, err := time.ParseDuration(args[2])
		if err != nil {
			fmt.Println(err)
			return 2
		}
		resp, err := (&http.Client{Timeout: timeout}).Get(args[1])
		if err != nil {
			fmt.Println(err)
			return 1
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		fmt.Print(string(b))
		if resp.StatusCode != 200 {
			return 1
		}
		return 0
	case len(args) == 2 && args[0] == "udp-recv":
		c, err := net.ListenPacket("udp", args[1])
		if err != nil {
			fmt.Println(err)
			return 1
		}
		go func() { <-ctx.Done(); c.Close() }()
		fmt.Println("listening on", c.LocalAddr())
		buf := make([]byte, 1500)
		for {
			n, from, err := c.ReadFrom(buf)
			if err != nil {
				return 0
			}
			fmt.Printf("got %s from %s\n", buf[:n], from)
		}
	case len(args) == 3 && args[0] == "udp-send":
		c, err := net.Dial("udp", args[1])
		if err != nil {
			fmt.Println(err)
			return 1
		}
		defer c.Close()
		if _, err := c.Write([]byte(args[2])); err != nil {
			fmt.Println(err) // EPERM when an output rule drops it
		}
		return 0
	}
	fmt.Println("unknown helper command", args)
	return 2
}

// Deadlines: waits for something that must happen are generous (a busy
// 2-core machine under the race detector is slow, not broken); probes that
// must fail get a short timeout, since a block that does not hold lets a
// local connection through in well under a millisecond.
const (
	wait         = 30 * time.Second
	probeTimeout = 5 * time.Second
	blockedProbe = 1500 * time.Millisecond
)

const port = 8000

// helperCmd is the test binary run as helper program args inside h.
func helperCmd(t *testing.T, h *netns.Host, args ...string) *exec.Cmd {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := h.Command(context.Background(), self, args...)
	// Under -race the binary sleeps a second at exit unless told not to.
	cmd.Env = append(os.Environ(), helperEnv+"=1", "GORACE="+strings.TrimSpace(os.Getenv("GORACE")+" atexit_sleep_ms=0"))
	return cmd
}

// serve starts an HTTP server answering text on addr inside h.
func serve(t *testing.T, h *netns.Host, addr, text string) *netns.Process {
	t.Helper()
	return h.StartCmd(helperCmd(t, h, "serve", addr, text))
}

// get runs GET url from inside h and returns the body, or an error if the
// answer is not 200 within timeout.
func get(t *testing.T, h *netns.Host, url string, timeout time.Duration) (string, error) {
	t.Helper()
	out, err := helperCmd(t, h, "get", url, timeout.String()).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("GET %s from %s: %v: %s", url, h, err, out)
	}
	return string(out), nil
}

// getHere is GET url from the test process, in the root namespace.
func getHere(url string, timeout time.Duration) (string, error) {
	resp, err := (&http.Client{Timeout: timeout}).Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != 200 {
		return "", fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return string(b), nil
}

// waitGet waits until GET url from h (the test process if h is nil)
// answers want.
func waitGet(t *testing.T, h *netns.Host, url, want string) {
	t.Helper()
	var last error
	waitfor.True(t, wait, fmt.Sprintf("GET %s from %v to answer %q (last: %v)", url, h, want, &last), func() bool {
		var body string
		if h == nil {
			body, last = getHere(url, probeTimeout)
		} else {
			body, last = get(t, h, url, probeTimeout)
		}
		return last == nil && body == want
	})
}

// mustNotGet fails the test if GET url from h (the test process if h is
// nil) succeeds.
func mustNotGet(t *testing.T, h *netns.Host, url, why string) {
	t.Helper()
	var err error
	if h == nil {
		_, err = getHere(url, blockedProbe)
	} else {
		_, err = get(t, h, url, blockedProbe)
	}
	if err == nil {
		t.Fatalf("GET %s from %v succeeded, want it cut off: %s", url, h, why)
	}
}

func httpURL(a netip.Addr, port int) string {
	return "http://" + netip.AddrPortFrom(a, uint16(port)).String() + "/"
}

func TestHostsReachEachOtherAndTheTestProcessReachesThem(t *testing.T) {
	t.Parallel()
	nw := netns.NewWith(t, netns.Options{Hosts: 2, IPv6: true})
	a, b := nw.Host(0), nw.Host(1)
	x := nw.Subnet().Addr().As4()[2]
	if got, want := b.Addr(), netip.AddrFrom4([4]byte{10, 77, x, 11}); got != want {
		t.Fatalf("host 1 at %s, want %s", got, want)
	}
	if got, want := nw.BridgeAddr(), netip.AddrFrom4([4]byte{10, 77, x, 1}); got != want {
		t.Fatalf("bridge at %s, want %s", got, want)
	}
	// ":port" listens on every address of the host, IPv4 and IPv6.
	serve(t, a, fmt.Sprintf(":%d", port), "hello from a")

	waitGet(t, nil, httpURL(a.Addr(), port), "hello from a")
	waitGet(t, nil, httpURL(a.Addr6(), port), "hello from a")
	waitGet(t, b, httpURL(a.Addr(), port), "hello from a")
	waitGet(t, b, httpURL(a.Addr6(), port), "hello from a")

	// Only the subnet's routes: no default route leads off the machine.
	for _, h := range nw.Hosts() {
		for _, family := range []string{"-4", "-6"} {
			out, err := h.Command(context.Background(), "ip", family, "route", "show", "default").CombinedOutput()
			if err != nil || strings.TrimSpace(string(out)) != "" {
				t.Fatalf("%s: ip %s route show default: %v %q, want no default route", h, family, err, out)
			}
		}
	}
}

func TestLinkDownCutsTheHostOffAndLinkUpRestoresIt(t *testing.T) {
	t.Parallel()
	nw := netns.NewWith(t, netns.Options{Hosts: 2, IPv6: true})
	a, b := nw.Host(0), nw.Host(1)
	serve(t, a, fmt.Sprintf(":%d", port), "a")
	waitGet(t, b, httpURL(a.Addr(), port), "a")

	a.LinkDown()
	mustNotGet(t, b, httpURL(a.Addr(), port), "a's link is down")
	mustNotGet(t, b, httpURL(a.Addr6(), port), "a's link is down")
	mustNotGet(t, nil, httpURL(a.Addr(), port), "a's link is down")

	a.LinkUp()
	waitGet(t, b, httpURL(a.Addr(), port), "a")
	waitGet(t, b, httpURL(a.Addr6(), port), "a")
	waitGet(t, nil, httpURL(a.Addr(), port), "a")
}

func TestBlockCutsOnlyThePeerNamed(t *testing.T) {
	t.Parallel()
	nw := netns.NewWith(t, netns.Options{Hosts: 3, IPv6: true})
	a, b, c := nw.Host(0), nw.Host(1), nw.Host(2)
	for _, h := range nw.Hosts() {
		serve(t, h, fmt.Sprintf(":%d", port), h.Name())
	}
	for _, h := range nw.Hosts() {
		waitGet(t, nil, httpURL(h.Addr(), port), h.Name())
	}
	waitGet(t, a, httpURL(b.Addr(), port), b.Name())

	a.Block(b)
	for _, addr := range []netip.Addr{b.Addr(), b.Addr6()} {
		mustNotGet(t, a, httpURL(addr, port), "a blocks b")
	}
	for _, addr := range []netip.Addr{a.Addr(), a.Addr6()} {
		mustNotGet(t, b, httpURL(addr, port), "a blocks b")
	}
	// Everyone else still reaches both, and they reach everyone else.
	waitGet(t, c, httpURL(a.Addr(), port), a.Name())
	waitGet(t, c, httpURL(b.Addr6(), port), b.Name())
	waitGet(t, a, httpURL(c.Addr(), port), c.Name())
	waitGet(t, b, httpURL(c.Addr(), port), c.Name())
	waitGet(t, nil, httpURL(a.Addr(), port), a.Name())
	waitGet(t, nil, httpURL(b.Addr(), port), b.Name())
	if rules := a.Rules(); !strings.Contains(rules, b.Addr().String()) {
		t.Fatalf("a's rules do not name b's address %s:\n%s", b.Addr(), rules)
	}

	a.Unblock(b)
	waitGet(t, a, httpURL(b.Addr(), port), b.Name())
	waitGet(t, b, httpURL(a.Addr6(), port), a.Name())
}

// TestOneWayBlockCutsOnlyOneDirection sends datagrams both ways between a
// and b while one direction is blocked: those of the blocked direction are
// never received, the others are.
func TestOneWayBlockCutsOnlyOneDirection(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		block func(a, b *netns.Host) // cut a → b
		undo  func(a, b *netns.Host)
	}{
		{"BlockOutgoing on the sender", func(a, b *netns.Host) { a.BlockOutgoing(b) }, func(a, b *netns.Host) { a.Unblock(b) }},
		{"BlockIncoming on the receiver", func(a, b *netns.Host) { b.BlockIncoming(a) }, func(a, b *netns.Host) { b.UnblockAll() }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			nw := netns.New(t, 2)
			a, b := nw.Host(0), nw.Host(1)
			recvA := a.StartCmd(helperCmd(t, a, "udp-recv", a.HostPort(port)))
			recvB := b.StartCmd(helperCmd(t, b, "udp-recv", b.HostPort(port)))
			for _, p := range []*netns.Process{recvA, recvB} {
				waitfor.True(t, wait, p.String()+" to listen", func() bool { return strings.Contains(p.Log(), "listening") })
			}
			send := func(from, to *netns.Host, msg string) {
				t.Helper()
				if out, err := helperCmd(t, from, "udp-send", to.HostPort(port), msg).CombinedOutput(); err != nil {
					t.Fatalf("udp-send from %s: %v: %s", from, err, out)
				}
			}
			received := func(p *netns.Process, msg string) bool { return strings.Contains(p.Log(), "got "+msg+" ") }

			tc.block(a, b)
			send(a, b, "blocked-a-to-b")
			// The other direction flows; the wait also gives a dropped
			// datagram more than enough time to have arrived, had it not been.
			waitfor.True(t, wait, "b's datagram to reach a", func() bool {
				send(b, a, "b-to-a")
				return received(recvA, "b-to-a")
			})
			tc.undo(a, b)
			waitfor.True(t, wait, "a's datagram to reach b once unblocked", func() bool {
				send(a, b, "after-a-to-b")
				return received(recvB, "after-a-to-b")
			})
			if received(recvB, "blocked-a-to-b") {
				t.Fatalf("b received a's datagram sent while a → b was blocked; b's log:\n%s", recvB.Log())
			}
		})
	}
}

func TestHostsHaveTheirOwnLoopback(t *testing.T) {
	t.Parallel()
	nw := netns.New(t, 2)
	a, b := nw.Host(0), nw.Host(1)

	// A server on the root namespace's loopback: the test reaches it, no host does.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "root") })}
	done := make(chan struct{})
	go func() { defer close(done); srv.Serve(l) }()
	t.Cleanup(func() { srv.Close(); <-done })
	rootURL := "http://" + l.Addr().String() + "/"
	waitGet(t, nil, rootURL, "root")
	mustNotGet(t, a, rootURL, "127.0.0.1 inside a host is the host's own loopback")

	// A server on a's loopback: a reaches it, b (its own loopback) and the test do not.
	serve(t, a, fmt.Sprintf("127.0.0.1:%d", port), "a-loopback")
	aLoop := fmt.Sprintf("http://127.0.0.1:%d/", port)
	waitGet(t, a, aLoop, "a-loopback")
	mustNotGet(t, b, aLoop, "b's 127.0.0.1 is b's own")
	mustNotGet(t, nil, aLoop, "the root namespace's 127.0.0.1 is its own")
	mustNotGet(t, b, httpURL(a.Addr(), port), "a's server listens on a's loopback only")
}

func TestProcessStopContAndKill(t *testing.T) {
	t.Parallel()
	nw := netns.New(t, 1)
	a := nw.Host(0)
	p := serve(t, a, a.HostPort(port), "a")
	url := httpURL(a.Addr(), port)
	waitGet(t, nil, url, "a")

	p.Stop()
	// The kernel still completes connections; nothing answers them.
	mustNotGet(t, nil, url, "the server is stopped")
	p.Cont()
	waitGet(t, nil, url, "a")

	p.Kill(t)
	select {
	case <-p.Exited():
	default:
		t.Fatal("Kill returned before the process exited")
	}
	var ee *exec.ExitError
	if err := p.Err(); !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("killed process exited with %v, want killed by SIGKILL", err)
	}
	mustNotGet(t, nil, url, "the server is killed")
}

// TestCleanupRemovesEverything builds a network in a subtest, with a
// process started by Start, one started by Command and never waited for,
// and a block (an nftables table), and checks that once the subtest has
// ended no namespace, link, route or process of it is left.
func TestCleanupRemovesEverything(t *testing.T) {
	t.Parallel()
	netns.Require(t)
	var (
		suffix, bridge string
		subnet         netip.Prefix
		started        *netns.Process
		orphan         *exec.Cmd
	)
	t.Run("network", func(t *testing.T) {
		nw := netns.NewWith(t, netns.Options{Hosts: 2, IPv6: true, StopGrace: 5 * time.Second})
		suffix, bridge, subnet = nw.Suffix(), nw.Bridge(), nw.Subnet()
		a, b := nw.Host(0), nw.Host(1)
		if ns := listNetns(t); !strings.Contains(ns, a.Name()) || !strings.Contains(ns, b.Name()) {
			t.Fatalf("ip netns list does not show %s and %s:\n%s", a, b, ns)
		}
		if links := listLinks(t); !strings.Contains(links, bridge) || !strings.Contains(links, a.Link()) {
			t.Fatalf("ip link does not show %s and %s:\n%s", bridge, a.Link(), links)
		}
		started = serve(t, a, a.HostPort(port), "a")
		orphan = b.Command(context.Background(), "sleep", "1000")
		if err := orphan.Start(); err != nil {
			t.Fatal(err)
		}
		a.Block(b)
		waitGet(t, nil, httpURL(a.Addr(), port), "a")
	})
	orphanDone := make(chan error, 1)
	go func() { orphanDone <- orphan.Wait() }()
	select {
	case <-orphanDone:
	case <-time.After(wait):
		t.Fatalf("the process started with Command (pid %d) still runs after the cleanup", orphan.Process.Pid)
	}
	select {
	case <-started.Exited():
	default:
		t.Fatalf("the process started with Start (pid %d) still runs after the cleanup", started.Pid())
	}
	if ns := listNetns(t); strings.Contains(ns, "mc-"+suffix) {
		t.Fatalf("namespaces of network %s left behind:\n%s", suffix, ns)
	}
	if links := listLinks(t); strings.Contains(links, suffix) {
		t.Fatalf("links of network %s (bridge %s) left behind:\n%s", suffix, bridge, links)
	}
	out, err := exec.Command("ip", "-4", "route", "show", "table", "all").CombinedOutput()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(out), subnet.Addr().String()) {
		t.Fatalf("a route to %s left behind:\n%s", subnet, out)
	}
}

func listNetns(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("ip", "netns", "list").CombinedOutput()
	if err != nil {
		t.Fatalf("ip netns list: %v: %s", err, out)
	}
	return string(out)
}

func listLinks(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("ip", "-o", "link", "show").CombinedOutput()
	if err != nil {
		t.Fatalf("ip link show: %v: %s", err, out)
	}
	return string(out)
}
