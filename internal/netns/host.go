package netns

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
)

// Interface is the name of every host's link into the bridge, inside its
// namespace.
const Interface = "eth0"

// nftTable is the table the harness owns in each host's namespace.
const nftTable = "memcache_netns"

// nftRuleset creates the table: packets to an address in the out sets and
// from an address in the in sets are dropped. Block and Unblock only add
// and delete set elements.
const nftRuleset = `table inet ` + nftTable + ` {
	set out4 { type ipv4_addr; }
	set in4 { type ipv4_addr; }
	set out6 { type ipv6_addr; }
	set in6 { type ipv6_addr; }
	chain output {
		type filter hook output priority 0; policy accept;
		ip daddr @out4 counter drop
		ip6 daddr @out6 counter drop
	}
	chain input {
		type filter hook input priority 0; policy accept;
		ip saddr @in4 counter drop
		ip6 saddr @in6 counter drop
	}
}
`

// direction is a set of directions in which traffic is blocked.
type direction uint8

const (
	outgoing direction = 1 << iota
	incoming
)

// Host is one network namespace attached to the network's bridge.
type Host struct {
	nw    *Network
	index int
	ns    string // namespace name, mc-<suffix>-<index>
	veth  string // the veth's end in the root namespace (a bridge port)
	addr4 netip.Addr
	addr6 netip.Addr

	mu      sync.Mutex
	table   bool                     // the nftables table exists
	blocked map[netip.Addr]direction // blocked peers' addresses
	started int                      // processes started, for log names
}

func (h *Host) build() error {
	nw := h.nw
	if err := nw.create("netns "+h.ns, "ip", "netns", "add", h.ns); err != nil {
		return err
	}
	// The peer end is created directly inside the namespace.
	if err := nw.create("link "+h.veth, "ip", "link", "add", h.veth, "type", "veth", "peer", "name", Interface, "netns", h.ns); err != nil {
		return err
	}
	cmds := [][]string{
		{"ip", "link", "set", h.veth, "master", nw.bridge, "up"},
		{"ip", "-n", h.ns, "link", "set", "lo", "up"},
		{"ip", "-n", h.ns, "addr", "add", netip.PrefixFrom(h.addr4, 24).String(), "dev", Interface},
	}
	if h.addr6.IsValid() {
		// nodad: the address is usable at once, and again right after LinkUp.
		cmds = append(cmds, []string{"ip", "-n", h.ns, "addr", "add", netip.PrefixFrom(h.addr6, 64).String(), "dev", Interface, "nodad"})
	}
	cmds = append(cmds, []string{"ip", "-n", h.ns, "link", "set", Interface, "up"})
	for _, c := range cmds {
		if err := run(c...); err != nil {
			return err
		}
	}
	return nil
}

// Name returns the host's namespace name, mc-<suffix>-<index>.
func (h *Host) Name() string { return h.ns }

// String returns the namespace name.
func (h *Host) String() string { return h.ns }

// Index returns the host's index in the network.
func (h *Host) Index() int { return h.index }

// Addr returns the host's IPv4 address, 10.77.X.(10+index).
func (h *Host) Addr() netip.Addr { return h.addr4 }

// Addr6 returns the host's IPv6 address, fd00:77:X::(10+index) in hex
// (invalid without Options.IPv6).
func (h *Host) Addr6() netip.Addr { return h.addr6 }

// HostPort returns "addr:port" for the host's IPv4 address.
func (h *Host) HostPort(port int) string {
	return net.JoinHostPort(h.addr4.String(), strconv.Itoa(port))
}

// Link returns the name of the host's veth end in the root namespace, the
// bridge port LinkDown takes down.
func (h *Host) Link() string { return h.veth }

// Command returns a command that runs program name inside the host's
// namespace, through `ip netns exec` (which execs the program, so the
// command's process is the program's). It sees the root namespace's
// filesystem and environment; only the network differs.
func (h *Host) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", h.ns, name}, args...)...)
}

// Start starts program name inside the host as a long-running process; see
// StartCmd.
func (h *Host) Start(name string, args ...string) *Process {
	h.nw.t.Helper()
	return h.StartCmd(h.Command(context.Background(), name, args...))
}

// StartCmd starts cmd, made with Command (and perhaps given an Env or a
// Dir), as a long-running process whose stdout and stderr go to a log file
// in a temporary directory of the test. When the test ends the process gets
// SIGTERM (and SIGCONT, in case it is stopped), then SIGKILL after
// Options.StopGrace; if the test failed, the end of its log is logged.
func (h *Host) StartCmd(cmd *exec.Cmd) *Process {
	t := h.nw.t
	t.Helper()
	h.mu.Lock()
	h.started++
	seq := h.started
	h.mu.Unlock()
	label := fmt.Sprintf("%s/%s", h.ns, programName(cmd))
	logPath := filepath.Join(h.nw.logDir, fmt.Sprintf("%s-%s-%d.log", h.ns, programName(cmd), seq))
	p, err := startProcess(cmd, label, logPath, h.nw.opts.StopGrace)
	if err != nil {
		t.Fatalf("netns: starting %s: %v", label, err)
	}
	t.Cleanup(func() { p.cleanup(t) })
	return p
}

// programName is the base name of the program cmd runs inside the host.
func programName(cmd *exec.Cmd) string {
	// cmd.Args is ip netns exec NS PROGRAM ARGS...
	if len(cmd.Args) > 4 && cmd.Args[1] == "netns" && cmd.Args[2] == "exec" {
		return filepath.Base(cmd.Args[4])
	}
	return filepath.Base(cmd.Path)
}

// LinkDown takes the host's link down at the bridge port: the host keeps
// its addresses and routes, but no packet goes in or out until LinkUp.
func (h *Host) LinkDown() {
	h.nw.t.Helper()
	if err := run("ip", "link", "set", h.veth, "down"); err != nil {
		h.nw.t.Fatalf("netns: LinkDown %s: %v", h.ns, err)
	}
}

// LinkUp brings the host's link back up after LinkDown.
func (h *Host) LinkUp() {
	h.nw.t.Helper()
	if err := run("ip", "link", "set", h.veth, "up"); err != nil {
		h.nw.t.Fatalf("netns: LinkUp %s: %v", h.ns, err)
	}
}

// Block drops, inside h, every packet to and from other's addresses until
// Unblock. It changes only h's rules, in the harness's own nftables table in
// h's namespace.
func (h *Host) Block(other *Host) { h.nw.t.Helper(); h.block(other, outgoing|incoming) }

// BlockOutgoing drops, inside h, every packet h sends to host to; packets
// from to still arrive. UDP (gossip's probes) still flows from to to h,
// while a TCP connection in either direction stalls, since it needs packets
// both ways.
func (h *Host) BlockOutgoing(to *Host) { h.nw.t.Helper(); h.block(to, outgoing) }

// BlockIncoming drops, inside h, every packet from host from; h's packets
// to from still leave.
func (h *Host) BlockIncoming(from *Host) { h.nw.t.Helper(); h.block(from, incoming) }

// Unblock removes every block of h against other, in both directions.
func (h *Host) Unblock(other *Host) { h.nw.t.Helper(); h.unblock(other.addrs()) }

// UnblockAll removes every block of h.
func (h *Host) UnblockAll() {
	h.nw.t.Helper()
	h.mu.Lock()
	var addrs []netip.Addr
	for a := range h.blocked {
		addrs = append(addrs, a)
	}
	h.mu.Unlock()
	h.unblock(addrs)
}

func (h *Host) addrs() []netip.Addr {
	if h.addr6.IsValid() {
		return []netip.Addr{h.addr4, h.addr6}
	}
	return []netip.Addr{h.addr4}
}

func (h *Host) block(other *Host, dir direction) {
	t := h.nw.t
	t.Helper()
	if other == h {
		t.Fatalf("netns: %s cannot block itself", h.ns)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.ensureTable()
	if h.blocked == nil {
		h.blocked = map[netip.Addr]direction{}
	}
	var script strings.Builder
	for _, a := range other.addrs() {
		add := dir &^ h.blocked[a]
		for _, set := range sets(a, add) {
			fmt.Fprintf(&script, "add element inet %s %s { %s }\n", nftTable, set, a)
		}
		h.blocked[a] |= dir
	}
	h.nft(script.String())
}

func (h *Host) unblock(addrs []netip.Addr) {
	h.nw.t.Helper()
	h.mu.Lock()
	defer h.mu.Unlock()
	var script strings.Builder
	for _, a := range addrs {
		for _, set := range sets(a, h.blocked[a]) {
			fmt.Fprintf(&script, "delete element inet %s %s { %s }\n", nftTable, set, a)
		}
		delete(h.blocked, a)
	}
	h.nft(script.String())
}

// sets returns the sets that hold address a for directions dir.
func sets(a netip.Addr, dir direction) []string {
	family := "4"
	if a.Is6() {
		family = "6"
	}
	var s []string
	if dir&outgoing != 0 {
		s = append(s, "out"+family)
	}
	if dir&incoming != 0 {
		s = append(s, "in"+family)
	}
	return s
}

// ensureTable creates the harness's table in h's namespace on first use.
// h.mu is held.
func (h *Host) ensureTable() {
	h.nw.t.Helper()
	if h.table {
		return
	}
	requireTool(h.nw.t, "nft")
	h.nft(nftRuleset)
	h.table = true
}

// nft runs an nft script inside h's namespace. h.mu is held.
func (h *Host) nft(script string) {
	h.nw.t.Helper()
	if script == "" {
		return
	}
	if _, err := outputStdin([]byte(script), "ip", "netns", "exec", h.ns, "nft", "-f", "-"); err != nil {
		h.nw.t.Fatalf("netns: nft in %s: %v\nscript:\n%s", h.ns, err, script)
	}
}

// Rules returns the harness's nftables table in h's namespace as nft lists
// it (with its counters), for a failure message; "" if Block was never
// called.
func (h *Host) Rules() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.table {
		return ""
	}
	out, err := output("ip", "netns", "exec", h.ns, "nft", "list", "table", "inet", nftTable)
	if err != nil {
		return err.Error()
	}
	return out
}
