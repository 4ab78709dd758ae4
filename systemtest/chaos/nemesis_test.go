package chaos

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/memcache/memcache/internal/history"
)

// fault is one kind of the nemesis's faults. inject breaks something and
// returns the function that heals it.
type fault struct {
	name string
	// partition marks the faults that need namespaces (nftables between
	// hosts); on loopback they are not scheduled.
	partition bool
	inject    func(n *nemesis) (heal func(), what string)
}

var faults = []fault{
	{name: "kill-leader", inject: (*nemesis).killLeader},
	{name: "pause-manager", inject: (*nemesis).pauseManager},
	{name: "kill-node", inject: (*nemesis).killNode},
	{name: "restart-frontend", inject: (*nemesis).restartFrontend},
	{name: "partition-halves", partition: true, inject: (*nemesis).partitionHalves},
	{name: "isolate-leader", partition: true, inject: (*nemesis).isolateLeader},
	{name: "cut-frontend", partition: true, inject: (*nemesis).cutFrontend},
	{name: "one-way", partition: true, inject: (*nemesis).oneWay},
	{name: "resize-storm", inject: (*nemesis).resizeStorm},
	{name: "clear-caches", inject: (*nemesis).clearCaches},
}

// nemesis injects faults on a schedule drawn from its seed: a fault, held
// for a while, healed, a pause, the next.
type nemesis struct {
	s   *system
	rec *history.Recorder
	rng *rand.Rand

	mu     sync.Mutex
	byKind map[string]int
	log    []string
}

func newNemesis(s *system, rec *history.Recorder, seed uint64) *nemesis {
	return &nemesis{s: s, rec: rec, rng: rand.New(rand.NewPCG(seed, seed^0x6d656d6361636865)), byKind: map[string]int{}}
}

func (n *nemesis) logf(format string, args ...any) {
	line := fmt.Sprintf("%9.3fs nemesis: ", n.rec.Now().Seconds()) + fmt.Sprintf(format, args...)
	n.mu.Lock()
	n.log = append(n.log, line)
	n.mu.Unlock()
	n.s.t.Log(line)
}

// available returns the faults this system can inject.
func (n *nemesis) available() []fault {
	return slices.DeleteFunc(slices.Clone(faults), func(f fault) bool { return f.partition && n.s.net == nil })
}

// run injects faults until ctx is done, then heals what is broken.
func (n *nemesis) run(ctx context.Context) {
	fs := n.available()
	for {
		if !sleep(ctx, time.Duration(1000+n.rng.IntN(3000))*time.Millisecond) {
			return
		}
		f := fs[n.rng.IntN(len(fs))]
		heal, what := f.inject(n)
		n.mu.Lock()
		n.byKind[f.name]++
		n.mu.Unlock()
		n.logf("%s: %s", f.name, what)
		hold := time.Duration(2000+n.rng.IntN(6000)) * time.Millisecond
		sleep(ctx, hold)
		if heal != nil {
			heal()
			n.logf("healed %s", f.name)
		}
		if ctx.Err() != nil {
			return
		}
	}
}

// sleep waits d or until ctx is done, and reports whether ctx is still
// live. The nemesis's schedule is time itself (how long a fault is held),
// not a condition to wait for.
func sleep(ctx context.Context, d time.Duration) bool {
	select {
	case <-ctx.Done():
		return false
	case <-time.After(d):
		return true
	}
}

func (n *nemesis) pick(ms []*machine) *machine { return ms[n.rng.IntN(len(ms))] }

// running returns the machines of ms whose process runs.
func running(ms []*machine) []*machine {
	return slices.DeleteFunc(slices.Clone(ms), func(m *machine) bool { return m.process() == nil })
}

func (n *nemesis) restart(m *machine) func() {
	return func() { n.s.start(m) }
}

func (n *nemesis) killLeader() (func(), string) {
	m, err := n.s.leader()
	if err != nil {
		m = n.pick(running(n.s.managers))
		n.s.kill(m)
		return n.restart(m), fmt.Sprintf("no single leader (%v): killed %s", err, m)
	}
	n.s.kill(m)
	return n.restart(m), "kill -9 " + m.name
}

func (n *nemesis) pauseManager() (func(), string) {
	ms := running(n.s.managers)
	m := n.pick(ms)
	p := m.process()
	p.Stop()
	return p.Cont, "SIGSTOP " + m.name
}

func (n *nemesis) killNode() (func(), string) {
	ms := running(n.s.nodes)
	if len(ms) == 0 {
		return nil, "no node runs"
	}
	m := n.pick(ms)
	n.s.kill(m)
	return n.restart(m), "kill -9 " + m.name
}

func (n *nemesis) restartFrontend() (func(), string) {
	m := n.pick(n.s.frontends)
	if n.rng.IntN(2) == 0 {
		n.s.kill(m)
		return n.restart(m), "kill -9 " + m.name + " (restarted when healed)"
	}
	m.mu.Lock()
	p := m.proc
	m.proc = nil
	m.mu.Unlock()
	if p != nil {
		p.Terminate(20 * time.Second)
	}
	n.s.start(m)
	return nil, "SIGTERM and restart " + m.name
}

// block cuts every pair of machines between a and b, both ways.
func block(a, b []*machine) {
	for _, x := range a {
		for _, y := range b {
			x.host.Block(y.host)
		}
	}
}

func (n *nemesis) healNet() {
	for _, m := range n.s.all() {
		m.host.UnblockAll()
	}
}

func names(ms []*machine) string {
	var s []string
	for _, m := range ms {
		s = append(s, m.name)
	}
	return strings.Join(s, ",")
}

// partitionHalves splits the managers into a minority of one and a
// majority of two; every other machine goes to one side at random.
func (n *nemesis) partitionHalves() (func(), string) {
	all := n.s.all()
	n.rng.Shuffle(len(all), func(i, j int) { all[i], all[j] = all[j], all[i] })
	var minority, majority []*machine
	managers := 0
	for _, m := range all {
		if m.role == "manager" {
			if managers == 0 {
				minority = append(minority, m)
			} else {
				majority = append(majority, m)
			}
			managers++
			continue
		}
		if n.rng.IntN(2) == 0 {
			minority = append(minority, m)
		} else {
			majority = append(majority, m)
		}
	}
	block(minority, majority)
	return n.healNet, fmt.Sprintf("partition [%s] | [%s]", names(minority), names(majority))
}

func (n *nemesis) isolateLeader() (func(), string) {
	m, err := n.s.leader()
	if err != nil {
		m = n.pick(n.s.managers)
	}
	others := slices.DeleteFunc(n.s.all(), func(x *machine) bool { return x == m })
	block([]*machine{m}, others)
	return n.healNet, "isolate " + m.name + " (leader)"
}

func (n *nemesis) cutFrontend() (func(), string) {
	m := n.pick(n.s.frontends)
	block([]*machine{m}, n.s.managers)
	return n.healNet, "cut " + m.name + " from the managers"
}

// oneWay drops what one manager sends to the others (it still hears them),
// or what it receives from them.
func (n *nemesis) oneWay() (func(), string) {
	m := n.pick(n.s.managers)
	out := n.rng.IntN(2) == 0
	for _, o := range n.s.managers {
		if o == m {
			continue
		}
		if out {
			m.host.BlockOutgoing(o.host)
		} else {
			m.host.BlockIncoming(o.host)
		}
	}
	if out {
		return n.healNet, m.name + " cannot send to the other managers"
	}
	return n.healNet, m.name + " cannot hear the other managers"
}

// resizeStorm asks random replicas for several pool sizes in a row.
func (n *nemesis) resizeStorm() (func(), string) {
	var sizes []string
	for range 2 + n.rng.IntN(4) {
		size := 1 + n.rng.IntN(numNodes)
		m := n.pick(n.s.managers)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+m.hostPort(managerHTTPPort)+"/v1/pool/resize",
			bytes.NewReader(fmt.Appendf(nil, `{"nodes":%d}`, size)))
		req.Header.Set("Content-Type", "application/json")
		code, _, err := n.s.do(req, nil)
		cancel()
		sizes = append(sizes, fmt.Sprintf("%d via %s: %d %v", size, m, code, errOrNil(err)))
	}
	return nil, "resize " + strings.Join(sizes, "; ")
}

func errOrNil(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

func (n *nemesis) clearCaches() (func(), string) {
	m := n.pick(n.s.managers)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+m.hostPort(managerHTTPPort)+"/v1/pool/clear", nil)
	code, _, err := n.s.do(req, nil)
	return nil, fmt.Sprintf("clear caches via %s: %d %v", m, code, errOrNil(err))
}

// healAll undoes every fault that may still hold: partitions lifted,
// paused processes resumed, every role running.
func (n *nemesis) healAll() {
	if n.s.net != nil {
		n.healNet()
	}
	for _, m := range n.s.all() {
		if p := m.process(); p != nil {
			p.Cont()
			select {
			case <-p.Exited():
				m.mu.Lock()
				m.proc = nil
				m.mu.Unlock()
				n.logf("%s had exited (%v); restarting it", m, p.Err())
			default:
				continue
			}
		}
		n.s.start(m)
	}
}
