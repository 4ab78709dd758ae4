// Package netns runs test hosts in Linux network namespaces on one machine.
//
// New creates a Network: a bridge in the root namespace with an address on a
// per-test subnet (10.77.X.1/24, and fd00:77:X::1/64 with Options.IPv6), and
// N hosts, each a namespace with its own loopback and one veth link into the
// bridge at 10.77.X.(10+i). Hosts have only the subnet's route, no default
// route, so no packet of a test leaves the machine; the test process reaches
// every host directly through the bridge's address. Processes run inside a
// host with Host.Command or Host.Start; faults are injected with
// Host.LinkDown and Host.Block (nftables rules in a table the harness owns in
// the host's namespace, never in the root namespace's ruleset).
//
// Everything is removed when the test ends, pass or fail: processes first
// (SIGTERM, then SIGKILL after a grace), then the veths, the namespaces
// (their rules go with them) and the bridge.
//
// Two test binaries may build networks at once: each claims its subnet X
// with an exclusive lock on a file under /run/memcache-netns (released by
// the kernel if the process dies), skips subnets the machine already uses,
// and names its links and namespaces after X and a random suffix. A binary
// killed before its cleanup ran (go test -timeout) leaves its namespaces
// behind; the lock file records their names and the next binary to claim X
// removes them.
//
// A test that needs the root namespace's interfaces to stay as they are (a
// browser: Chromium aborts its requests when they change) calls Quiet: it
// waits until no Network exists in any process, and New waits while it
// holds (a lock file under /run/memcache-netns, shared by every Network).
//
// It needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN), ip from iproute2, nft for
// Block, and IPv6 enabled for Options.IPv6. Without them Require (and New)
// skips the test, or fails it when MEMCACHE_TEST_REQUIRE_NETNS=1.
package netns

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"
)

// RequireEnv is the environment variable that turns a skip for a missing
// capability into a failure: set it to 1 where the tests must run (CI).
const RequireEnv = "MEMCACHE_TEST_REQUIRE_NETNS"

// lockDir holds one lock file per claimed subnet.
const lockDir = "/run/memcache-netns"

// commandTimeout bounds one ip or nft invocation of the harness.
const commandTimeout = 30 * time.Second

// Available reports whether this process can build networks: nil if it
// can, else why not. It creates and deletes a probe namespace.
func Available() error {
	if runtime.GOOS != "linux" {
		return fmt.Errorf("network namespaces need Linux, not %s", runtime.GOOS)
	}
	if os.Geteuid() != 0 {
		return errors.New("network namespaces need root")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return fmt.Errorf("ip (iproute2) not found: %w", err)
	}
	probe := "mc-probe-" + randomHex(4)
	if err := run("ip", "netns", "add", probe); err != nil {
		return fmt.Errorf("cannot create a network namespace: %w", err)
	}
	if err := run("ip", "netns", "del", probe); err != nil {
		return fmt.Errorf("cannot delete probe namespace %s: %w", probe, err)
	}
	return nil
}

// Require skips the test unless Available, or fails it if the environment
// sets MEMCACHE_TEST_REQUIRE_NETNS=1.
func Require(t testing.TB) {
	t.Helper()
	if err := Available(); err != nil {
		unavailable(t, err)
	}
}

// requireTool is Require for one more program a feature needs (nft).
func requireTool(t testing.TB, name string) {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		unavailable(t, fmt.Errorf("%s not found: %w", name, err))
	}
}

func unavailable(t testing.TB, err error) {
	t.Helper()
	if os.Getenv(RequireEnv) == "1" {
		t.Fatalf("network namespaces unavailable and %s=1: %v", RequireEnv, err)
	}
	t.Skipf("skipping multi-host test: network namespaces unavailable: %v (run as root with iproute2; set %s=1 to fail instead)", err, RequireEnv)
}

// ipv6Available reports whether the root namespace has IPv6 enabled, for
// the bridge's address.
func ipv6Available() error {
	b, err := os.ReadFile("/proc/sys/net/ipv6/conf/all/disable_ipv6")
	if err != nil {
		return fmt.Errorf("IPv6 unavailable: %w", err)
	}
	if strings.TrimSpace(string(b)) != "0" {
		return errors.New("IPv6 disabled (net.ipv6.conf.all.disable_ipv6=1)")
	}
	return nil
}

// Options shape a Network.
type Options struct {
	// Hosts is the number of hosts, 1..200.
	Hosts int
	// IPv6 also gives the bridge and every host an address on
	// fd00:77:X::/64.
	IPv6 bool
	// StopGrace is how long a process started with Host.Start gets between
	// SIGTERM and SIGKILL when the test ends. If zero, 20 s.
	StopGrace time.Duration
}

// Network is a bridge and the hosts attached to it, removed when the test
// ends. Its methods, and its hosts' and processes', fail the test that
// created it: call them from that test's goroutine.
type Network struct {
	t       testing.TB
	opts    Options
	subnet  int    // X in 10.77.X.0/24
	suffix  string // in every name the network creates
	bridge  string
	gw4     netip.Addr
	gw6     netip.Addr
	hosts   []*Host
	lock    *os.File // the subnet's lock file, held until cleanup
	logDir  string   // logs of the processes started with Host.Start
	created []string // resources created, for the cleanup (in creation order)
}

// New creates a network of n hosts (IPv4 only). See NewWith.
func New(t testing.TB, n int) *Network {
	t.Helper()
	return NewWith(t, Options{Hosts: n})
}

// NewWith creates a network shaped by opts, or skips the test (see
// Require). Everything it creates is removed when the test ends.
func NewWith(t testing.TB, opts Options) *Network {
	t.Helper()
	Require(t)
	if opts.Hosts < 1 || opts.Hosts > 200 {
		t.Fatalf("netns: %d hosts, want 1..200", opts.Hosts)
	}
	if opts.IPv6 {
		if err := ipv6Available(); err != nil {
			unavailable(t, err)
		}
	}
	if opts.StopGrace == 0 {
		opts.StopGrace = 20 * time.Second
	}
	nw := &Network{t: t, opts: opts, logDir: t.TempDir()}
	quiet, err := lockQuiet(syscall.LOCK_SH, t, "a test that needs the network still (a browser) to end")
	if err != nil {
		t.Fatalf("netns: %v", err)
	}
	t.Cleanup(func() { quiet.Close() }) // after nw.cleanup (registered later, run first)
	if err := nw.claim(); err != nil {
		t.Fatalf("netns: %v", err)
	}
	t.Cleanup(nw.cleanup)
	if err := nw.build(); err != nil {
		t.Fatalf("netns: building network %s: %v", nw.suffix, err)
	}
	t.Logf("netns: bridge %s at %s (%d hosts, %s .. %s)", nw.bridge, nw.Subnet(), len(nw.hosts),
		nw.hosts[0].addr4, nw.hosts[len(nw.hosts)-1].addr4)
	return nw
}

// Hosts returns the hosts in order; host i has address 10.77.X.(10+i).
func (nw *Network) Hosts() []*Host { return append([]*Host(nil), nw.hosts...) }

// Host returns host i.
func (nw *Network) Host(i int) *Host { return nw.hosts[i] }

// Bridge returns the name of the bridge in the root namespace.
func (nw *Network) Bridge() string { return nw.bridge }

// Suffix returns the string every namespace and link of the network has in
// its name.
func (nw *Network) Suffix() string { return nw.suffix }

// Subnet returns the network's IPv4 subnet, 10.77.X.0/24.
func (nw *Network) Subnet() netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 77, byte(nw.subnet), 0}), 24)
}

// Subnet6 returns the network's IPv6 subnet, fd00:77:X::/64 (also without
// Options.IPv6).
func (nw *Network) Subnet6() netip.Prefix {
	return netip.PrefixFrom(netip.MustParseAddr(fmt.Sprintf("fd00:77:%x::", nw.subnet)), 64)
}

// BridgeAddr returns the bridge's IPv4 address, the test process's address
// on the network: what a host sees as the source of the test's requests.
func (nw *Network) BridgeAddr() netip.Addr { return nw.gw4 }

// BridgeAddr6 returns the bridge's IPv6 address (invalid without
// Options.IPv6).
func (nw *Network) BridgeAddr6() netip.Addr { return nw.gw6 }

// hostAddr returns host i's addresses in subnet x.
func hostAddrs(x, i int, v6 bool) (netip.Addr, netip.Addr) {
	a4 := netip.AddrFrom4([4]byte{10, 77, byte(x), byte(10 + i)})
	var a6 netip.Addr
	if v6 {
		a6 = netip.MustParseAddr(fmt.Sprintf("fd00:77:%x::%x", x, 10+i))
	}
	return a4, a6
}

// claim picks a free subnet at random, locks it, removes what a dead
// previous owner left behind, and names the network's resources.
func (nw *Network) claim() error {
	if err := os.MkdirAll(lockDir, 0o755); err != nil {
		return err
	}
	var lastErr error
	for attempt := 0; attempt < 64; attempt++ {
		x := int(randomByte())
		f, err := os.OpenFile(filepath.Join(lockDir, fmt.Sprintf("10.77.%d.lock", x)), os.O_RDWR|os.O_CREATE, 0o644)
		if err != nil {
			return err
		}
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
			f.Close() // another live test process holds subnet x
			lastErr = fmt.Errorf("subnet 10.77.%d.0/24 locked: %w", x, err)
			continue
		}
		reclaim(f)
		nw.subnet = x
		if inUse, err := nw.subnetInUse(); err != nil || inUse {
			f.Close()
			lastErr = fmt.Errorf("subnet %s already used on this machine (err %v)", nw.Subnet(), err)
			continue
		}
		nw.lock = f
		nw.suffix = fmt.Sprintf("%02x%s", x, randomHex(2)[:3])
		nw.bridge = "mcbr" + nw.suffix
		nw.gw4 = netip.AddrFrom4([4]byte{10, 77, byte(x), 1})
		if nw.opts.IPv6 {
			nw.gw6 = netip.MustParseAddr(fmt.Sprintf("fd00:77:%x::1", x))
		}
		names := []string{"link " + nw.bridge}
		for i := 0; i < nw.opts.Hosts; i++ {
			h := &Host{nw: nw, index: i, ns: fmt.Sprintf("mc-%s-%d", nw.suffix, i), veth: fmt.Sprintf("mcv%s-%d", nw.suffix, i)}
			h.addr4, h.addr6 = hostAddrs(x, i, nw.opts.IPv6)
			nw.hosts = append(nw.hosts, h)
			names = append(names, "netns "+h.ns, "link "+h.veth)
		}
		// Record the names before creating them, for reclaim.
		if err := f.Truncate(0); err != nil {
			return err
		}
		if _, err := f.WriteAt([]byte(strings.Join(names, "\n")+"\n"), 0); err != nil {
			return err
		}
		return nil
	}
	return fmt.Errorf("no free subnet in 10.77.0.0/16 after 64 tries: %v", lastErr)
}

// reclaim removes the resources recorded in a lock file whose owner died
// without cleaning up (the lock was free, so no live process owns them).
func reclaim(f *os.File) {
	b, err := os.ReadFile(f.Name())
	if err != nil {
		return
	}
	for _, line := range strings.Split(string(b), "\n") {
		kind, name, ok := strings.Cut(line, " ")
		if !ok {
			continue
		}
		switch kind {
		case "netns":
			killAll(name)
			run("ip", "netns", "del", name)
		case "link":
			run("ip", "link", "del", name)
		}
	}
}

// subnetInUse reports whether an address or route of the root namespace
// overlaps the network's subnets.
func (nw *Network) subnetInUse() (bool, error) {
	prefixes := []netip.Prefix{nw.Subnet(), nw.Subnet6()}
	ifaddrs, err := net.InterfaceAddrs()
	if err != nil {
		return false, err
	}
	for _, a := range ifaddrs {
		if p, err := netip.ParsePrefix(a.String()); err == nil {
			for _, q := range prefixes {
				if p.Overlaps(q) {
					return true, nil
				}
			}
		}
	}
	for _, family := range []string{"-4", "-6"} {
		out, err := output("ip", family, "-o", "route", "show", "table", "all")
		if err != nil {
			return false, err
		}
		for _, line := range strings.Split(out, "\n") {
			f := strings.Fields(line)
			if len(f) == 0 {
				continue
			}
			dst := f[0]
			switch dst {
			case "local", "broadcast", "unicast", "multicast", "anycast", "unreachable", "blackhole", "prohibit", "throw", "nat":
				if len(f) < 2 {
					continue
				}
				dst = f[1]
			}
			if dst == "default" {
				continue
			}
			p, err := netip.ParsePrefix(dst)
			if err != nil {
				a, err := netip.ParseAddr(dst)
				if err != nil {
					continue
				}
				p = netip.PrefixFrom(a, a.BitLen())
			}
			for _, q := range prefixes {
				if p.Overlaps(q) {
					return true, nil
				}
			}
		}
	}
	return false, nil
}

// build creates the bridge and the hosts.
func (nw *Network) build() error {
	if err := nw.create("link "+nw.bridge, "ip", "link", "add", nw.bridge, "type", "bridge"); err != nil {
		return err
	}
	cmds := [][]string{
		{"ip", "addr", "add", netip.PrefixFrom(nw.gw4, 24).String(), "dev", nw.bridge},
	}
	if nw.opts.IPv6 {
		cmds = append(cmds, []string{"ip", "addr", "add", netip.PrefixFrom(nw.gw6, 64).String(), "dev", nw.bridge, "nodad"})
	}
	cmds = append(cmds, []string{"ip", "link", "set", nw.bridge, "up"})
	for _, c := range cmds {
		if err := run(c...); err != nil {
			return err
		}
	}
	for _, h := range nw.hosts {
		if err := h.build(); err != nil {
			return fmt.Errorf("host %s: %w", h.ns, err)
		}
	}
	return nil
}

// create runs a command that creates resource what ("netns NAME" or "link
// NAME") and records it for the cleanup.
func (nw *Network) create(what string, args ...string) error {
	if err := run(args...); err != nil {
		return err
	}
	nw.created = append(nw.created, what)
	return nil
}

// cleanup removes everything the network created: what is left running in
// its namespaces is killed, then the veths, namespaces and bridge go.
func (nw *Network) cleanup() {
	var errs []string
	// Hosts first (veths, then namespaces), the bridge last.
	for i := len(nw.created) - 1; i >= 0; i-- {
		kind, name, _ := strings.Cut(nw.created[i], " ")
		var err error
		switch kind {
		case "netns":
			killAll(name)
			err = run("ip", "netns", "del", name)
		case "link":
			err = run("ip", "link", "del", name)
		}
		if err != nil {
			errs = append(errs, err.Error())
		}
	}
	if nw.lock != nil {
		nw.lock.Truncate(0)
		nw.lock.Close() // releases the subnet
	}
	if len(errs) > 0 {
		nw.t.Errorf("netns: cleanup of network %s: %s", nw.suffix, strings.Join(errs, "; "))
	}
}

// killAll kills every process left in namespace ns (started with
// Host.Command and never waited for, or children of processes the test
// started): a namespace lives on, unseen, while a process holds it.
func killAll(ns string) {
	out, err := output("ip", "netns", "pids", ns)
	if err != nil {
		return
	}
	for _, f := range strings.Fields(out) {
		var pid int
		if _, err := fmt.Sscan(f, &pid); err == nil && pid > 0 {
			syscall.Kill(pid, syscall.SIGCONT)
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// run runs a harness command (ip, nft), returning its output in the error.
func run(args ...string) error {
	_, err := output(args...)
	return err
}

func output(args ...string) (string, error) {
	return outputStdin(nil, args...)
}

func outputStdin(stdin []byte, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("%s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b) // never fails on Linux
	return hex.EncodeToString(b)
}

func randomByte() byte {
	var b [1]byte
	rand.Read(b[:])
	return b[0]
}
