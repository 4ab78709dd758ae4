package gossip

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
)

// Errors returned by this package.
var (
	// ErrInvalidConfig wraps every configuration or metadata problem found by New or UpdateMeta.
	ErrInvalidConfig = errors.New("gossip: invalid config")
	// ErrInvalidKey is returned by New when Config.SecretKey is not 16, 24 or 32 bytes.
	ErrInvalidKey = errors.New("gossip: secret key must be 16, 24 or 32 bytes (AES-128, AES-192 or AES-256)")
	// ErrMetaTooLarge is returned when the encoded Meta exceeds memberlist.MetaMaxSize.
	ErrMetaTooLarge = errors.New("gossip: encoded metadata exceeds memberlist.MetaMaxSize")
	// ErrLeft is returned by UpdateMeta after Leave.
	ErrLeft = errors.New("gossip: member has left the cluster")
	// ErrClosed is returned by operations after Close.
	ErrClosed = errors.New("gossip: closed")
)

// DefaultBindAddr is used when Config.BindAddr is blank.
const DefaultBindAddr = "0.0.0.0:7946"

// maxQueuedEvents bounds each subscriber's backlog; see Subscribe.
const maxQueuedEvents = 1024

// Config configures a Gossip member.
type Config struct {
	// Name is the memberlist node name, unique in the cluster. If blank, it
	// defaults to Meta.ID.
	Name string
	// BindAddr is the IP:port to listen on for gossip, TCP and UDP. Port 0
	// picks a free port; Addr reports the one chosen. If blank, it defaults
	// to DefaultBindAddr.
	BindAddr string
	// AdvertiseAddr is the optional IP:port other members use to reach this
	// one. If blank, memberlist derives it from BindAddr (a private IP when
	// binding 0.0.0.0). A blank or 0 port means the bound port; a fixed port
	// cannot be combined with BindAddr port 0.
	AdvertiseAddr string
	// Join lists seed members (host:port). New returns at once; joining runs
	// in the background and is retried with exponential backoff, logging each
	// failure, until one seed answers or the member leaves or closes.
	// Joined reports success. A member's own address may be in the list.
	Join []string
	// SecretKey, if set, encrypts all gossip with AES-GCM. It must be 16, 24
	// or 32 bytes and the same on every member; members with another key
	// (or none) cannot join.
	SecretKey []byte
	// Meta is what this member advertises. Meta.ID and Meta.Role are required.
	Meta Meta
	// Fast selects short test timings (probe every 500 ms within 300 ms,
	// suspicion timeout 2-6 s: 4 × max(1, log10(members)) × 0.5 s, up to
	// three times that until others confirm), so a dead member is declared
	// within a few seconds on loopback, and a member starved of CPU for a
	// few hundred milliseconds on a busy machine is not. Otherwise
	// memberlist.DefaultLANConfig timings are used.
	Fast bool
}

// Gossip is this process's membership in the cluster. Its methods are safe
// for concurrent use.
type Gossip struct {
	log          *slog.Logger
	list         *memberlist.Memberlist
	addr         string        // advertised gossip host:port
	leaveTimeout time.Duration // bound on the Leave done by Close
	updateWait   time.Duration // how long UpdateMeta waits for its broadcast
	joined       chan struct{} // closed when a Join seed answered (or there were none)

	stopJoin     chan struct{} // closed by stopJoining to end joinLoop
	stopJoinOnce sync.Once
	done         chan struct{} // closed (under mu) by Close/kill to stop subscriber goroutines
	wg           sync.WaitGroup

	// opMu serialises UpdateMeta, Leave, Close and kill, and guards left and closed.
	opMu   sync.Mutex
	left   bool
	closed bool

	// metaMu guards meta. It is separate from opMu because memberlist reads
	// the metadata (NodeMeta) from inside UpdateNode, called under opMu.
	metaMu sync.Mutex
	meta   []byte // encoded wireMeta advertised by this member

	// mu guards members and subs. It is taken inside memberlist's event
	// callbacks, so nothing may call into memberlist while holding it.
	mu      sync.Mutex
	members map[string]Member // keyed by node name; alive and leaving members
	subs    map[*subscriber]struct{}
}

// New creates the memberlist, starts the background join (if Config.Join
// is set) and returns the member. log may be nil to discard logs.
func New(cfg Config, log *slog.Logger) (*Gossip, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("component", "gossip")

	mc, err := memberlistConfig(cfg)
	if err != nil {
		return nil, err
	}
	meta, err := encodeMeta(wireMeta{Meta: cfg.Meta}, memberlist.MetaMaxSize)
	if err != nil {
		return nil, err
	}

	g := &Gossip{
		log:          log,
		leaveTimeout: 4 * time.Second, // Consul waits about 1 s for a leave to spread; 4 s bounds shutdown when every peer leaves at once
		updateWait:   5 * time.Second,
		joined:       make(chan struct{}),
		stopJoin:     make(chan struct{}),
		done:         make(chan struct{}),
		meta:         meta,
		members:      make(map[string]Member),
		subs:         make(map[*subscriber]struct{}),
	}
	backoff, maxBackoff := 500*time.Millisecond, 30*time.Second
	if cfg.Fast {
		g.leaveTimeout, g.updateWait = 3*time.Second, 3*time.Second
		backoff, maxBackoff = 50*time.Millisecond, time.Second
	}
	mc.Delegate = metaDelegate{g}
	mc.Events = eventDelegate{g}
	mc.Logger = newStdLogger(log)

	// Create reports the local node to mc.Events before returning, which
	// is why g must be ready first.
	list, err := memberlist.Create(mc)
	if err != nil {
		return nil, fmt.Errorf("gossip: start memberlist on %s: %w", mc.BindAddr, err)
	}
	g.list = list
	// The local node's address never changes after Create; read it once
	// rather than through LocalNode's pointer later.
	g.addr = list.LocalNode().Address()
	log.Info("gossip started", "name", mc.Name, "addr", g.addr,
		"role", cfg.Meta.Role, "encrypted", len(cfg.SecretKey) > 0)

	if len(cfg.Join) == 0 {
		close(g.joined)
	} else {
		seeds := slices.Clone(cfg.Join)
		g.wg.Add(1)
		go g.joinLoop(seeds, backoff, maxBackoff)
	}
	return g, nil
}

// memberlistConfig validates cfg and translates it.
func memberlistConfig(cfg Config) (*memberlist.Config, error) {
	if err := cfg.Meta.validate(); err != nil {
		return nil, err
	}
	if len(cfg.SecretKey) > 0 {
		if err := memberlist.ValidateKey(cfg.SecretKey); err != nil {
			return nil, fmt.Errorf("%w, got %d", ErrInvalidKey, len(cfg.SecretKey))
		}
	}
	for _, s := range cfg.Join {
		if _, _, err := net.SplitHostPort(s); err != nil {
			return nil, fmt.Errorf("%w: Join address %q: %v", ErrInvalidConfig, s, err)
		}
	}

	var mc *memberlist.Config
	if cfg.Fast {
		mc = memberlist.DefaultLocalConfig()
		mc.ProbeInterval = 500 * time.Millisecond
		mc.ProbeTimeout = 300 * time.Millisecond
		mc.SuspicionMult = 4
		mc.SuspicionMaxTimeoutMult = 3
		mc.GossipInterval = 50 * time.Millisecond
		mc.PushPullInterval = 2 * time.Second
		mc.GossipToTheDeadTime = 2 * time.Second
	} else {
		mc = memberlist.DefaultLANConfig()
	}

	mc.Name = cfg.Name
	if mc.Name == "" {
		mc.Name = cfg.Meta.ID
	}

	bind := cfg.BindAddr
	if bind == "" {
		bind = DefaultBindAddr
	}
	host, port, err := splitIPPort("BindAddr", bind)
	if err != nil {
		return nil, err
	}
	if host == "" {
		host = "0.0.0.0"
	}
	mc.BindAddr, mc.BindPort = host, port

	// memberlist advertises the bound port when AdvertisePort is 0 with
	// BindPort 0 (Create overwrites it), and the bind port otherwise.
	mc.AdvertiseAddr, mc.AdvertisePort = "", port
	if cfg.AdvertiseAddr != "" {
		host, aport, err := splitIPPort("AdvertiseAddr", cfg.AdvertiseAddr)
		if err != nil {
			return nil, err
		}
		if host == "" {
			return nil, fmt.Errorf("%w: AdvertiseAddr %q has no IP", ErrInvalidConfig, cfg.AdvertiseAddr)
		}
		if aport != 0 && port == 0 {
			return nil, fmt.Errorf("%w: AdvertiseAddr port %d needs a fixed BindAddr port", ErrInvalidConfig, aport)
		}
		mc.AdvertiseAddr = host
		if aport != 0 {
			mc.AdvertisePort = aport
		}
	}

	mc.SecretKey = slices.Clone(cfg.SecretKey)
	return mc, nil
}

// splitIPPort parses "IP:port" (the IP may be blank). memberlist needs IP
// literals: it would silently bind every interface for a host name.
func splitIPPort(field, s string) (string, int, error) {
	host, p, err := net.SplitHostPort(s)
	if err != nil {
		return "", 0, fmt.Errorf("%w: %s %q: %v", ErrInvalidConfig, field, s, err)
	}
	port, err := strconv.ParseUint(p, 10, 16)
	if err != nil {
		return "", 0, fmt.Errorf("%w: %s %q: bad port", ErrInvalidConfig, field, s)
	}
	if host != "" && net.ParseIP(host) == nil {
		return "", 0, fmt.Errorf("%w: %s %q: host must be an IP address", ErrInvalidConfig, field, s)
	}
	return host, int(port), nil
}

// Addr returns the gossip host:port other members can join, with the real
// port when BindAddr asked for port 0.
func (g *Gossip) Addr() string { return g.addr }

// Joined returns a channel that is closed once a Config.Join seed has
// answered, or at once if Config.Join was empty.
func (g *Gossip) Joined() <-chan struct{} { return g.joined }

// Members returns the live members this process knows of, itself included,
// sorted by Meta.ID (then Name). Their State is StateAlive or StateLeaving.
func (g *Gossip) Members() []Member {
	g.mu.Lock()
	out := make([]Member, 0, len(g.members))
	for _, m := range g.members {
		out = append(out, m)
	}
	g.mu.Unlock()
	slices.SortFunc(out, func(a, b Member) int {
		if c := strings.Compare(a.Meta.ID, b.Meta.ID); c != 0 {
			return c
		}
		return strings.Compare(a.Name, b.Name)
	})
	return out
}

// HTTPURLs returns the HTTP base URLs of the alive (not leaving) members
// with role, in Members' order.
func (g *Gossip) HTTPURLs(role Role) []string {
	var urls []string
	for _, m := range g.Members() {
		if m.Meta.Role == role && m.State == StateAlive && m.Meta.HTTP != "" {
			urls = append(urls, m.Meta.HTTP)
		}
	}
	return urls
}

// Subscribe returns a channel that receives, in order, every membership
// event observed after the call, and a cancel function that stops delivery
// and closes the channel. The channel is also closed by Close.
//
// memberlist is never blocked by a slow subscriber: events wait in a
// per-subscriber queue. If a subscriber falls more than 1024 events behind,
// newer events are dropped for it (and a warning logged) until it catches
// up; it should then resynchronise with Members. To start from a complete
// view, call Subscribe first, then Members, and treat events as idempotent.
func (g *Gossip) Subscribe() (<-chan Event, func()) {
	s := &subscriber{
		wake: make(chan struct{}, 1),
		out:  make(chan Event),
		stop: make(chan struct{}),
	}
	// Registering under g.mu orders this against shutdownLocked, which
	// closes g.done under g.mu before waiting on g.wg.
	g.mu.Lock()
	select {
	case <-g.done:
		g.mu.Unlock()
		close(s.out)
		return s.out, func() {}
	default:
	}
	g.subs[s] = struct{}{}
	g.wg.Add(1)
	g.mu.Unlock()
	go g.deliver(s)
	cancel := func() {
		s.stopOnce.Do(func() { close(s.stop) })
		g.mu.Lock()
		delete(g.subs, s)
		g.mu.Unlock()
	}
	return s.out, cancel
}

// UpdateMeta replaces the advertised metadata and gossips it, waiting a few
// seconds for the broadcast to go out. On a timeout error the new metadata
// is still in effect locally and keeps spreading.
func (g *Gossip) UpdateMeta(m Meta) error {
	if err := m.validate(); err != nil {
		return err
	}
	b, err := encodeMeta(wireMeta{Meta: m}, memberlist.MetaMaxSize)
	if err != nil {
		return err
	}
	g.opMu.Lock()
	defer g.opMu.Unlock()
	if g.closed {
		return ErrClosed
	}
	if g.left {
		// memberlist would re-announce the node as alive.
		return ErrLeft
	}
	g.setMeta(b)
	if err := g.list.UpdateNode(g.updateWait); err != nil {
		return fmt.Errorf("gossip: update metadata: %w", err)
	}
	return nil
}

// Leave leaves the cluster gracefully: it announces the leave, then
// broadcasts memberlist's leave message, waiting up to timeout in total
// (0 waits as long as it takes). The others report EventLeave, not
// EventFail. A member cannot rejoin after leaving; call Close next.
// Leave is idempotent.
func (g *Gossip) Leave(timeout time.Duration) error {
	g.opMu.Lock()
	defer g.opMu.Unlock()
	return g.leaveLocked(timeout)
}

// leaveLocked implements Leave; g.opMu must be held.
func (g *Gossip) leaveLocked(timeout time.Duration) error {
	if g.closed {
		return ErrClosed
	}
	if g.left {
		return nil
	}
	g.left = true
	g.stopJoining()

	// Announce the leave first (see the package's design note). Half the
	// budget for the announcement, the rest for memberlist's Leave.
	g.metaMu.Lock()
	w, err := decodeMeta(g.meta)
	g.metaMu.Unlock()
	if err != nil {
		return err // cannot happen: we encoded it
	}
	w.Leaving = true
	b, err := encodeMeta(w, memberlist.MetaMaxSize)
	if err != nil {
		return err
	}
	g.setMeta(b)
	// UpdateNode can wait out its whole budget if the last other member
	// leaves while it waits: memberlist never gossips to members that have
	// left, and checks for live members only once, before waiting.
	start := time.Now()
	if err := g.list.UpdateNode(timeout / 2); err != nil {
		// Carry on: the leave still happens, it may just be seen as a failure.
		g.log.Warn("leave announcement not confirmed", "err", err)
	}
	rest := time.Duration(0)
	if timeout > 0 {
		rest = max(timeout-time.Since(start), time.Millisecond)
	}
	if err := g.list.Leave(rest); err != nil {
		return fmt.Errorf("gossip: leave: %w", err)
	}
	g.log.Info("left cluster")
	return nil
}

// Close leaves the cluster (bounded by a few seconds) unless Leave was
// already called, shuts memberlist down, stops this package's goroutines
// and waits for them, closing all Subscribe channels. It returns any leave
// error; the member is shut down regardless. Close is idempotent.
func (g *Gossip) Close() error {
	g.opMu.Lock()
	defer g.opMu.Unlock()
	if g.closed {
		return nil
	}
	var errs []error
	if !g.left {
		errs = append(errs, g.leaveLocked(g.leaveTimeout))
	}
	g.shutdownLocked()
	return errors.Join(errs...)
}

// kill stops the member without leaving, as a crash would: the others
// declare it dead. Tests only.
func (g *Gossip) kill() {
	g.opMu.Lock()
	defer g.opMu.Unlock()
	if !g.closed {
		g.shutdownLocked()
	}
}

// shutdownLocked stops everything; g.opMu must be held.
func (g *Gossip) shutdownLocked() {
	g.closed = true
	g.stopJoining()
	g.mu.Lock()
	close(g.done)
	g.mu.Unlock()
	if err := g.list.Shutdown(); err != nil {
		g.log.Warn("memberlist shutdown", "err", err)
	}
	g.wg.Wait()
	g.log.Info("gossip stopped")
}

// stopJoining ends joinLoop if it is still running.
func (g *Gossip) stopJoining() {
	g.stopJoinOnce.Do(func() { close(g.stopJoin) })
}

// setMeta replaces the metadata memberlist reads through NodeMeta.
func (g *Gossip) setMeta(b []byte) {
	g.metaMu.Lock()
	g.meta = b
	g.metaMu.Unlock()
}

// joinLoop contacts the seeds until one answers or stopJoin is closed,
// doubling the wait after each failure up to maxBackoff.
func (g *Gossip) joinLoop(seeds []string, backoff, maxBackoff time.Duration) {
	defer g.wg.Done()
	for attempt := 1; ; attempt++ {
		select {
		case <-g.stopJoin:
			return
		default:
		}
		n, err := g.list.Join(seeds)
		if n > 0 {
			if err != nil {
				g.log.Warn("some seeds did not answer", "seeds", seeds, "err", err)
			}
			g.log.Info("joined cluster", "seeds", seeds, "answered", n, "attempt", attempt)
			close(g.joined)
			return
		}
		g.log.Warn("join failed; will retry", "seeds", seeds, "attempt", attempt, "retry_in", backoff, "err", err)
		t := time.NewTimer(backoff)
		select {
		case <-t.C:
		case <-g.stopJoin:
			t.Stop()
			return
		}
		backoff = min(2*backoff, maxBackoff)
	}
}

// observe applies one memberlist notification to the member table and
// queues the resulting event. It runs inside memberlist's callbacks (which
// memberlist never calls concurrently) with memberlist's node lock held: it
// must not block or call into memberlist.
func (g *Gossip) observe(kind EventKind, n *memberlist.Node) {
	w, err := decodeMeta(n.Meta)
	if err != nil {
		g.log.Warn("ignoring member with unreadable metadata", "name", n.Name, "addr", n.Address(), "err", err)
		return
	}
	m := Member{Name: n.Name, Meta: w.Meta, Addr: n.Address(), State: StateAlive}
	if w.Leaving {
		m.State = StateLeaving
	}

	g.mu.Lock()
	defer g.mu.Unlock()
	_, known := g.members[n.Name]
	switch kind {
	case EventJoin, EventUpdate:
		g.members[n.Name] = m
		if !known {
			kind = EventJoin // first readable metadata counts as the join
		}
	case EventLeave:
		if !known {
			return // never reported as joined
		}
		delete(g.members, n.Name)
		kind, m.State = EventFail, StateDead
		if w.Leaving {
			kind, m.State = EventLeave, StateLeft
		}
	}

	attrs := []any{"name", m.Name, "id", m.Meta.ID, "role", m.Meta.Role, "addr", m.Addr, "state", m.State}
	if kind == EventUpdate {
		g.log.Debug("member "+kind.String(), attrs...)
	} else {
		g.log.Info("member "+kind.String(), attrs...)
	}
	ev := Event{Kind: kind, Member: m}
	for s := range g.subs {
		if !s.push(ev) {
			g.log.Warn("subscriber too far behind; event dropped", "event", kind, "name", m.Name)
		}
	}
}

// subscriber is one Subscribe channel and its backlog.
type subscriber struct {
	mu    sync.Mutex // guards queue
	queue []Event

	wake     chan struct{} // capacity 1: "queue is non-empty"
	out      chan Event
	stop     chan struct{} // closed by cancel
	stopOnce sync.Once
}

// push queues ev without blocking; it reports false if the backlog is full.
func (s *subscriber) push(ev Event) bool {
	s.mu.Lock()
	if len(s.queue) >= maxQueuedEvents {
		s.mu.Unlock()
		return false
	}
	s.queue = append(s.queue, ev)
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
	return true
}

// deliver moves s's backlog to s.out until s is cancelled or g is closed,
// then closes s.out.
func (g *Gossip) deliver(s *subscriber) {
	defer g.wg.Done()
	defer close(s.out)
	for {
		s.mu.Lock()
		if len(s.queue) == 0 {
			s.mu.Unlock()
			select {
			case <-s.wake:
				continue
			case <-s.stop:
				return
			case <-g.done:
				return
			}
		}
		ev := s.queue[0]
		s.queue[0] = Event{}
		s.queue = s.queue[1:]
		s.mu.Unlock()
		select {
		case s.out <- ev:
		case <-s.stop:
			return
		case <-g.done:
			return
		}
	}
}

// metaDelegate gives memberlist this member's metadata. The other
// memberlist.Delegate methods are unused.
type metaDelegate struct{ g *Gossip }

// NodeMeta returns the encoded metadata; New and UpdateMeta keep it within limit.
func (d metaDelegate) NodeMeta(limit int) []byte {
	d.g.metaMu.Lock()
	defer d.g.metaMu.Unlock()
	return slices.Clone(d.g.meta)
}

func (metaDelegate) NotifyMsg([]byte)                           {}
func (metaDelegate) GetBroadcasts(overhead, limit int) [][]byte { return nil }
func (metaDelegate) LocalState(join bool) []byte                { return nil }
func (metaDelegate) MergeRemoteState(buf []byte, join bool)     {}

// eventDelegate forwards memberlist's membership callbacks to observe.
type eventDelegate struct{ g *Gossip }

func (d eventDelegate) NotifyJoin(n *memberlist.Node)   { d.g.observe(EventJoin, n) }
func (d eventDelegate) NotifyLeave(n *memberlist.Node)  { d.g.observe(EventLeave, n) }
func (d eventDelegate) NotifyUpdate(n *memberlist.Node) { d.g.observe(EventUpdate, n) }
