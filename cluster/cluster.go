// Package cluster runs a manager replica's Raft group member: hashicorp/raft
// with a BoltDB log and file snapshots, bootstrap by gossip, forwarding of
// writes to the leader, leader-only work, and the pool-state watch.
package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"

	"github.com/memcache/memcache/auth"
	"github.com/memcache/memcache/fsm"
	"github.com/memcache/memcache/gossip"
	"github.com/memcache/memcache/pki"
)

// Errors returned by the cluster.
var (
	// ErrNoLeader is returned when no leader is known before the call's deadline.
	ErrNoLeader = errors.New("cluster: no leader")
	// ErrClosed is returned after Close.
	ErrClosed = errors.New("cluster: closed")
	// ErrBadPeerID: the operator named a Raft server with an id no
	// manager can have (empty, too long, or with spaces or control bytes).
	ErrBadPeerID = errors.New("cluster: bad peer id")
	// ErrUnknownPeer: no server of the Raft configuration has that id.
	ErrUnknownPeer = errors.New("cluster: no such peer")
	// ErrPeerRefused: the removal would break the group or be undone (the
	// leader itself, the last voter, a replica alive in gossip); it
	// changed nothing.
	ErrPeerRefused = errors.New("cluster: peer removal refused")
)

// Timing holds the Raft timeouts.
type Timing struct {
	Heartbeat   time.Duration // follower without contact before it starts an election
	Election    time.Duration // candidate without a quorum before it retries
	LeaderLease time.Duration // leader without contact with a quorum before it steps down
	Commit      time.Duration // longest delay before followers learn of a commit
}

// DefaultTiming is what managers ship with: a failed leader is replaced in
// about one second on a LAN, and followers learn of a commit within 10 ms
// (hashicorp/raft's defaults are 1 s, 1 s, 500 ms and 50 ms).
func DefaultTiming() Timing {
	return Timing{Heartbeat: 500 * time.Millisecond, Election: 500 * time.Millisecond,
		LeaderLease: 250 * time.Millisecond, Commit: 10 * time.Millisecond}
}

// FastTiming is the one Raft timing of the tests, on loopback: short
// enough for elections within a few seconds, long enough that a two-core
// machine running the race detector beside another test run does not hold
// stray elections (heartbeat and election 1 s, lease 500 ms, commit 10 ms).
// With 400 ms and a 200 ms lease, a loaded machine saw a leader step down
// every few seconds: its heartbeats waited longer than the lease for a CPU.
func FastTiming() Timing {
	return Timing{Heartbeat: time.Second, Election: time.Second,
		LeaderLease: 500 * time.Millisecond, Commit: 10 * time.Millisecond}
}

// Config configures a manager replica's place in the cluster.
type Config struct {
	// Name is the replica's Raft server ID and gossip id. Required.
	Name string
	// DataDir holds raft.db and snapshots/. Required.
	DataDir string
	// RaftAddr is the host:port Raft listens on; port 0 picks a free port.
	RaftAddr string
	// RaftAdvertise is the host:port others dial; if blank, the listener's address.
	RaftAdvertise string
	// HTTPURL is the base URL of this replica's cluster HTTP API (the
	// watch, forwarding), advertised by gossip.
	HTTPURL string
	// PublicURL is the base URL of this replica's public HTTP API and UI,
	// advertised by gossip for display.
	PublicURL string
	// BootstrapExpect, if > 0, makes the first BootstrapExpect managers that
	// see each other by gossip form the Raft group. A replica with existing
	// Raft state never bootstraps again. 0: wait to be added by a leader.
	BootstrapExpect int
	// Secret is the cluster secret required on internal calls.
	Secret string
	// TLS, if set, carries Raft over mutual TLS (only managers' certificates
	// signed by the cluster CA are admitted) and is presented on the
	// replica's internal HTTP calls. If nil, Raft is plain TCP that accepts
	// anyone who can reach it.
	TLS *pki.TLS
	// AdminToken is the operator's bearer token: the operator API and the
	// private part of /raft/status require it. If blank, both are open.
	AdminToken string
	// Timing holds the Raft timeouts. If zero, DefaultTiming.
	Timing Timing
	// Gossip configures the membership; its Meta is filled in by New.
	Gossip gossip.Config
	// SnapshotThreshold is how many log entries trigger a snapshot. If zero, 1024.
	SnapshotThreshold uint64
	// AddressProvider, if set, maps a peer's server ID to the address Raft
	// dials (tests use it to route Raft traffic through cuttable proxies).
	AddressProvider raft.ServerAddressProvider
	// ForwardTimeout bounds one attempt to have the leader commit a command
	// forwarded by Apply: a leader that does not answer in time (paused,
	// cut off) is asked again, or its successor, after a jittered backoff.
	// If zero, 15 s (the leader's own apply timeout is 10 s).
	ForwardTimeout time.Duration
	// ViewLease is the lease granted with every consistent pool-view
	// answer (see package pool): a cache node serves reads only within it
	// of a request the leader answered. It must not exceed the time the
	// pool takes to give away the regions of a node it cannot reach (the
	// dead grace after gossip's detection): the manager role sets the dead
	// grace. If zero, no lease is granted and nodes are not fenced.
	ViewLease time.Duration
	// ProxyTimeout bounds a request ForwardToLeader proxies to the leader;
	// an earlier deadline of the request itself wins. If zero, 2 minutes
	// (a resize may start nodes).
	ProxyTimeout time.Duration
}

// Cluster is one manager replica's membership in the Raft group.
type Cluster struct {
	cfg       Config
	log       *slog.Logger
	base      *slog.Logger // log without the component, for raft and gossip
	fsm       *fsm.FSM
	raft      *raft.Raft
	transport *raft.NetworkTransport
	store     *raftboltdb.BoltStore
	gossip    *gossip.Gossip
	addr      string // advertised Raft address
	client    *http.Client

	notify chan bool     // raft's leadership notifications
	stop   chan struct{} // closed by Close
	wg     sync.WaitGroup

	mu          sync.Mutex // guards the fields below
	work        []func(context.Context)
	leaderCtx   context.Context // non-nil while this replica leads and its barrier has passed
	leaderWG    *sync.WaitGroup
	closed      bool
	closeResult error
	// removed holds the live managers the operator force-removed;
	// reconcileManagers leaves them out until they leave gossip.
	removed map[raft.ServerID]bool
}

// New opens the Raft state in cfg.DataDir, starts Raft and gossip, and
// bootstraps the group when cfg.BootstrapExpect managers have found each
// other. The FSM f is owned by the cluster from now on.
func New(cfg Config, f *fsm.FSM, log *slog.Logger) (*Cluster, error) {
	if cfg.Name == "" || cfg.DataDir == "" {
		return nil, errors.New("cluster: Name and DataDir are required")
	}
	if cfg.Timing == (Timing{}) {
		cfg.Timing = DefaultTiming()
	}
	if cfg.SnapshotThreshold == 0 {
		cfg.SnapshotThreshold = 1024
	}
	if cfg.ForwardTimeout <= 0 {
		cfg.ForwardTimeout = applyTimeout + 5*time.Second
	}
	if cfg.ProxyTimeout <= 0 {
		cfg.ProxyTimeout = 2 * time.Minute
	}
	base := log.With("id", cfg.Name)
	log = base.With("component", "cluster")
	if err := os.MkdirAll(cfg.DataDir, 0o755); err != nil {
		return nil, err
	}
	c := &Cluster{cfg: cfg, log: log, base: base, fsm: f, notify: make(chan bool, 16), stop: make(chan struct{}),
		client: &http.Client{Transport: &auth.Transport{Secret: cfg.Secret, Base: pki.Transport(cfg.TLS)}}}
	if err := c.openRaft(); err != nil {
		c.closeStores()
		return nil, err
	}
	gcfg := cfg.Gossip
	gcfg.Meta = gossip.Meta{Role: gossip.RoleManager, ID: cfg.Name, HTTP: cfg.HTTPURL, Public: cfg.PublicURL, Raft: c.addr}
	g, err := gossip.New(gcfg, base)
	if err != nil {
		c.raft.Shutdown().Error()
		c.closeStores()
		return nil, err
	}
	c.gossip = g
	c.wg.Add(1)
	go c.monitorLeadership()
	c.wg.Add(1)
	go c.bootstrap()
	log.Info("manager replica started", "raft", c.addr, "gossip", g.Addr(), "http", cfg.HTTPURL)
	if cfg.TLS == nil {
		log.Warn("no TLS: Raft and internal HTTP are plain text, and the Raft port accepts anyone who reaches it")
	}
	if cfg.Secret == "" {
		log.Warn("no cluster secret: internal endpoints (/internal, /v1) accept any caller")
	}
	return c, nil
}

func (c *Cluster) openRaft() error {
	cfg := c.cfg
	hlog := newHCLogger(c.base.With("component", "raft"))
	var advertise net.Addr
	if cfg.RaftAdvertise != "" {
		a, err := net.ResolveTCPAddr("tcp", cfg.RaftAdvertise)
		if err != nil {
			return fmt.Errorf("cluster: raft advertise address %q: %w", cfg.RaftAdvertise, err)
		}
		advertise = a
	}
	// Timeout bounds each outbound RPC's I/O. Inbound connections: over
	// TLS the stream layer bounds a handshake to handshakeTimeout, so only
	// a manager of this cluster can hold one; raft then reads it without a
	// deadline (a follower's heartbeat connection idles between
	// heartbeats). Without TLS raft accepts anyone and sets no deadline: a
	// silent peer holds a goroutine until the transport closes, one reason
	// an exposed Raft port needs TLS.
	tcfg := &raft.NetworkTransportConfig{
		ServerAddressProvider: cfg.AddressProvider, Logger: hlog, MaxPool: 3, Timeout: 10 * time.Second,
	}
	var tr *raft.NetworkTransport
	if cfg.TLS != nil {
		stream, err := newTLSStream(cfg.RaftAddr, advertise, cfg.TLS, c.base.With("component", "raft"))
		if err != nil {
			return fmt.Errorf("cluster: raft transport on %s: %w", cfg.RaftAddr, err)
		}
		tcfg.Stream = stream
		tr = raft.NewNetworkTransportWithConfig(tcfg)
	} else {
		var err error
		if tr, err = raft.NewTCPTransportWithConfig(cfg.RaftAddr, advertise, tcfg); err != nil {
			return fmt.Errorf("cluster: raft transport on %s: %w", cfg.RaftAddr, err)
		}
	}
	c.transport = tr
	c.addr = string(tr.LocalAddr())
	store, err := raftboltdb.New(raftboltdb.Options{Path: filepath.Join(cfg.DataDir, "raft.db")})
	if err != nil {
		return fmt.Errorf("cluster: open raft.db: %w", err)
	}
	c.store = store
	snaps, err := raft.NewFileSnapshotStoreWithLogger(cfg.DataDir, 2, hlog)
	if err != nil {
		return fmt.Errorf("cluster: snapshot store: %w", err)
	}
	logs, err := raft.NewLogCache(512, store)
	if err != nil {
		return err
	}
	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(cfg.Name)
	rc.Logger = hlog
	rc.NotifyCh = c.notify
	rc.HeartbeatTimeout = cfg.Timing.Heartbeat
	rc.ElectionTimeout = cfg.Timing.Election
	rc.LeaderLeaseTimeout = cfg.Timing.LeaderLease
	rc.CommitTimeout = cfg.Timing.Commit
	rc.SnapshotThreshold = cfg.SnapshotThreshold
	r, err := raft.NewRaft(rc, c.fsm, logs, store, snaps, tr)
	if err != nil {
		return fmt.Errorf("cluster: start raft: %w", err)
	}
	c.raft = r
	return nil
}

func (c *Cluster) closeStores() {
	if c.transport != nil {
		c.transport.Close()
	}
	if c.store != nil {
		c.store.Close()
	}
}

// bootstrap forms the Raft group once BootstrapExpect managers see each
// other by gossip. The set is the first BootstrapExpect managers by name, so
// every one of them computes the same configuration.
func (c *Cluster) bootstrap() {
	defer c.wg.Done()
	expect := c.cfg.BootstrapExpect
	if expect <= 0 {
		return
	}
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-c.stop:
			return
		case <-t.C:
		}
		if existing, err := c.hasConfiguration(); err != nil || existing {
			return
		}
		var servers []raft.Server
		for _, m := range c.gossip.Members() {
			if m.Meta.Role == gossip.RoleManager && m.Meta.Raft != "" && m.State == gossip.StateAlive {
				servers = append(servers, raft.Server{Suffrage: raft.Voter, ID: raft.ServerID(m.Meta.ID), Address: raft.ServerAddress(m.Meta.Raft)})
			}
		}
		if len(servers) < expect {
			continue
		}
		slices.SortFunc(servers, func(a, b raft.Server) int { return strings.Compare(string(a.ID), string(b.ID)) })
		servers = servers[:expect]
		if !slices.ContainsFunc(servers, func(s raft.Server) bool { return s.ID == raft.ServerID(c.cfg.Name) }) {
			c.log.Info("not among the first managers; waiting to be added by the leader", "expect", expect)
			return
		}
		err := c.raft.BootstrapCluster(raft.Configuration{Servers: servers}).Error()
		if err != nil && !errors.Is(err, raft.ErrCantBootstrap) {
			c.log.Error("bootstrap failed", "err", err)
			continue
		}
		c.log.Info("bootstrapped raft group", "servers", len(servers))
		return
	}
}

// hasConfiguration reports whether this replica already belongs to a Raft
// configuration (from its data dir, or because a leader added it).
func (c *Cluster) hasConfiguration() (bool, error) {
	f := c.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return false, err
	}
	return len(f.Configuration().Servers) > 0, nil
}

// monitorLeadership starts the leader loop when this replica gains
// leadership and stops it, waiting for it, when it loses leadership.
func (c *Cluster) monitorLeadership() {
	defer c.wg.Done()
	var leading *leaderRun
	defer func() { leading.stop() }()
	for {
		select {
		case <-c.stop:
			return
		case isLeader := <-c.notify:
			switch {
			case isLeader && leading == nil:
				leading = c.startLeading()
			case !isLeader && leading != nil:
				leading.stop()
				leading = nil
				c.log.Info("leader work stopped")
			}
		}
	}
}

// leaderRun is one term of leader work.
type leaderRun struct {
	cancel context.CancelFunc
	done   chan struct{}
}

func (c *Cluster) startLeading() *leaderRun {
	ctx, cancel := context.WithCancel(context.Background())
	run := &leaderRun{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(run.done)
		c.leaderLoop(ctx)
	}()
	return run
}

// stop cancels the leader work and waits for it; a nil run is a no-op.
func (r *leaderRun) stop() {
	if r == nil {
		return
	}
	r.cancel()
	<-r.done
}

// leaderLoop runs while this replica leads: it waits for a barrier (so the
// FSM has applied everything committed before), then runs the registered
// leader work and the manager reconciler until ctx is cancelled.
func (c *Cluster) leaderLoop(ctx context.Context) {
	for {
		err := c.raft.Barrier(5 * time.Second).Error()
		if err == nil {
			break
		}
		c.log.Warn("leader barrier failed", "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(100 * time.Millisecond):
		}
	}
	c.log.Info("leader work started", "index", c.raft.AppliedIndex())
	var wg sync.WaitGroup
	c.mu.Lock()
	c.leaderCtx, c.leaderWG = ctx, &wg
	for _, fn := range c.work {
		c.startWork(ctx, &wg, fn)
	}
	c.mu.Unlock()
	c.startWork(ctx, &wg, c.reconcileManagers)
	<-ctx.Done()
	c.mu.Lock()
	c.leaderCtx, c.leaderWG = nil, nil
	c.mu.Unlock()
	wg.Wait()
}

func (c *Cluster) startWork(ctx context.Context, wg *sync.WaitGroup, fn func(context.Context)) {
	wg.Add(1)
	go func() {
		defer wg.Done()
		fn(ctx)
	}()
}

// RunWhileLeader registers fn as leader-only work: it is started with a
// context that is cancelled when this replica loses leadership (or closes),
// and the replica waits for it to return before leading again.
func (c *Cluster) RunWhileLeader(fn func(ctx context.Context)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.work = append(c.work, fn)
	if c.leaderCtx != nil {
		c.startWork(c.leaderCtx, c.leaderWG, fn)
	}
}

// reconcileManagers adds as voters the managers that gossip shows and the
// Raft configuration lacks (a new manager, or one started without
// BootstrapExpect). Managers are never removed automatically: a manager
// that stops is expected back with its data dir; the operator removes one
// for good with RemovePeer. A live manager the operator removed with force
// is left out until it leaves gossip (it stops or restarts).
func (c *Cluster) reconcileManagers(ctx context.Context) {
	events, cancel := c.gossip.Subscribe()
	defer cancel()
	t := time.NewTicker(5 * time.Second)
	defer t.Stop()
	for {
		f := c.raft.GetConfiguration()
		if f.Error() == nil {
			known := map[raft.ServerID]bool{}
			for _, s := range f.Configuration().Servers {
				known[s.ID] = true
			}
			members := c.gossip.Members()
			c.forgetRemoved(members)
			for _, m := range members {
				if m.Meta.Role != gossip.RoleManager || m.Meta.Raft == "" || m.State != gossip.StateAlive || known[raft.ServerID(m.Meta.ID)] {
					continue
				}
				if c.isRemoved(raft.ServerID(m.Meta.ID)) {
					continue // removed by the operator while alive (operator.go)
				}
				err := c.raft.AddVoter(raft.ServerID(m.Meta.ID), raft.ServerAddress(m.Meta.Raft), 0, 5*time.Second).Error()
				c.log.Info("adding manager to the raft group", "manager", m.Meta.ID, "raft", m.Meta.Raft, "err", err)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-events:
		case <-t.C:
		}
	}
}

// Raft returns the underlying Raft instance (for status and tests).
func (c *Cluster) Raft() *raft.Raft { return c.raft }

// Gossip returns the replica's gossip membership.
func (c *Cluster) Gossip() *gossip.Gossip { return c.gossip }

// Name returns the replica's name.
func (c *Cluster) Name() string { return c.cfg.Name }

// RaftAddr returns the advertised Raft address.
func (c *Cluster) RaftAddr() string { return c.addr }

// State returns this replica's copy of the pool state (possibly behind the leader's).
func (c *Cluster) State() fsm.State { return c.fsm.State() }

// ConsistentState returns the leader's state after a Raft barrier: every
// change committed before the call is in it, so a read served from it is
// linearizable. A deposed leader cannot complete the barrier (it needs a
// majority), so it answers an error rather than an old state. It fails on
// a replica that is not the leader.
func (c *Cluster) ConsistentState(ctx context.Context) (fsm.State, error) {
	if !c.IsLeader() {
		return fsm.State{}, fmt.Errorf("cluster: replica %s: %w", c.cfg.Name, raft.ErrNotLeader)
	}
	if h, halted := c.fsm.Halted(); halted {
		return fsm.State{}, fmt.Errorf("cluster: replica %s: %w: %v", c.cfg.Name, fsm.ErrHalted, h)
	}
	timeout := applyTimeout
	if d, ok := ctx.Deadline(); ok {
		timeout = min(timeout, time.Until(d))
	}
	if err := c.raft.Barrier(timeout).Error(); err != nil {
		return fsm.State{}, fmt.Errorf("cluster: replica %s: barrier: %w", c.cfg.Name, err)
	}
	return c.fsm.State(), nil
}

// Wait returns this replica's state once it has applied the entry after
// index `after` (for example a write's Result.Index-1), or ctx's error.
func (c *Cluster) Wait(ctx context.Context, after uint64) (fsm.State, error) {
	return c.fsm.Wait(ctx, after)
}

// FSM returns the replica's state machine.
func (c *Cluster) FSM() *fsm.FSM { return c.fsm }

// IsLeader reports whether this replica is the Raft leader.
func (c *Cluster) IsLeader() bool { return c.raft.State() == raft.Leader }

// Leader returns the leader's name and HTTP base URL, if a leader is known
// and gossip has its address.
func (c *Cluster) Leader() (name, httpURL string, ok bool) {
	_, id := c.raft.LeaderWithID()
	if id == "" {
		return "", "", false
	}
	if id == raft.ServerID(c.cfg.Name) {
		return c.cfg.Name, c.cfg.HTTPURL, true
	}
	for _, m := range c.gossip.Members() {
		if m.Meta.ID == string(id) && m.Meta.Role == gossip.RoleManager {
			return m.Meta.ID, m.Meta.HTTP, m.Meta.HTTP != ""
		}
	}
	return string(id), "", false
}

// Managers returns the HTTP base URLs of the manager replicas gossip knows, this one first.
func (c *Cluster) Managers() []string {
	urls := []string{c.cfg.HTTPURL}
	for _, m := range c.gossip.Members() {
		if m.Meta.Role == gossip.RoleManager && m.Meta.ID != c.cfg.Name && m.Meta.HTTP != "" {
			urls = append(urls, m.Meta.HTTP)
		}
	}
	return urls
}

// Frontends returns the HTTP base URLs of the frontends gossip knows alive
// (not leaving), in gossip's order.
func (c *Cluster) Frontends() []string { return c.gossip.HTTPURLs(gossip.RoleFrontend) }

// Close leaves gossip, stops leader work, shuts Raft down and closes its
// stores. It does not remove the replica from the Raft configuration.
func (c *Cluster) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return c.closeResult
	}
	c.closed = true
	c.mu.Unlock()
	close(c.stop)
	c.wg.Wait()
	gerr := c.gossip.Close()
	rerr := c.raft.Shutdown().Error()
	terr := c.transport.Close()
	serr := c.store.Close()
	err := errors.Join(gerr, rerr, terr, serr)
	c.mu.Lock()
	c.closeResult = err
	c.mu.Unlock()
	c.log.Info("manager replica stopped")
	return err
}
