package cluster

import (
	"sync"

	gometrics "github.com/hashicorp/go-metrics"
	gmprometheus "github.com/hashicorp/go-metrics/prometheus"
	"github.com/prometheus/client_golang/prometheus"
)

// Raft and memberlist metrics.
//
// hashicorp/raft and hashicorp/memberlist report through the package-level
// functions of github.com/hashicorp/go-metrics (metrics.IncrCounter,
// metrics.MeasureSince, ...), which write to one process-global sink; there
// is no per-instance sink to give them. That global is imposed by the
// libraries, and this file is the one place that sets it: once per process,
// to a go-metrics Prometheus sink, which every manager replica's registry
// then collects (Collectors). Several replicas in one process (the tests,
// `memcache up`) share it, so each one's /metrics shows the process's Raft
// and memberlist series, summed over the replicas in it; a replica running
// alone in its process (a deployed manager) shows its own.
//
// Series never expire: their names are fixed and their labels are bounded
// (peer ids), and a counter must not vanish between scrapes. Go runtime
// figures come from the registry's Go collector, so go-metrics' own runtime
// sampling (an unstoppable goroutine) is off, and no hostname is added.
//
// raft-boltdb v2.3.0 reports through armon/go-metrics, a different global
// (see go.mod); its raft_boltdb_* series are not exported.

var (
	raftMetricsOnce sync.Once
	raftMetricsSink *gmprometheus.PrometheusSink // set once by raftMetrics
	raftMetricsErr  error
)

// raftMetrics installs the process's go-metrics sink the first time it is
// called and returns it as a Prometheus collector.
func raftMetrics() (prometheus.Collector, error) {
	raftMetricsOnce.Do(func() {
		sink, err := gmprometheus.NewPrometheusSinkFrom(gmprometheus.PrometheusOpts{
			// NewPrometheusSinkFrom registers the sink; a registry of its own
			// keeps it out of prometheus.DefaultRegisterer.
			Registerer: prometheus.NewRegistry(),
			Name:       "memcache_go_metrics_sink",
		})
		if err != nil {
			raftMetricsErr = err
			return
		}
		cfg := gometrics.DefaultConfig("")
		cfg.EnableHostname = false
		cfg.EnableRuntimeMetrics = false
		if _, err := gometrics.NewGlobal(cfg, sink); err != nil {
			raftMetricsErr = err
			return
		}
		raftMetricsSink = sink
	})
	return raftMetricsSink, raftMetricsErr
}

// Collectors returns the replica's Prometheus collectors: the process's
// Raft and memberlist series (see above) and the state machine's counts of
// entries it did not apply. The caller registers them.
func (c *Cluster) Collectors() []prometheus.Collector {
	cs := []prometheus.Collector{
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "memcache_manager_fsm_ignored_entries_total",
			Help: "Committed Raft entries of unknown ignorable types this replica skipped."},
			func() float64 { return float64(c.fsm.Stats().Ignored) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "memcache_manager_fsm_held_back_entries_total",
			Help: "Committed Raft entries not applied because the state machine halted."},
			func() float64 { return float64(c.fsm.Stats().HeldBack) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "memcache_manager_fsm_halted_index",
			Help: "Raft index of the entry that halted the state machine; 0 while it applies."},
			func() float64 {
				if h, ok := c.fsm.Halted(); ok {
					return float64(h.Index)
				}
				return 0
			}),
	}
	if sink, err := raftMetrics(); err != nil {
		c.log.Error("raft and memberlist metrics are not exported", "err", err)
	} else {
		cs = append(cs, sink)
	}
	return cs
}
