package main

import (
	"context"
	"encoding/base64"
	"fmt"
	"strings"
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
		stringFlag("provisioner", "static", "where pool nodes come from: static (nodes that joined by gossip), local (start memcache node processes here) or ec2 (launch tagged EC2 instances; the --ec2-* flags)"),
		intFlag("initial-nodes", 1, "pool size the leader creates when the pool is empty"),
		stringFlag("metrics", "embedded", "where pool statistics come from: embedded (replicas scrape the nodes) or cloudwatch (nodes publish, replicas read GetMetricData)"),
		stringFlag("cloudwatch-namespace", "Memcache", "CloudWatch namespace (with --metrics cloudwatch)"),
		stringFlag("cloudwatch-pool", "default", "value of the Pool dimension in CloudWatch"),
		stringSliceFlag("trusted-proxies", "addresses or CIDRs of reverse proxies whose X-Forwarded-Proto is believed (the UI cookie is Secure behind an https proxy)"),
		&cli.DurationFlag{Name: "scaler-interval", Value: time.Minute, Usage: "how often the leader's auto-scaler reads the miss rate and decides", Sources: cli.EnvVars(envName("scaler-interval"))},
		&cli.DurationFlag{Name: "dead-grace", Value: 10 * time.Second, Usage: "how long a pool node may be missing from gossip before its regions are reassigned", Sources: cli.EnvVars(envName("dead-grace"))},
	}
	flags = append(flags, ec2Flags()...)
	flags = append(flags, listenerFlags()...)
	return append(append(flags, clusterTLSFlags()...), publicTLSFlags()...)
}

// ec2Flags configure the ec2 provisioner (--provisioner ec2).
func ec2Flags() []cli.Flag {
	return []cli.Flag{
		stringFlag("ec2-cluster", "memcache", "ec2: value of the memcache:cluster tag on the nodes' instances; the manager adopts and terminates only instances with it"),
		stringFlag("ec2-region", "", "ec2: AWS region (default: the SDK's chain: AWS_REGION, the shared config, the instance's metadata)"),
		stringFlag("ec2-launch-template", "", "ec2: launch template id (lt-...) or name the nodes are launched from; the flags below override it"),
		stringFlag("ec2-ami", "", "ec2: AMI the nodes boot (required without a launch template)"),
		stringFlag("ec2-instance-type", "", "ec2: the nodes' instance type (default t3.small without a launch template)"),
		stringSliceFlag("ec2-subnets", "ec2: subnet ids the nodes are spread over, round robin"),
		stringSliceFlag("ec2-security-groups", "ec2: the nodes' security group ids"),
		stringFlag("ec2-instance-profile", "", "ec2: the nodes' instance profile, name or ARN"),
		stringFlag("ec2-node-tls-cert", "", "ec2: the certificate (role node, e.g. --host '*.ec2.internal') every EC2 node presents; carried in the user-data with the CA of --tls-ca"),
		stringFlag("ec2-node-tls-key", "", "ec2: the key of --ec2-node-tls-cert"),
		stringFlag("ec2-binary-url", "", "ec2: URL the user-data downloads the memcache binary from (default: the AMI has /usr/local/bin/memcache)"),
		stringFlag("ec2-binary-sha256", "", "ec2: SHA-256 of the binary at --ec2-binary-url (required with it)"),
		stringSliceFlag("ec2-node-env", "ec2: NAME=VALUE written to the nodes' environment file (MEMCACHE_* flags such as MEMCACHE_CAPACITY_MB, AWS_* SDK settings); repeat"),
		&cli.DurationFlag{Name: "ec2-join-timeout", Value: 5 * time.Minute, Usage: "ec2: a launched instance that has not joined gossip by then is terminated and replaced",
			Sources: cli.EnvVars(envName("ec2-join-timeout"))},
		&cli.DurationFlag{Name: "ec2-orphan-grace", Value: 10 * time.Minute, Usage: "ec2: a tagged instance no pool member claims is terminated after this",
			Sources: cli.EnvVars(envName("ec2-orphan-grace"))},
	}
}

// ec2Options are the ec2 provisioner's options from the flags.
func ec2Options(cmd *cli.Command, secret string, gossipKey []byte, cw *metrics.CloudWatchConfig) (role.EC2Options, error) {
	if cmd.String("tls-ca") == "" {
		return role.EC2Options{}, fmt.Errorf("--provisioner ec2 needs mutual TLS (--tls-ca, --tls-cert, --tls-key): nodes on other hosts are not started without it")
	}
	if (cmd.String("ec2-binary-url") == "") != (cmd.String("ec2-binary-sha256") == "") {
		return role.EC2Options{}, fmt.Errorf("--ec2-binary-url and --ec2-binary-sha256 go together")
	}
	env := map[string]string{}
	for _, kv := range cmd.StringSlice("ec2-node-env") {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return role.EC2Options{}, fmt.Errorf("--ec2-node-env %q: want NAME=VALUE", kv)
		}
		env[k] = v
	}
	if cw != nil { // the nodes publish what the managers read
		env[envName("metrics")] = "cloudwatch"
		env[envName("cloudwatch-namespace")] = cw.Namespace
		env[envName("cloudwatch-pool")] = cw.Pool
		if r := cmd.String("ec2-region"); r != "" {
			env["AWS_REGION"] = r
		}
	}
	return role.EC2Options{
		EC2: scaler.EC2Config{
			Cluster: cmd.String("ec2-cluster"), LaunchTemplate: cmd.String("ec2-launch-template"),
			AMI: cmd.String("ec2-ami"), InstanceType: cmd.String("ec2-instance-type"),
			Subnets: cmd.StringSlice("ec2-subnets"), SecurityGroups: cmd.StringSlice("ec2-security-groups"),
			InstanceProfile: cmd.String("ec2-instance-profile"),
			JoinTimeout:     cmd.Duration("ec2-join-timeout"), OrphanGrace: cmd.Duration("ec2-orphan-grace"),
		},
		Region: cmd.String("ec2-region"), CAFile: cmd.String("tls-ca"),
		NodeCertFile: cmd.String("ec2-node-tls-cert"), NodeKeyFile: cmd.String("ec2-node-tls-key"),
		GossipKey: gossipKey, ClusterSecret: secret,
		BinaryURL: cmd.String("ec2-binary-url"), BinarySHA256: cmd.String("ec2-binary-sha256"), NodeEnv: env,
	}, nil
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
		Timeouts:       listenerTimeouts(cmd),
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
	case "ec2":
		opts, err := ec2Options(cmd, cfg.Secret, key, cfg.CloudWatch)
		if err != nil {
			return err
		}
		cfg.Provisioner = role.EC2(opts)
		// An instance boots, installs and joins within minutes; the pool
		// waits long enough for one replacement of an instance that does not.
		cfg.AcquireTimeout = 2*opts.EC2.JoinTimeout + time.Minute
		// A failed node's regions go to the survivors at once unless an
		// idle node can take them; the pool grows back in the background.
		cfg.ReplaceTimeout = 15 * time.Second
	default:
		return fmt.Errorf("--provisioner %q: want static, local or ec2", p)
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
