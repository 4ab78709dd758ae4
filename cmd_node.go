package main

import (
	"context"
	"encoding/base64"
	"fmt"
	"log/slog"
	"net"
	"os"
	"time"

	"github.com/urfave/cli/v3"

	"github.com/memcache/memcache/internal/ec2meta"
	"github.com/memcache/memcache/internal/role"
	"github.com/memcache/memcache/node"

	"github.com/memcache/memcache/gossip"
	"github.com/memcache/memcache/internal/pool"
	"github.com/memcache/memcache/metrics"
)

func nodeCommand() *cli.Command {
	return &cli.Command{
		Name:  "node",
		Usage: "run one cache node",
		Description: "A cache node keeps images in memory (LRU or random replacement) and serves\n" +
			"them over HTTP. It joins the cluster by gossip. Until a manager assigns it\n" +
			"regions, it owns all 16.",
		Flags: append([]cli.Flag{
			renamedStringFlag("name", "", "node id, unique in the cluster (default: <hostname>-<http port>; the instance id with --ec2-identity)", "id"),
			stringFlag("http-addr", "127.0.0.1:7100", "host:port the HTTP API listens on (a cluster listener: mutual TLS)"),
			stringFlag("advertise-http", "", "base URL members reach the HTTP API by (default: https://<http-addr>, http with --insecure)"),
			stringFlag("gossip-addr", "127.0.0.1:7946", "host:port for gossip (TCP and UDP)"),
			stringFlag("gossip-advertise", "", "host:port others use to reach this node's gossip (default: from --gossip-addr)"),
			stringSliceFlag("join", "gossip addresses (host:port) of cluster members to join; repeat or separate with commas"),
			stringFlag("gossip-key", "", "base64 AES key (16, 24 or 32 bytes) that encrypts gossip; the same on every member"),
			secretFileFlag("gossip-key"),
			stringFlag("cluster-secret", "", "shared secret every cache and control request must carry (from managers and frontends)"),
			secretFileFlag("cluster-secret"),
			intFlag("capacity-mb", 64, "cache capacity in MB, 1..1024"),
			stringFlag("policy", "LRU", "replacement policy: LRU or RR (random)"),
			&cli.BoolFlag{Name: "memory-limit", Value: true, Sources: cli.EnvVars(envName("memory-limit")),
				Usage: "set the Go runtime's soft memory limit from the cache capacity (capacity + 1/16 + 16 MiB, never less than the live heap + 1/24 + 12 MiB) and follow its changes, so a full cache that evicts does not hold up to twice its size; a GOMEMLIMIT in the environment wins"},
			stringFlag("metrics", "embedded", "embedded (managers scrape /stats) or cloudwatch (also publish every sample with PutMetricData)"),
			stringFlag("cloudwatch-namespace", "Memcache", "CloudWatch namespace (with --metrics cloudwatch)"),
			stringFlag("cloudwatch-pool", "default", "value of the Pool dimension in CloudWatch"),
			&cli.DurationFlag{Name: "read-lease", Value: role.DefaultReadLease, Sources: cli.EnvVars(envName("read-lease")),
				Usage: "longest read lease granted to frontends' near-caches, at most 30s; a write waits this long at most for a frontend it cannot reach (0: grant none)"},
			&cli.DurationFlag{Name: "handoff-timeout", Value: node.DefaultHandoffTimeout, Sources: cli.EnvVars(envName("handoff-timeout")),
				Usage: "warm handoff: a region this node gains by a resize is filled from its previous owner for at most this long, and a region it loses is kept this long (+10s) for its new owner (0: moved regions start empty)"},
			&cli.DurationFlag{Name: "sample-interval", Value: 5 * time.Second, Usage: "how often statistics are sampled", Sources: cli.EnvVars(envName("sample-interval"))},
			&cli.BoolFlag{Name: "ec2-identity", Sources: cli.EnvVars(envName("ec2-identity")),
				Usage: "on EC2: read the instance's identity from the instance metadata service (IMDSv2; endpoint from the AWS SDK, e.g. AWS_EC2_METADATA_SERVICE_ENDPOINT) at start, and default --name to the instance id, --advertise-http to https://<local-hostname, else local-ipv4>:<http port> and --gossip-advertise to <local-ipv4>:<gossip port>; the node does not start if it cannot be read"},
		}, clusterTLSFlags()...),
		Action: runNode,
	}
}

func runNode(ctx context.Context, cmd *cli.Command) error {
	log, key, id, err := processSetup(cmd, "http-addr")
	if err != nil {
		return err
	}
	clusterSecret, err := secret(cmd, "cluster-secret")
	if err != nil {
		return err
	}
	tlsCfg, err := clusterTLS(cmd)
	if err != nil {
		return err
	}
	cfg := role.NodeConfig{
		Name:           id,
		TLS:            tlsCfg,
		HTTPAddr:       cmd.String("http-addr"),
		AdvertiseHTTP:  cmd.String("advertise-http"),
		Secret:         clusterSecret,
		Cache:          pool.CacheConfig{CapacityMB: cmd.Int("capacity-mb"), Policy: pool.Policy(cmd.String("policy"))},
		SampleInterval: cmd.Duration("sample-interval"),
		ReadLease:      readLeaseFlag(cmd.Duration("read-lease")),
		HandoffTimeout: handoffFlag(cmd.Duration("handoff-timeout")),
		Gossip: gossip.Config{
			BindAddr:      cmd.String("gossip-addr"),
			AdvertiseAddr: cmd.String("gossip-advertise"),
			Join:          cmd.StringSlice("join"),
			SecretKey:     key,
		},
	}
	if d := cmd.Duration("handoff-timeout"); d < 0 {
		return fmt.Errorf("--handoff-timeout %v: want 0 (no handoff) or more", d)
	}
	if d := cmd.Duration("read-lease"); d < 0 || d > node.MaxReadLease {
		return fmt.Errorf("--read-lease %v: want 0 (none) up to %v", d, node.MaxReadLease)
	}
	if cmd.Bool("memory-limit") {
		if v := os.Getenv("GOMEMLIMIT"); v != "" {
			log.Info("GOMEMLIMIT is set: the node leaves the memory limit to it", "gomemlimit", v)
		} else {
			cfg.MemoryLimit = true
		}
	}
	if cmd.Bool("ec2-identity") {
		cfg.EC2Identity = &ec2meta.Config{}
		if cmd.String("name") == "" {
			cfg.Name = "" // the instance id, not processSetup's host name
		}
	}
	switch b := cmd.String("metrics"); b {
	case "embedded":
	case "cloudwatch":
		cfg.CloudWatch = &metrics.CloudWatchConfig{Namespace: cmd.String("cloudwatch-namespace"), Pool: cmd.String("cloudwatch-pool"),
			Interval: cmd.Duration("sample-interval")}
	default:
		return fmt.Errorf("--metrics %q: want embedded or cloudwatch", b)
	}
	n, err := role.StartNode(ctx, cfg, log)
	if err != nil {
		return err
	}
	<-ctx.Done()
	log.Info("shutting down")
	shutdown, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	return n.Close(shutdown)
}

// processSetup reads what every server command needs: the logger, the
// gossip key (--gossip-key or --gossip-key-file), and the process's name
// (--name, or <hostname>-<port of the address in flag addrFlag>).
func processSetup(cmd *cli.Command, addrFlag string) (*slog.Logger, []byte, string, error) {
	log, err := newLogger(cmd)
	if err != nil {
		return nil, nil, "", err
	}
	keyText, err := secret(cmd, "gossip-key")
	if err != nil {
		return nil, nil, "", err
	}
	key, err := gossipKey(keyText)
	if err != nil {
		return nil, nil, "", err
	}
	id := cmd.String("name")
	if id == "" {
		if id, err = defaultID(addrFlag, cmd.String(addrFlag)); err != nil {
			return nil, nil, "", err
		}
	}
	return log, key, id, nil
}

// gossipKey decodes the --gossip-key flag; blank means unencrypted gossip.
func gossipKey(s string) ([]byte, error) {
	if s == "" {
		return nil, nil
	}
	key, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("--gossip-key is not base64: %w", err)
	}
	return key, nil
}

// defaultID names a process after its host and the port of addr, the
// value of --flag.
func defaultID(flag, addr string) (string, error) {
	host, err := os.Hostname()
	if err != nil {
		return "", err
	}
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", fmt.Errorf("--%s %q: %w", flag, addr, err)
	}
	return host + "-" + port, nil
}

// handoffFlag maps --handoff-timeout (0: none) to
// role.NodeConfig.HandoffTimeout (0: the default, negative: none).
func handoffFlag(d time.Duration) time.Duration {
	if d == 0 {
		return -1
	}
	return d
}

// readLeaseFlag maps --read-lease (0: none) to role.NodeConfig.ReadLease
// (0: the default, negative: none).
func readLeaseFlag(d time.Duration) time.Duration {
	if d == 0 {
		return -1
	}
	return d
}
