package systemtest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/memcache/memcache/fsm"
	"github.com/memcache/memcache/internal/role"
	"github.com/memcache/memcache/internal/testcluster"
	"github.com/memcache/memcache/internal/waitfor"
	"github.com/memcache/memcache/node"
	"github.com/memcache/memcache/region"
)

// nodeClient talks to the cache nodes of tc as a frontend does.
func nodeClient(tc *testcluster.Cluster) *node.Client { return tc.NodeClient() }

// nodeGet asks key's owner in st for it and reports whether it was a hit.
func nodeGet(nodes *node.Client, st fsm.State, key string) (hit bool, err error) {
	m, ok := st.Member(st.Regions[region.Of(key)])
	if !ok {
		return false, fmt.Errorf("no owner")
	}
	e, err := nodes.Get(context.Background(), m.HTTP, key, st.Epoch, node.GetOptions{})
	if err != nil {
		return false, err
	}
	io.Copy(io.Discard, e.Body)
	e.Body.Close()
	return true, nil
}

// nodePut caches a one-byte value under key at its owner in st.
func nodePut(nodes *node.Client, st fsm.State, key string) error {
	m, ok := st.Member(st.Regions[region.Of(key)])
	if !ok {
		return fmt.Errorf("no owner")
	}
	v := st.View()
	return nodes.Put(context.Background(), m.HTTP, key, []byte("x"), node.PutOptions{Epoch: v.Epoch, Generation: v.Generation()})
}

// traffic runs GETs against the pool until stopped: misses (keys never
// cached) or hits (keys it puts first).
type traffic struct {
	stop atomic.Bool
	wg   sync.WaitGroup
}

func startTraffic(t *testing.T, tc *testcluster.Cluster, m *role.Manager, hits bool) *traffic {
	tr := &traffic{}
	for w := range 3 {
		tr.wg.Add(1)
		go func() {
			defer tr.wg.Done()
			nodes := nodeClient(tc)
			for i := 0; !tr.stop.Load(); i++ {
				st := m.Cluster().State()
				if hits {
					key := fmt.Sprintf("hot-%d-%d", w, i%16)
					if _, err := nodeGet(nodes, st, key); errors.Is(err, node.ErrMiss) {
						nodePut(nodes, st, key)
					}
				} else {
					nodeGet(nodes, st, fmt.Sprintf("cold-%d-%d", w, i))
				}
			}
		}()
	}
	t.Cleanup(tr.halt)
	return tr
}

func (tr *traffic) halt() {
	tr.stop.Store(true)
	tr.wg.Wait()
}

func setScaling(t *testing.T, m *role.Manager, body string) {
	t.Helper()
	if code := testcluster.Write(t, "PUT", m.URL()+"/v1/config/scaling", []byte(body), nil); code != 200 {
		t.Fatalf("set scaling %s: %d", body, code)
	}
}

func TestAutoScalerFollowsTheMissRateOnTheLeaderOnly(t *testing.T) {
	const interval = 1500 * time.Millisecond
	tc := testcluster.Start(t, testcluster.Options{Managers: 3, LocalNodes: true, DeadGrace: time.Hour,
		ScalerInterval: interval, ScrapeInterval: 200 * time.Millisecond, NodeArgs: []string{"--sample-interval", "200ms"}})
	ms := tc.Managers
	setScaling(t, tc.Follower(), `{"mode":"auto","max_miss_rate":0.5,"min_miss_rate":0.2,"expand_ratio":2,"shrink_ratio":0.5}`)

	// Only misses: the rate is 1 > 0.5, the pool grows 1 -> 2 (ceil(1 x 2)).
	start := time.Now()
	misses := startTraffic(t, tc, ms[0], false)
	waitfor.True(t, testcluster.Wait, "the pool to grow to 2", func() bool { return len(ms[0].Cluster().State().Members) == 2 })
	t.Logf("grew after %v (interval %v)", time.Since(start).Round(time.Millisecond), interval)
	misses.halt()

	// Only hits: the rate is 0 < 0.2, the seed's rule would shrink 2 -> 1,
	// but the shrink guard does not take it: at 1 node the pool measured
	// a miss rate of 1 > 0.5 (the grow's window), its estimate at 1 node.
	start = time.Now()
	hits := startTraffic(t, tc, ms[0], true)
	waitfor.True(t, testcluster.Wait, "the shrink to 1 not taken, with the estimate", func() bool {
		for _, d := range ms[0].Cluster().State().Decisions {
			if d.Nodes == 2 && d.Action == "none" && d.EstimateNodes == 1 && d.Estimate != nil && *d.Estimate > 0.5 {
				return true
			}
		}
		return false
	})
	t.Logf("shrink not taken after %v", time.Since(start).Round(time.Millisecond))
	if n := len(ms[0].Cluster().State().Members); n != 2 {
		t.Errorf("pool: got %d members, want 2 (the guard keeps it)", n)
	}

	// Both decisions are recorded, every one by the leader of its time.
	l := tc.WaitLeader()
	var st fsm.State
	waitfor.True(t, testcluster.Wait, "the grow and the guarded shrink to be recorded", func() bool {
		st = l.Cluster().State()
		var grew, guarded bool
		for _, d := range st.Decisions {
			grew = grew || (d.Action == "grow" && d.Applied && d.Nodes == 1 && d.Target == 2)
			guarded = guarded || (d.Action == "none" && d.Nodes == 2 && d.EstimateNodes == 1 && d.Estimate != nil)
		}
		return grew && guarded
	})
	for _, d := range st.Decisions {
		if d.By != l.Name() {
			t.Errorf("decision %+v taken by %s, not the leader %s", d, d.By, l.Name())
		}
	}

	// Leader failover during the run: the new leader's scaler takes over
	// within an interval, and the old one has stopped.
	old := l
	oldName := old.Name()
	tc.StopManager(old)
	nl := tc.WaitLeader()
	failedAt := time.Now()
	var decided fsm.Decision
	waitfor.True(t, testcluster.Wait, "a decision by the new leader", func() bool {
		ds := nl.Cluster().State().Decisions
		if len(ds) > 0 && ds[len(ds)-1].By == nl.Name() && ds[len(ds)-1].Time.After(failedAt) {
			decided = ds[len(ds)-1]
			return true
		}
		return false
	})
	t.Logf("new leader %s decided %v after the old leader stopped: %s", nl.Name(), time.Since(failedAt).Round(time.Millisecond), decided.Reason)
	for _, d := range nl.Cluster().State().Decisions {
		if d.By == oldName && d.Time.After(failedAt) {
			t.Errorf("the stopped leader decided after it stopped: %+v", d)
		}
	}

	// A policy change takes effect at the next tick, without a restart.
	hits.halt()
	changed := time.Now()
	setScaling(t, nl, `{"mode":"manual"}`)
	waitfor.True(t, testcluster.Wait, "a decision under the new policy", func() bool {
		ds := nl.Cluster().State().Decisions
		return len(ds) > 0 && ds[len(ds)-1].Time.After(changed) && ds[len(ds)-1].Mode == fsm.ModeManual && ds[len(ds)-1].Action == "none"
	})
}
