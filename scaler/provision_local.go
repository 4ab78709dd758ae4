package scaler

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/memcache/memcache/gossip"
)

// Defaults and fixed timings of Local.
const (
	defaultIDPrefix     = "node"
	defaultHost         = "127.0.0.1"
	defaultStartTimeout = 30 * time.Second
	startPoll           = 20 * time.Millisecond // how often Acquire looks for a started node in gossip
	stopGrace           = 10 * time.Second      // SIGTERM to SIGKILL
	logTailBytes        = 2048                  // how much of a failed child's log an error quotes
	waitDelay           = 2 * time.Second       // bound on draining a child's stderr pipe after it exits
)

// LocalConfig configures a Local provisioner.
type LocalConfig struct {
	// Binary is the memcache executable to run. If blank, it defaults to
	// this process's own executable (os.Executable).
	Binary string
	// Join lists the gossip seeds (host:port) each node is started with
	// (--join). Required: a node must join this cluster to be found.
	Join []string
	// GossipKey is the base64 gossip encryption key (--gossip-key), passed
	// through if set.
	GossipKey string
	// GlobalArgs are flags placed before the node subcommand, such as
	// "--log-level", "warn".
	GlobalArgs []string
	// ExtraArgs are further node flags placed after the ones Local sets,
	// such as "--capacity-mb", "128".
	ExtraArgs []string
	// IDPrefix starts the id of each started node: <IDPrefix>-<8 hex
	// digits>. If blank, it defaults to "node".
	IDPrefix string
	// Host is the IP address the nodes listen on (HTTP and gossip, on
	// ports they choose). If blank, it defaults to 127.0.0.1.
	Host string
	// StartTimeout bounds how long Acquire waits for started nodes to
	// appear alive in gossip. If zero, it defaults to 30 s.
	StartTimeout time.Duration
	// LogDir, if set, receives each node's stdout and stderr in
	// LogDir/<id>.log (created if needed). Otherwise stdout is discarded
	// and only the last few KB of stderr are kept, in memory, to explain a
	// node that fails to start.
	LogDir string
	// Env is added to this process's environment for the nodes.
	Env []string
}

// Local provisions cache nodes by starting `memcache node` processes on
// this machine. It first reuses idle nodes found in gossip, as Static does,
// so nodes started by a previous leader are not wasted.
//
// Each child is started with Setpgid and Pdeathsig SIGTERM, so it does not
// outlive this process (Linux signals the child when the OS thread that
// forked it exits; the Go runtime does not end threads of unlocked
// goroutines). One goroutine per child waits for it to exit; Close stops
// all children and waits for those goroutines.
type Local struct {
	cfg     LocalConfig
	members Members
	log     *slog.Logger

	// acquireMu serialises Acquire, so two calls never hand out the same
	// idle node.
	acquireMu sync.Mutex

	// stop is closed by Close to abort an Acquire waiting for its nodes.
	stop chan struct{}
	// wg counts the goroutines waiting on children.
	wg sync.WaitGroup

	// mu guards closed and procs.
	mu     sync.Mutex
	closed bool
	procs  map[string]*child // every child ever started, by id; exited ones stay as tombstones
}

// child is one started node process.
type child struct {
	id   string
	cmd  *exec.Cmd
	log  string        // path of its log file, or ""
	tail *tailBuffer   // end of its stderr when there is no log file
	done chan struct{} // closed once cmd.Wait has returned
	err  error         // cmd.Wait's result; read only after done is closed
}

// running reports whether the child has not exited yet.
func (c *child) running() bool {
	select {
	case <-c.done:
		return false
	default:
		return true
	}
}

// NewLocal checks cfg, fills in its defaults and returns the provisioner.
// members is the gossip view the started nodes must appear in. log may be
// nil to discard logs.
func NewLocal(cfg LocalConfig, members Members, log *slog.Logger) (*Local, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if members == nil {
		return nil, errors.New("scaler: NewLocal needs a Members view")
	}
	if cfg.Binary == "" {
		exe, err := os.Executable()
		if err != nil {
			return nil, fmt.Errorf("scaler: find own executable: %w", err)
		}
		cfg.Binary = exe
	}
	bin, err := exec.LookPath(cfg.Binary)
	if err != nil {
		return nil, fmt.Errorf("scaler: node binary: %w", err)
	}
	cfg.Binary = bin
	if len(cfg.Join) == 0 {
		return nil, errors.New("scaler: LocalConfig.Join is empty: started nodes must join the gossip cluster")
	}
	for _, s := range cfg.Join {
		if _, _, err := net.SplitHostPort(s); err != nil {
			return nil, fmt.Errorf("scaler: LocalConfig.Join %q: %w", s, err)
		}
	}
	if cfg.GossipKey != "" {
		key, err := base64.StdEncoding.DecodeString(cfg.GossipKey)
		if err != nil {
			return nil, fmt.Errorf("scaler: LocalConfig.GossipKey is not base64: %w", err)
		}
		if n := len(key); n != 16 && n != 24 && n != 32 {
			return nil, fmt.Errorf("scaler: LocalConfig.GossipKey is %d bytes, want 16, 24 or 32", n)
		}
	}
	if cfg.IDPrefix == "" {
		cfg.IDPrefix = defaultIDPrefix
	}
	if cfg.Host == "" {
		cfg.Host = defaultHost
	}
	if net.ParseIP(cfg.Host) == nil {
		return nil, fmt.Errorf("scaler: LocalConfig.Host %q is not an IP address", cfg.Host)
	}
	if cfg.StartTimeout < 0 {
		return nil, fmt.Errorf("scaler: LocalConfig.StartTimeout %v is negative", cfg.StartTimeout)
	}
	if cfg.StartTimeout == 0 {
		cfg.StartTimeout = defaultStartTimeout
	}
	if cfg.LogDir != "" {
		if err := os.MkdirAll(cfg.LogDir, 0o755); err != nil {
			return nil, fmt.Errorf("scaler: LocalConfig.LogDir: %w", err)
		}
	}
	cfg.Join = slices.Clone(cfg.Join)
	cfg.GlobalArgs = slices.Clone(cfg.GlobalArgs)
	cfg.ExtraArgs = slices.Clone(cfg.ExtraArgs)
	cfg.Env = slices.Clone(cfg.Env)
	return &Local{
		cfg:     cfg,
		members: members,
		log:     log.With("component", "provisioner", "provisioner", "local"),
		stop:    make(chan struct{}),
		procs:   make(map[string]*child),
	}, nil
}

// Acquire returns n nodes: idle nodes from gossip first (sorted by ID, as
// Static picks them), then as many new node processes as are still needed,
// once each is alive in gossip. If a new node fails to start, exits or
// does not appear within StartTimeout (or ctx ends, or Close is called),
// Acquire stops every process it started in this call and returns an error
// wrapping ErrNoCapacity and the cause.
func (l *Local) Acquire(ctx context.Context, n int, exclude []string) ([]Node, error) {
	if n < 0 {
		return nil, fmt.Errorf("scaler: acquire %d nodes: n must not be negative", n)
	}
	l.acquireMu.Lock()
	defer l.acquireMu.Unlock()
	if l.isClosed() {
		return nil, ErrClosed
	}

	members := l.members.Members()
	idle := idleNodes(members, l.excluding(exclude))
	if len(idle) >= n {
		return idle[:n], nil
	}
	out := idle
	need := n - len(idle)

	started := make([]*child, 0, need)
	fail := func(err error) ([]Node, error) {
		l.stopAll(context.Background(), started)
		if errors.Is(err, ErrClosed) {
			return nil, err
		}
		return nil, fmt.Errorf("%w: asked for %d, found %d idle; starting %d more failed: %w",
			ErrNoCapacity, n, len(idle), need, err)
	}
	for range need {
		c, err := l.start(members)
		if err != nil {
			return fail(err)
		}
		started = append(started, c)
	}
	nodes, err := l.awaitJoined(ctx, started)
	if err != nil {
		return fail(err)
	}
	return append(out, nodes...), nil
}

// excluding returns exclude plus the ids of the nodes this provisioner
// started that have exited, which gossip may still list for a moment.
func (l *Local) excluding(exclude []string) []string {
	out := slices.Clone(exclude)
	l.mu.Lock()
	defer l.mu.Unlock()
	for id, c := range l.procs {
		if !c.running() {
			out = append(out, id)
		}
	}
	return out
}

// start launches one node process and the goroutine that waits for it.
func (l *Local) start(members []gossip.Member) (*child, error) {
	id, err := l.newID(members)
	if err != nil {
		return nil, err
	}
	args := slices.Clone(l.cfg.GlobalArgs)
	args = append(args, "node",
		"--id", id,
		"--http-addr", net.JoinHostPort(l.cfg.Host, "0"),
		"--gossip-addr", net.JoinHostPort(l.cfg.Host, "0"),
	)
	for _, j := range l.cfg.Join {
		args = append(args, "--join", j)
	}
	if l.cfg.GossipKey != "" {
		args = append(args, "--gossip-key", l.cfg.GossipKey)
	}
	args = append(args, l.cfg.ExtraArgs...)

	cmd := exec.Command(l.cfg.Binary, args...)
	cmd.Env = append(os.Environ(), l.cfg.Env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	c := &child{id: id, cmd: cmd, done: make(chan struct{})}

	var logFile *os.File
	if l.cfg.LogDir != "" {
		c.log = filepath.Join(l.cfg.LogDir, id+".log")
		logFile, err = os.OpenFile(c.log, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
		if err != nil {
			return nil, fmt.Errorf("scaler: node %s: open log: %w", id, err)
		}
		// The child writes to the file itself; our copy is closed below.
		defer logFile.Close()
		cmd.Stdout, cmd.Stderr = logFile, logFile
	} else {
		c.tail = &tailBuffer{max: logTailBytes}
		cmd.Stderr = c.tail
		cmd.WaitDelay = waitDelay
	}

	// Start and register under mu, so Close either sees this child or
	// prevents it from starting.
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil, ErrClosed
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("scaler: start node %s: %w", id, err)
	}
	l.procs[id] = c
	l.wg.Add(1)
	go l.wait(c)
	l.log.Info("node process started", "id", id, "pid", cmd.Process.Pid, "log", c.log)
	return c, nil
}

// wait records the child's exit. One runs per child; Close waits for them.
func (l *Local) wait(c *child) {
	defer l.wg.Done()
	c.err = c.cmd.Wait()
	close(c.done)
	l.log.Info("node process exited", "id", c.id, "status", exitStatus(c.err))
}

// newID returns <IDPrefix>-<8 random hex digits>, unused in gossip and by
// this provisioner.
func (l *Local) newID(members []gossip.Member) (string, error) {
	for {
		var b [4]byte
		if _, err := rand.Read(b[:]); err != nil {
			return "", fmt.Errorf("scaler: random node id: %w", err)
		}
		id := l.cfg.IDPrefix + "-" + hex.EncodeToString(b[:])
		l.mu.Lock()
		_, used := l.procs[id]
		l.mu.Unlock()
		if !used && !slices.ContainsFunc(members, func(m gossip.Member) bool { return m.Meta.ID == id }) {
			return id, nil
		}
	}
}

// awaitJoined polls gossip until every child is an alive node member with
// an HTTP URL, and returns them in order. It fails when a child exits, at
// StartTimeout, when ctx ends or when Close is called.
func (l *Local) awaitJoined(ctx context.Context, cs []*child) ([]Node, error) {
	timeout := time.NewTimer(l.cfg.StartTimeout)
	defer timeout.Stop()
	tick := time.NewTicker(startPoll)
	defer tick.Stop()
	for {
		for _, c := range cs {
			if !c.running() {
				return nil, l.exitError(c)
			}
		}
		byID := make(map[string]gossip.Member)
		for _, m := range l.members.Members() {
			if m.Meta.Role == gossip.RoleNode && m.State == gossip.StateAlive && m.Meta.HTTP != "" {
				byID[m.Meta.ID] = m
			}
		}
		nodes := make([]Node, 0, len(cs))
		for _, c := range cs {
			if m, ok := byID[c.id]; ok {
				nodes = append(nodes, Node{ID: c.id, HTTP: m.Meta.HTTP})
			}
		}
		if len(nodes) == len(cs) {
			return nodes, nil
		}

		select {
		case <-tick.C:
		case <-timeout.C:
			return nil, fmt.Errorf("%d of %d started nodes not alive in gossip after %v", len(cs)-len(nodes), len(cs), l.cfg.StartTimeout)
		case <-ctx.Done():
			return nil, fmt.Errorf("waiting for started nodes: %w", ctx.Err())
		case <-l.stop:
			return nil, ErrClosed
		}
	}
}

// exitError describes a child that exited before it joined, quoting the
// end of its log.
func (l *Local) exitError(c *child) error {
	var tail []byte
	if c.log != "" {
		tail = readTail(c.log, logTailBytes)
	} else if c.tail != nil {
		tail = c.tail.Bytes()
	}
	err := fmt.Errorf("node %s (%s) exited before joining gossip: %s", c.id, c.cmd.Path, exitStatus(c.err))
	if tail = bytes.TrimSpace(tail); len(tail) > 0 {
		err = fmt.Errorf("%w; end of its log:\n%s", err, tail)
	}
	return err
}

// Release stops the listed nodes this provisioner started, in parallel:
// SIGTERM, then SIGKILL after 10 s (or at once if ctx ends), and waits
// until they have exited. Other ids are ignored.
func (l *Local) Release(ctx context.Context, ids []string) error {
	var cs []*child
	l.mu.Lock()
	for _, id := range ids {
		if c, ok := l.procs[id]; ok && c.running() {
			cs = append(cs, c)
		}
	}
	l.mu.Unlock()
	l.stopAll(ctx, cs)
	return nil
}

// Close stops every node this provisioner started, aborts a pending
// Acquire, and waits for all its goroutines. It is idempotent.
func (l *Local) Close() error {
	l.mu.Lock()
	first := !l.closed
	l.closed = true
	var cs []*child
	for _, c := range l.procs {
		cs = append(cs, c)
	}
	l.mu.Unlock()
	if first {
		close(l.stop)
	}
	l.stopAll(context.Background(), cs)
	l.wg.Wait()
	return nil
}

// Started returns the ids, sorted, of the nodes this provisioner started
// that are still running.
func (l *Local) Started() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var ids []string
	for id, c := range l.procs {
		if c.running() {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	return ids
}

func (l *Local) isClosed() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.closed
}

// stopAll stops the children in parallel and returns when all have exited.
func (l *Local) stopAll(ctx context.Context, cs []*child) {
	var wg sync.WaitGroup
	for _, c := range cs {
		wg.Go(func() { l.stopChild(ctx, c) })
	}
	wg.Wait()
}

// stopChild sends SIGTERM, waits up to stopGrace (or until ctx ends), then
// sends SIGKILL, and returns once the child has exited. Concurrent calls
// for one child are safe.
func (l *Local) stopChild(ctx context.Context, c *child) {
	if !c.running() {
		return
	}
	if err := c.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		l.log.Warn("signal node process", "id", c.id, "err", err)
	}
	grace := time.NewTimer(stopGrace)
	defer grace.Stop()
	select {
	case <-c.done:
		return
	case <-grace.C:
		l.log.Warn("node process ignored SIGTERM; killing it", "id", c.id, "after", stopGrace)
	case <-ctx.Done():
		l.log.Warn("release cancelled; killing node process", "id", c.id, "err", ctx.Err())
	}
	if err := c.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		l.log.Warn("kill node process", "id", c.id, "err", err)
	}
	<-c.done
}

// exitStatus describes cmd.Wait's result.
func exitStatus(err error) string {
	if err == nil {
		return "exit status 0"
	}
	return err.Error()
}

// readTail returns up to n bytes from the end of the file at path.
func readTail(path string, n int64) []byte {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.Size() > n {
		if _, err := f.Seek(-n, io.SeekEnd); err != nil {
			return nil
		}
	}
	b, _ := io.ReadAll(io.LimitReader(f, n))
	return b
}

// tailBuffer is an io.Writer that keeps the last max bytes written.
type tailBuffer struct {
	max int
	mu  sync.Mutex // guards buf
	buf []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if over := len(t.buf) - t.max; over > 0 {
		t.buf = append(t.buf[:0], t.buf[over:]...)
	}
	return len(p), nil
}

// Bytes returns a copy of what is kept.
func (t *tailBuffer) Bytes() []byte {
	t.mu.Lock()
	defer t.mu.Unlock()
	return slices.Clone(t.buf)
}
