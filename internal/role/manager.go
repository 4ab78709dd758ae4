package role

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/cloudwatch"
	"github.com/go-chi/chi/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/memcache/memcache/auth"
	"github.com/memcache/memcache/cluster"
	"github.com/memcache/memcache/fsm"
	"github.com/memcache/memcache/gossip"
	"github.com/memcache/memcache/metrics"
	"github.com/memcache/memcache/node"
	"github.com/memcache/memcache/pki"
	"github.com/memcache/memcache/scaler"
	"github.com/memcache/memcache/web"
)

// ViewLease is the lease the managers grant cache nodes with each pool
// view (cluster.Config.ViewLease): the dead grace (its default if zero).
// Only the leader grants it, after a barrier, so a node cut off from the
// leader at t stops serving by t + lease, while the pool gives its regions
// away no sooner than t + gossip's detection + the dead grace. A lease no
// shorter lets nodes keep serving through a leader election that takes
// less than that.
func ViewLease(deadGrace time.Duration) time.Duration {
	if deadGrace <= 0 {
		deadGrace = scaler.DefaultDeadGrace
	}
	return deadGrace
}

// ManagerConfig configures one manager replica.
type ManagerConfig struct {
	// Name is the replica's Raft server ID and gossip id. Required.
	Name string
	// DataDir holds the Raft log, stable store and snapshots. Required.
	DataDir string
	// HTTPAddr is the host:port of the HTTP API, UI and raft status. If
	// blank, 127.0.0.1:0 (a free port).
	HTTPAddr string
	// AdvertiseHTTP is the base URL users reach the UI and admin API by. If
	// blank, http(s)://<the listener's address>.
	AdvertiseHTTP string
	// PublicTLS, if set, serves the UI and admin API over TLS.
	PublicTLS *tls.Config
	// TrustedProxies are reverse proxies whose X-Forwarded-Proto is
	// believed (the UI cookie is Secure behind an https proxy).
	TrustedProxies []netip.Prefix
	// ClusterAddr is the host:port of the listener other members call (the
	// watch, forwarded writes, and the public routes for forwarding). If
	// blank, 127.0.0.1:0.
	ClusterAddr string
	// AdvertiseCluster is the base URL members reach ClusterAddr by. If
	// blank, http(s)://<the listener's address>.
	AdvertiseCluster string
	// TLS, if set, is the replica's manager certificate of the cluster CA:
	// Raft and the cluster listener admit only peers with certificates of
	// that CA (Raft: only managers'), and the replica presents it on every
	// internal call. If nil, cluster traffic is plain and unauthenticated
	// (but for Secret).
	TLS *pki.TLS
	// RaftAddr is the host:port for Raft traffic. If blank, 127.0.0.1:0.
	RaftAddr string
	// RaftAdvertise is the host:port others dial for Raft. If blank, the
	// listener's address.
	RaftAdvertise string
	// Gossip configures the membership (bind and advertise addresses, seeds,
	// key, fast test timings); its Meta is filled in by the cluster. If
	// Gossip.BindAddr is blank, 127.0.0.1:0.
	Gossip gossip.Config
	// BootstrapExpect is how many managers that find each other by gossip
	// form the Raft group (1 for a single manager); ignored when DataDir
	// already holds Raft state. If zero, the replica never bootstraps and
	// waits to be added by a leader.
	BootstrapExpect int
	// Timing holds the Raft timeouts. If zero, cluster.DefaultTiming().
	Timing cluster.Timing
	// Secret is the cluster secret every cluster-internal call carries. If
	// blank, internal calls are not authenticated.
	Secret string
	// AdminToken is the bearer token of the admin API and the UI. If blank,
	// they are open.
	AdminToken string
	// Provisioner builds the replica's node provisioner. If nil, Static().
	Provisioner ProvisionerFunc
	// InitialNodes is the pool size the leader creates when the pool is
	// empty. If zero, 1.
	InitialNodes int
	// DeadGrace is how long a pool node may be missing from gossip before
	// its regions are reassigned. If zero, 10 s.
	DeadGrace time.Duration
	// AcquireTimeout bounds how long the pool waits for the provisioner to
	// supply nodes. If zero, scaler.PoolConfig's default (60 s).
	AcquireTimeout time.Duration
	// ReplaceTimeout bounds the wait for a failed member's replacement
	// before its regions go to the survivors (scaler.PoolConfig). If zero,
	// AcquireTimeout.
	ReplaceTimeout time.Duration
	// ScalerInterval is how often the leader's auto-scaler reads the miss
	// rate and decides. If zero, 1 minute.
	ScalerInterval time.Duration
	// ScrapeInterval is the embedded metrics' scrape period. If zero, 5 s.
	ScrapeInterval time.Duration
	// CloudWatch, if set, makes the replica read the pool's statistics from
	// CloudWatch (credentials and region from the AWS SDK's default chain)
	// instead of scraping the nodes (the embedded backend).
	CloudWatch *metrics.CloudWatchConfig
	// Timeouts bounds what one connection may hold on the listeners, and
	// MaxConns the connections of the public one. If zero, the defaults
	// (see Timeouts).
	Timeouts Timeouts
}

// Manager is a running manager replica: its Raft and gossip membership,
// pool maintenance and auto-scaler while it leads, pool statistics, and the
// HTTP server (admin API, UI, watch, raft status, /healthz, /readyz,
// /metrics).
type Manager struct {
	cluster    *cluster.Cluster
	prov       scaler.Provisioner
	pool       *scaler.Pool
	reader     metrics.Reader
	srv        *http.Server // the public listener's
	internal   *http.Server // the cluster listener's
	url        string
	clusterURL string
	log        *slog.Logger

	cancelRequests context.CancelFunc // ends in-flight requests (long-polling watches)
	serving        sync.WaitGroup     // the HTTP servers
	stopScrape     context.CancelFunc // stops the embedded metrics' scraper
	scraped        chan struct{}      // closed when the scraper has stopped

	closeOnce sync.Once
	closeErr  error
}

// StartManager starts a manager replica: it listens, joins the cluster,
// starts pool maintenance and the auto-scaler (both run only while the
// replica leads), the pool statistics and the HTTP server. ctx bounds the
// start only (it loads the AWS config for CloudWatch); Close stops the
// replica.
func StartManager(ctx context.Context, cfg ManagerConfig, log *slog.Logger) (*Manager, error) {
	if cfg.Name == "" {
		return nil, errNoName
	}
	if cfg.HTTPAddr == "" {
		cfg.HTTPAddr = "127.0.0.1:0"
	}
	if cfg.RaftAddr == "" {
		cfg.RaftAddr = "127.0.0.1:0"
	}
	if cfg.ClusterAddr == "" {
		cfg.ClusterAddr = "127.0.0.1:0"
	}
	if cfg.Gossip.BindAddr == "" {
		cfg.Gossip.BindAddr = "127.0.0.1:0"
	}
	if cfg.Timing == (cluster.Timing{}) {
		cfg.Timing = cluster.DefaultTiming()
	}
	if cfg.Provisioner == nil {
		cfg.Provisioner = Static()
	}
	scrape := cfg.ScrapeInterval
	if scrape <= 0 {
		scrape = 5 * time.Second // the embedded scrape period's default
	}

	ln, url, err := listenPublic("manager", cfg.HTTPAddr, cfg.AdvertiseHTTP, cfg.PublicTLS, cfg.Timeouts.withDefaults().MaxConns)
	if err != nil {
		return nil, err
	}
	cln, clusterURL, err := listenCluster("manager", cfg.ClusterAddr, cfg.AdvertiseCluster, cfg.TLS)
	if err != nil {
		ln.Close()
		return nil, err
	}
	// Until the replica is returned, undo holds what to stop on an error.
	var undo []func()
	fail := func(err error) (*Manager, error) {
		for i := len(undo) - 1; i >= 0; i-- {
			undo[i]()
		}
		return nil, err
	}
	undo = append(undo, func() { ln.Close(); cln.Close() })

	c, err := cluster.New(cluster.Config{
		Name: cfg.Name, DataDir: cfg.DataDir,
		RaftAddr: cfg.RaftAddr, RaftAdvertise: cfg.RaftAdvertise,
		HTTPURL: clusterURL, PublicURL: url, BootstrapExpect: cfg.BootstrapExpect, Secret: cfg.Secret, AdminToken: cfg.AdminToken,
		TLS: cfg.TLS, Timing: cfg.Timing,
		Gossip:    cfg.Gossip,
		ViewLease: ViewLease(cfg.DeadGrace),
	}, fsm.NewLogged(log.With("id", cfg.Name)), log)
	if err != nil {
		return fail(err)
	}
	undo = append(undo, func() { c.Close() })
	prov, err := cfg.Provisioner(c.Gossip(), c, log)
	if err != nil {
		return fail(err)
	}
	undo = append(undo, func() { prov.Close() })
	m := &Manager{cluster: c, prov: prov, url: url, clusterURL: clusterURL, log: log, scraped: make(chan struct{})}

	nodes := node.NewClient(node.ClientConfig{Secret: cfg.Secret, TLS: cfg.TLS})
	m.pool = scaler.NewPool(scaler.PoolConfig{DeadGrace: cfg.DeadGrace, InitialNodes: cfg.InitialNodes, AcquireTimeout: cfg.AcquireTimeout, ReplaceTimeout: cfg.ReplaceTimeout,
		Drainer: drainer{nodes}}, c, c.Gossip(), prov, log.With("id", cfg.Name))
	c.RunWhileLeader(m.pool.Run)
	if r, ok := prov.(leaderWork); ok { // the ec2 provisioner's orphan reconciler
		c.RunWhileLeader(r.Run)
	}

	// Pool statistics: every replica keeps (or reads) the same history, so
	// the UI on any replica and a new leader's scaler see the same figures.
	lag := scrape
	if cfg.CloudWatch != nil {
		awsCfg, err := config.LoadDefaultConfig(ctx)
		if err != nil {
			return fail(fmt.Errorf("manager: AWS config for CloudWatch: %w", err))
		}
		m.reader = metrics.NewCloudWatchReader(*cfg.CloudWatch, cloudwatch.NewFromConfig(awsCfg), c.State)
		m.stopScrape = func() {}
		close(m.scraped)
		lag = 0 // CloudWatch reads whole minutes
	} else {
		secretClient := &http.Client{Transport: &auth.Transport{Secret: cfg.Secret, Base: pki.Transport(cfg.TLS)}}
		emb := metrics.NewEmbedded(metrics.EmbeddedConfig{Interval: cfg.ScrapeInterval}, c.State, secretClient, log)
		m.reader = emb
		var scrapeCtx context.Context
		scrapeCtx, m.stopScrape = context.WithCancel(context.Background())
		go func() {
			defer close(m.scraped)
			emb.Run(scrapeCtx)
		}()
	}
	// A window in which the nodes were still filling moved regions from
	// their previous owners is not the new size's steady miss rate.
	auto := scaler.NewAutoScaler(scaler.AutoScalerConfig{Interval: cfg.ScalerInterval, Name: cfg.Name, Lag: lag,
		Warming: warming(nodes, c.State)}, c, m.pool, m.reader, log.With("id", cfg.Name))
	c.RunWhileLeader(auto.Run)

	api := web.New(web.Config{Secret: cfg.Secret, TLS: cfg.TLS, AdminToken: cfg.AdminToken, TrustedProxies: cfg.TrustedProxies},
		c, m.pool, m.reader, log)
	registry := managerRegistry(c)
	// A replica whose FSM halted (a committed entry this build cannot
	// apply) stays up, so that these say why, but is neither healthy nor
	// ready: it needs a newer build, and restarting it is harmless.
	healthz := func(w http.ResponseWriter, _ *http.Request) {
		if h, halted := c.FSM().Halted(); halted {
			http.Error(w, "halted: "+h.String(), http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, "ok\n")
	}
	readyz := func(w http.ResponseWriter, _ *http.Request) {
		if h, halted := c.FSM().Halted(); halted {
			http.Error(w, "halted: "+h.String(), http.StatusServiceUnavailable)
			return
		}
		if _, _, ok := c.Leader(); !ok {
			http.Error(w, "no raft leader known yet", http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, "ok\n")
	}
	// The public router serves users; the cluster router serves members:
	// the same routes (a replica forwards a user's write to the leader's
	// cluster listener) and the internal ones.
	router := func(internal bool) http.Handler {
		r := chi.NewRouter()
		r.Get("/healthz", healthz)
		r.Get("/readyz", readyz)
		r.Handle("/metrics", promhttp.HandlerFor(registry, promhttp.HandlerOpts{}))
		c.Routes(r)
		c.OperatorRoutes(r)
		api.Routes(r)
		if internal {
			c.InternalRoutes(r)
		}
		return r
	}

	// Requests' contexts derive from base, so cancelling it ends the
	// long-polling watches that Shutdown would otherwise wait for.
	base, cancel := context.WithCancel(context.Background())
	m.cancelRequests = cancel
	m.srv, m.internal = newServer(router(false), cfg.Timeouts, log), newServer(router(true), cfg.Timeouts, log)
	for _, s := range []*http.Server{m.srv, m.internal} {
		s.BaseContext = func(net.Listener) context.Context { return base }
	}
	m.serving.Add(2)
	for srv, l := range map[*http.Server]net.Listener{m.srv: ln, m.internal: cln} {
		go func() {
			defer m.serving.Done()
			if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error("manager http server stopped", "err", err, "addr", l.Addr().String())
			}
		}()
	}
	return m, nil
}

// managerRegistry holds the replica's Prometheus metrics.
func managerRegistry(c *cluster.Cluster) *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "memcache_manager_is_leader", Help: "1 if this replica is the Raft leader."},
			func() float64 {
				if c.IsLeader() {
					return 1
				}
				return 0
			}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "memcache_manager_pool_nodes", Help: "Cache nodes in the pool."},
			func() float64 { return float64(len(c.State().Members)) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "memcache_manager_pool_epoch", Help: "Epoch of the pool's region map."},
			func() float64 { return float64(c.State().Epoch) }),
	)
	reg.MustRegister(c.Collectors()...) // Raft, memberlist and the state machine's
	return reg
}

// URL returns the base URL of the replica's HTTP API.
func (m *Manager) URL() string { return m.url }

// ClusterURL returns the base URL of the replica's cluster listener.
func (m *Manager) ClusterURL() string { return m.clusterURL }

// Name returns the replica's name.
func (m *Manager) Name() string { return m.cluster.Name() }

// Cluster returns the replica's Raft and gossip membership.
func (m *Manager) Cluster() *cluster.Cluster { return m.cluster }

// Gossip returns the replica's gossip membership.
func (m *Manager) Gossip() *gossip.Gossip { return m.cluster.Gossip() }

// Pool returns the replica's pool maintenance (active while it leads).
func (m *Manager) Pool() *scaler.Pool { return m.pool }

// Metrics returns the pool statistics the replica's UI and scaler read.
func (m *Manager) Metrics() metrics.Reader { return m.reader }

// Close stops serving, stops the statistics, leaves the cluster and closes
// the provisioner (a local one stops the nodes it started), waiting for all
// of it, or for ctx for the HTTP server's in-flight requests. Calling it
// again returns the first call's result.
func (m *Manager) Close(ctx context.Context) error {
	m.closeOnce.Do(func() {
		m.cancelRequests()
		herr := errors.Join(m.srv.Shutdown(ctx), m.internal.Shutdown(ctx))
		m.serving.Wait()
		m.stopScrape()
		<-m.scraped
		cerr := m.cluster.Close()
		perr := m.prov.Close()
		m.closeErr = errors.Join(herr, cerr, perr)
	})
	return m.closeErr
}

// drainer is the pool's Drainer (scaler.PoolConfig): it waits until a
// node a shrink removed holds the shrink's map and keeps no region for a
// new owner any more (node.HandoffStatus), polling its statistics. A node
// that refuses the connection is gone and not waited for; another error
// is retried until ctx ends.
type drainer struct{ nodes *node.Client }

func (d drainer) Drain(ctx context.Context, m fsm.Member, epoch uint64) error {
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for {
		st, err := d.nodes.Stats(ctx, m.HTTP, time.Now())
		switch {
		case errors.Is(err, syscall.ECONNREFUSED):
			return err
		case err == nil && st.Epoch >= epoch && len(st.Handoff.Giving) == 0:
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("still handing off %d regions at epoch %d: %w", len(st.Handoff.Giving), st.Epoch, ctx.Err())
		case <-tick.C:
		}
	}
}

// warming reports the warm handoffs still under way at the pool's
// members (node.HandoffStatus): the auto-scaler does not read a window
// during which regions were still arriving as the steady miss rate of the
// new size. A member that does not answer within 2 s counts as not
// warming.
func warming(nodes *node.Client, state func() fsm.State) func(ctx context.Context) (string, bool) {
	return func(ctx context.Context) (string, bool) {
		ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		members := state().Members
		recv := make([]int, len(members))
		var wg sync.WaitGroup
		for i, m := range members {
			wg.Go(func() {
				if st, err := nodes.Stats(ctx, m.HTTP, time.Now()); err == nil {
					recv[i] = len(st.Handoff.Receiving)
				}
			})
		}
		wg.Wait()
		var parts []string
		for i, m := range members {
			if recv[i] > 0 {
				parts = append(parts, fmt.Sprintf("%s receiving %d regions", m.ID, recv[i]))
			}
		}
		if len(parts) == 0 {
			return "", false
		}
		return "handoff under way: " + strings.Join(parts, ", "), true
	}
}
