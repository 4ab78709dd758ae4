package main

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/cloudwatch"
	"github.com/go-chi/chi/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/urfave/cli/v3"

	"github.com/memcache/memcache/auth"
	"github.com/memcache/memcache/cluster"
	"github.com/memcache/memcache/fsm"
	"github.com/memcache/memcache/gossip"
	"github.com/memcache/memcache/metrics"
	"github.com/memcache/memcache/scaler"
	"github.com/memcache/memcache/web"
)

func managerFlags() []cli.Flag {
	return []cli.Flag{
		stringFlag("name", "", "replica name, its Raft server ID (default: <hostname>-<raft port>)"),
		stringFlag("data-dir", "./memcache-data/manager", "directory for the Raft log, stable store and snapshots"),
		stringFlag("http-addr", "127.0.0.1:7200", "host:port for the HTTP API, UI and raft status"),
		stringFlag("advertise-http", "", "base URL others use to reach the HTTP API (default: http://<http-addr>)"),
		stringFlag("raft-addr", "127.0.0.1:7300", "host:port for Raft traffic"),
		stringFlag("raft-advertise", "", "host:port others use to reach Raft (default: --raft-addr)"),
		stringFlag("gossip-addr", "127.0.0.1:7400", "host:port for gossip (TCP and UDP)"),
		stringFlag("gossip-advertise", "", "host:port others use to reach this replica's gossip (default: from --gossip-addr)"),
		stringSliceFlag("join", "gossip addresses (host:port) of cluster members to join; repeat or separate with commas"),
		stringFlag("gossip-key", "", "base64 AES key (16, 24 or 32 bytes) that encrypts gossip; the same on every member"),
		intFlag("bootstrap-expect", 3, "the first N managers that find each other by gossip form the Raft group (1 for a single manager); ignored when --data-dir already holds Raft state"),
		stringFlag("cluster-secret", "", "shared secret every cluster-internal HTTP call must carry"),
		stringFlag("admin-token", "", "bearer token the admin API (/api/delete_all, configure_cache, getNumNodes, getRate) requires; blank leaves it open"),
		stringFlag("provisioner", "static", "where pool nodes come from: static (nodes that joined by gossip) or local (start memcache node processes here)"),
		intFlag("initial-nodes", 1, "pool size the leader creates when the pool is empty"),
		stringFlag("metrics", "embedded", "where pool statistics come from: embedded (replicas scrape the nodes) or cloudwatch (nodes publish, replicas read GetMetricData)"),
		stringFlag("cloudwatch-namespace", "Memcache", "CloudWatch namespace (with --metrics cloudwatch)"),
		stringFlag("cloudwatch-pool", "default", "value of the Pool dimension in CloudWatch"),
		&cli.DurationFlag{Name: "scaler-interval", Value: time.Minute, Usage: "how often the leader's auto-scaler reads the miss rate and decides", Sources: cli.EnvVars(envName("scaler-interval"))},
		&cli.DurationFlag{Name: "dead-grace", Value: 10 * time.Second, Usage: "how long a pool node may be missing from gossip before its regions are reassigned", Sources: cli.EnvVars(envName("dead-grace"))},
	}
}

func managerCommand() *cli.Command {
	return &cli.Command{
		Name:  "manager",
		Usage: "run one Raft manager replica",
		Description: "A manager replica holds the pool configuration and region map in Raft,\n" +
			"serves the admin API, the pool-state watch and /raft/status, and, while it\n" +
			"is the leader, maintains the pool (resizes, replaces failed nodes).",
		Flags:  managerFlags(),
		Action: runManager,
	}
}

// managerOptions is everything needed to start one replica.
type managerOptions struct {
	name, dataDir                  string
	httpAddr, advertiseHTTP        string
	raftAddr, raftAdvertise        string
	gossipAddr, gossipAdvertise    string
	join                           []string
	gossipKey                      []byte
	bootstrapExpect, initialNodes  int
	secret, adminToken             string
	deadGrace                      time.Duration
	scalerInterval, scrapeInterval time.Duration             // if zero, 1 min and 5 s
	cloudWatch                     *metrics.CloudWatchConfig // nil: the embedded metrics
	timing                         cluster.Timing
	fastGossip                     bool
	// newProvisioner builds the replica's provisioner once its gossip runs.
	newProvisioner func(g *gossip.Gossip) (scaler.Provisioner, error)
}

// managerProc is a running manager replica.
type managerProc struct {
	cluster *cluster.Cluster
	prov    scaler.Provisioner
	srv     *http.Server
	url     string
	cancel  context.CancelFunc // ends in-flight requests
	stopBG  context.CancelFunc // stops the metrics scraper
	bgDone  chan struct{}
	done    chan struct{}
	log     *slog.Logger
}

func startManager(o managerOptions, log *slog.Logger) (*managerProc, error) {
	ln, err := net.Listen("tcp", o.httpAddr)
	if err != nil {
		return nil, fmt.Errorf("manager: listen on %s: %w", o.httpAddr, err)
	}
	url := o.advertiseHTTP
	if url == "" {
		url = "http://" + ln.Addr().String()
	}
	c, err := cluster.New(cluster.Config{
		Name: o.name, DataDir: o.dataDir,
		RaftAddr: o.raftAddr, RaftAdvertise: o.raftAdvertise,
		HTTPURL: url, BootstrapExpect: o.bootstrapExpect, Secret: o.secret, Timing: o.timing,
		Gossip: gossip.Config{BindAddr: o.gossipAddr, AdvertiseAddr: o.gossipAdvertise, Join: o.join, SecretKey: o.gossipKey, Fast: o.fastGossip},
	}, fsm.New(), log)
	if err != nil {
		ln.Close()
		return nil, err
	}
	prov, err := o.newProvisioner(c.Gossip())
	if err != nil {
		c.Close()
		ln.Close()
		return nil, err
	}
	pool := scaler.NewPool(scaler.PoolConfig{DeadGrace: o.deadGrace, InitialNodes: o.initialNodes}, c, c.Gossip(), prov, log.With("id", o.name))
	c.RunWhileLeader(pool.Run)

	// Pool statistics: every replica keeps (or reads) the same history, so
	// the UI on any replica and a new leader's scaler see the same figures.
	bg, stopBG := context.WithCancel(context.Background())
	bgDone := make(chan struct{})
	var reader metrics.Reader
	if o.cloudWatch != nil {
		awsCfg, err := config.LoadDefaultConfig(bg)
		if err != nil {
			stopBG()
			c.Close()
			ln.Close()
			return nil, fmt.Errorf("manager: AWS config for CloudWatch: %w", err)
		}
		reader = metrics.NewCloudWatchReader(*o.cloudWatch, cloudwatch.NewFromConfig(awsCfg), c.State)
		close(bgDone)
	} else {
		secretClient := &http.Client{Transport: &auth.Transport{Secret: o.secret}}
		emb := metrics.NewEmbedded(metrics.EmbeddedConfig{Interval: o.scrapeInterval}, c.State, secretClient, log)
		reader = emb
		go func() {
			defer close(bgDone)
			emb.Run(bg)
		}()
	}
	lag := o.scrapeInterval
	if lag <= 0 {
		lag = 5 * time.Second // the embedded scrape period's default
	}
	if o.cloudWatch != nil {
		lag = 0 // CloudWatch reads whole minutes
	}
	auto := scaler.NewAutoScaler(scaler.AutoScalerConfig{Interval: o.scalerInterval, Name: o.name, Lag: lag}, c, pool, reader, log.With("id", o.name))
	c.RunWhileLeader(auto.Run)

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
	r := chi.NewRouter()
	r.Get("/healthz", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok\n") })
	r.Get("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if _, _, ok := c.Leader(); !ok {
			http.Error(w, "no raft leader known yet", http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, "ok\n")
	})
	r.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	c.Routes(r)
	web.New(web.Config{Secret: o.secret, AdminToken: o.adminToken}, c, pool, reader, log).Routes(r)

	// Requests' contexts derive from base, so cancelling it ends the
	// long-polling watches that Shutdown would otherwise wait for.
	base, cancel := context.WithCancel(context.Background())
	m := &managerProc{cluster: c, prov: prov, url: url, done: make(chan struct{}), log: log, cancel: cancel,
		stopBG: stopBG, bgDone: bgDone,
		srv: &http.Server{Handler: r, ReadHeaderTimeout: 10 * time.Second,
			BaseContext: func(net.Listener) context.Context { return base }}}
	go func() {
		defer close(m.done)
		if err := m.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("manager http server stopped", "err", err)
		}
	}()
	return m, nil
}

// close stops serving, leaves the cluster and stops the nodes its
// provisioner started.
func (m *managerProc) close(ctx context.Context) error {
	m.cancel()
	herr := m.srv.Shutdown(ctx)
	<-m.done
	m.stopBG()
	<-m.bgDone
	cerr := m.cluster.Close()
	var perr error
	if m.prov != nil {
		perr = m.prov.Close()
	}
	return errors.Join(herr, cerr, perr)
}

func runManager(ctx context.Context, cmd *cli.Command) error {
	log, key, name, err := processSetup(cmd, "name", "raft-addr")
	if err != nil {
		return err
	}
	o := managerOptions{
		name: name, dataDir: cmd.String("data-dir"),
		httpAddr: cmd.String("http-addr"), advertiseHTTP: cmd.String("advertise-http"),
		raftAddr: cmd.String("raft-addr"), raftAdvertise: cmd.String("raft-advertise"),
		gossipAddr: cmd.String("gossip-addr"), gossipAdvertise: cmd.String("gossip-advertise"),
		join: cmd.StringSlice("join"), gossipKey: key,
		bootstrapExpect: cmd.Int("bootstrap-expect"), initialNodes: cmd.Int("initial-nodes"),
		secret: cmd.String("cluster-secret"), adminToken: cmd.String("admin-token"), deadGrace: cmd.Duration("dead-grace"),
		scalerInterval: cmd.Duration("scaler-interval"),
		timing:         cluster.DefaultTiming(),
	}
	switch b := cmd.String("metrics"); b {
	case "embedded":
	case "cloudwatch":
		o.cloudWatch = &metrics.CloudWatchConfig{Namespace: cmd.String("cloudwatch-namespace"), Pool: cmd.String("cloudwatch-pool")}
	default:
		return fmt.Errorf("--metrics %q: want embedded or cloudwatch", b)
	}
	switch p := cmd.String("provisioner"); p {
	case "static":
		o.newProvisioner = func(g *gossip.Gossip) (scaler.Provisioner, error) { return scaler.NewStatic(g), nil }
	case "local":
		o.newProvisioner = func(g *gossip.Gossip) (scaler.Provisioner, error) {
			return scaler.NewLocal(localNodeConfig(o, g.Addr()), g, log)
		}
	default:
		return fmt.Errorf("--provisioner %q: want static or local", p)
	}
	m, err := startManager(o, log)
	if err != nil {
		return err
	}
	<-ctx.Done()
	log.Info("shutting down")
	shutdown, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return m.close(shutdown)
}

// localNodeConfig is how a local provisioner starts nodes for a replica:
// they join its gossip and get the secrets through the environment.
func localNodeConfig(o managerOptions, gossipAddr string) scaler.LocalConfig {
	cfg := scaler.LocalConfig{Join: []string{gossipAddr}, GlobalArgs: []string{"--log-level", "warn"}}
	if o.secret != "" {
		cfg.Env = append(cfg.Env, envName("cluster-secret")+"="+o.secret)
	}
	if len(o.gossipKey) > 0 {
		cfg.Env = append(cfg.Env, envName("gossip-key")+"="+base64.StdEncoding.EncodeToString(o.gossipKey))
	}
	return cfg
}
