package main

import (
	"context"
	"encoding/base64"
	"fmt"
	"time"

	"github.com/urfave/cli/v3"

	"github.com/memcache/memcache/internal/role"

	"github.com/memcache/memcache/cluster"
	"github.com/memcache/memcache/gossip"
	"github.com/memcache/memcache/metrics"
	"github.com/memcache/memcache/scaler"
)

func managerFlags() []cli.Flag {
	flags := []cli.Flag{
		stringFlag("name", "", "replica name, its Raft server ID (default: <hostname>-<raft port>)"),
		stringFlag("data-dir", "./memcache-data/manager", "directory for the Raft log, stable store and snapshots"),
		stringFlag("http-addr", "127.0.0.1:7200", "host:port of the public listener: UI, admin API, raft status, metrics"),
		stringFlag("advertise-http", "", "base URL users reach the public listener by (default: http(s)://<http-addr>)"),
		stringFlag("cluster-addr", "127.0.0.1:7201", "host:port of the cluster listener other members call (mutual TLS): the pool watch and forwarded writes"),
		stringFlag("advertise-cluster", "", "base URL members reach the cluster listener by (default: https://<cluster-addr>, http with --insecure)"),
		stringFlag("raft-addr", "127.0.0.1:7300", "host:port for Raft traffic"),
		stringFlag("raft-advertise", "", "host:port others use to reach Raft (default: --raft-addr)"),
		stringFlag("gossip-addr", "127.0.0.1:7400", "host:port for gossip (TCP and UDP)"),
		stringFlag("gossip-advertise", "", "host:port others use to reach this replica's gossip (default: from --gossip-addr)"),
		stringSliceFlag("join", "gossip addresses (host:port) of cluster members to join; repeat or separate with commas"),
		stringFlag("gossip-key", "", "base64 AES key (16, 24 or 32 bytes) that encrypts gossip; the same on every member"),
		secretFileFlag("gossip-key"),
		intFlag("bootstrap-expect", 3, "the first N managers that find each other by gossip form the Raft group (1 for a single manager); ignored when --data-dir already holds Raft state"),
		stringFlag("cluster-secret", "", "shared secret every cluster-internal HTTP call must carry"),
		secretFileFlag("cluster-secret"),
		stringFlag("admin-token", "", "bearer token the admin API (/api/delete_all, configure_cache, getNumNodes, getRate) requires; blank leaves it open"),
		secretFileFlag("admin-token"),
		stringFlag("provisioner", "static", "where pool nodes come from: static (nodes that joined by gossip) or local (start memcache node processes here)"),
		intFlag("initial-nodes", 1, "pool size the leader creates when the pool is empty"),
		stringFlag("metrics", "embedded", "where pool statistics come from: embedded (replicas scrape the nodes) or cloudwatch (nodes publish, replicas read GetMetricData)"),
		stringFlag("cloudwatch-namespace", "Memcache", "CloudWatch namespace (with --metrics cloudwatch)"),
		stringFlag("cloudwatch-pool", "default", "value of the Pool dimension in CloudWatch"),
		stringSliceFlag("trusted-proxies", "addresses or CIDRs of reverse proxies whose X-Forwarded-Proto is believed (the UI cookie is Secure behind an https proxy)"),
		&cli.DurationFlag{Name: "scaler-interval", Value: time.Minute, Usage: "how often the leader's auto-scaler reads the miss rate and decides", Sources: cli.EnvVars(envName("scaler-interval"))},
		&cli.DurationFlag{Name: "dead-grace", Value: 10 * time.Second, Usage: "how long a pool node may be missing from gossip before its regions are reassigned", Sources: cli.EnvVars(envName("dead-grace"))},
	}
	return append(append(flags, clusterTLSFlags()...), publicTLSFlags()...)
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

func runManager(ctx context.Context, cmd *cli.Command) error {
	log, key, name, err := processSetup(cmd, "raft-addr")
	if err != nil {
		return err
	}
	clusterSecret, err := secret(cmd, "cluster-secret")
	if err != nil {
		return err
	}
	adminToken, err := secret(cmd, "admin-token")
	if err != nil {
		return err
	}
	tlsCfg, err := clusterTLS(cmd)
	if err != nil {
		return err
	}
	public, err := publicTLS(cmd)
	if err != nil {
		return err
	}
	proxies, err := trustedProxies(cmd)
	if err != nil {
		return err
	}
	cfg := role.ManagerConfig{
		Name: name, DataDir: cmd.String("data-dir"),
		HTTPAddr: cmd.String("http-addr"), AdvertiseHTTP: cmd.String("advertise-http"), PublicTLS: public, TrustedProxies: proxies,
		ClusterAddr: cmd.String("cluster-addr"), AdvertiseCluster: cmd.String("advertise-cluster"), TLS: tlsCfg,
		RaftAddr: cmd.String("raft-addr"), RaftAdvertise: cmd.String("raft-advertise"),
		Gossip: gossip.Config{BindAddr: cmd.String("gossip-addr"), AdvertiseAddr: cmd.String("gossip-advertise"),
			Join: cmd.StringSlice("join"), SecretKey: key},
		BootstrapExpect: cmd.Int("bootstrap-expect"), InitialNodes: cmd.Int("initial-nodes"),
		Secret: clusterSecret, AdminToken: adminToken, DeadGrace: cmd.Duration("dead-grace"),
		ScalerInterval: cmd.Duration("scaler-interval"),
		Timing:         cluster.DefaultTiming(),
	}
	switch b := cmd.String("metrics"); b {
	case "embedded":
	case "cloudwatch":
		cfg.CloudWatch = &metrics.CloudWatchConfig{Namespace: cmd.String("cloudwatch-namespace"), Pool: cmd.String("cloudwatch-pool")}
	default:
		return fmt.Errorf("--metrics %q: want embedded or cloudwatch", b)
	}
	switch p := cmd.String("provisioner"); p {
	case "static":
		cfg.Provisioner = role.Static()
	case "local":
		cfg.Provisioner = role.Local(localNodeConfig(cfg.Secret, key, tlsEnv(cmd)))
	default:
		return fmt.Errorf("--provisioner %q: want static or local", p)
	}
	m, err := role.StartManager(ctx, cfg, log)
	if err != nil {
		return err
	}
	<-ctx.Done()
	log.Info("shutting down")
	shutdown, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return m.Close(shutdown)
}

// localNodeConfig is how a local provisioner starts nodes for a replica:
// they join its gossip and get the secrets through the environment.
// The nodes present the replica's own certificate (tlsEnv): they run on its
// host, under its user.
func localNodeConfig(secret string, gossipKey []byte, tlsEnv []string) scaler.LocalConfig {
	cfg := scaler.LocalConfig{GlobalArgs: []string{"--log-level", "warn"}, Env: tlsEnv}
	if secret != "" {
		cfg.Env = append(cfg.Env, envName("cluster-secret")+"="+secret)
	}
	if len(gossipKey) > 0 {
		cfg.Env = append(cfg.Env, envName("gossip-key")+"="+base64.StdEncoding.EncodeToString(gossipKey))
	}
	return cfg
}
