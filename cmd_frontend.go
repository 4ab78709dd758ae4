package main

import (
	"context"
	"fmt"
	"time"

	"github.com/urfave/cli/v3"

	"github.com/memcache/memcache/internal/role"

	"github.com/memcache/memcache/blob"
	"github.com/memcache/memcache/gossip"
)

func frontendFlags() []cli.Flag {
	flags := []cli.Flag{
		renamedStringFlag("name", "", "frontend id in the gossip cluster (default: <hostname>-<http port>)", "id"),
		stringFlag("http-addr", "127.0.0.1:8080", "host:port for the pages and the data API"),
		stringFlag("advertise-http", "", "base URL users reach this frontend by (default: http(s)://<http-addr>)"),
		stringFlag("cluster-addr", "127.0.0.1:8081", "host:port of the cluster listener managers call (mutual TLS): the delete-all executor"),
		stringFlag("advertise-cluster", "", "base URL managers reach the cluster listener by (default: https://<cluster-addr>, http with --insecure)"),
		stringFlag("gossip-addr", "127.0.0.1:7500", "host:port for gossip (TCP and UDP)"),
		stringFlag("gossip-advertise", "", "host:port others use to reach this frontend's gossip"),
		stringSliceFlag("join", "gossip addresses (host:port) of cluster members to join; the managers are found through gossip"),
		stringFlag("gossip-key", "", "base64 AES key (16, 24 or 32 bytes) that encrypts gossip"),
		secretFileFlag("gossip-key"),
		stringFlag("cluster-secret", "", "shared secret for calls to cache nodes and managers"),
		secretFileFlag("cluster-secret"),
		stringSliceFlag("managers", "managers' cluster listener base URLs (--advertise-cluster) to use before those found by gossip"),
		stringFlag("db", "./memcache-data/frontend/keys.db", "key index: postgres://user:pass@host/db?sslmode=... (PostgreSQL, e.g. RDS) or an SQLite file path"),
		stringFlag("blob-dir", "./memcache-data/frontend/blobs", "directory for image files (when --s3-bucket is not set)"),
		stringFlag("s3-bucket", "", "S3 bucket for image files (credentials and region from the AWS SDK's default chain)"),
		stringFlag("s3-prefix", "memcache/", "key prefix for objects in --s3-bucket"),
		stringFlag("s3-endpoint", "", "endpoint of an S3-compatible server (path-style addressing)"),
		stringFlag("s3-region", "", "S3 region (default: from the SDK's chain; us-east-1 with --s3-endpoint)"),
		intFlag("max-upload", 10<<20, "largest accepted image, in bytes"),
		renamedIntFlag("near-cache-mb", 64, "size of the near-cache: copies of popular images served under the owner node's read leases, without a round trip (0: off)", "hot-cache-mb"),
	}
	flags = append(flags, listenerFlags()...)
	return append(append(flags, clusterTLSFlags()...), publicTLSFlags()...)
}

// listenerFlags bound what one connection may hold on a server's listeners
// (role.Timeouts).
func listenerFlags() []cli.Flag {
	dur := func(name string, value time.Duration, usage string) cli.Flag {
		return &cli.DurationFlag{Name: name, Value: value, Usage: usage, Sources: cli.EnvVars(envName(name))}
	}
	return []cli.Flag{
		intFlag("max-conns", role.DefaultMaxConns, "most connections the public listener holds at once; more wait in the kernel's queue (-1: unbounded)"),
		dur("read-header-timeout", role.DefaultReadHeaderTimeout, "time a client has for the TLS handshake and a request's header"),
		dur("read-timeout", role.DefaultReadTimeout, "time a client has to send a whole request, body included (the largest upload must fit)"),
		dur("write-timeout", role.DefaultWriteTimeout, "time a request has to be answered, from the end of its header (watches extend their own)"),
		dur("idle-timeout", role.DefaultIdleTimeout, "time a kept-alive connection may wait for its next request"),
	}
}

// listenerTimeouts reads listenerFlags.
func listenerTimeouts(cmd *cli.Command) role.Timeouts {
	return role.Timeouts{ReadHeader: cmd.Duration("read-header-timeout"), Read: cmd.Duration("read-timeout"),
		Write: cmd.Duration("write-timeout"), Idle: cmd.Duration("idle-timeout"), MaxConns: cmd.Int("max-conns")}
}

func frontendCommand() *cli.Command {
	return &cli.Command{
		Name:  "frontend",
		Usage: "run the web frontend and data API",
		Description: "Serves the upload, retrieve and list pages, GET /images/{key}, and the tester\n" +
			"API; images go to a directory or S3, keys to SQLite or PostgreSQL; reads go\n" +
			"through the cache pool, whose changes the managers push to it.",
		Flags:  frontendFlags(),
		Action: runFrontend,
	}
}

func runFrontend(ctx context.Context, cmd *cli.Command) error {
	if n := cmd.Int("near-cache-mb"); n < 0 {
		return fmt.Errorf("--near-cache-mb %d: want 0 (off) or more", n)
	}
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
	public, err := publicTLS(cmd)
	if err != nil {
		return err
	}
	p, err := role.StartFrontend(ctx, role.FrontendConfig{
		Name: id, HTTPAddr: cmd.String("http-addr"), AdvertiseHTTP: cmd.String("advertise-http"), PublicTLS: public,
		ClusterAddr: cmd.String("cluster-addr"), AdvertiseCluster: cmd.String("advertise-cluster"), TLS: tlsCfg,
		Gossip: gossip.Config{BindAddr: cmd.String("gossip-addr"), AdvertiseAddr: cmd.String("gossip-advertise"),
			Join: cmd.StringSlice("join"), SecretKey: key},
		Managers: cmd.StringSlice("managers"),
		Secret:   clusterSecret, DB: cmd.String("db"), BlobDir: cmd.String("blob-dir"),
		S3: blob.S3Config{Bucket: cmd.String("s3-bucket"), Prefix: cmd.String("s3-prefix"),
			Endpoint: cmd.String("s3-endpoint"), Region: cmd.String("s3-region")},
		MaxUpload: int64(cmd.Int("max-upload")), NearCacheMB: cmd.Int("near-cache-mb"),
		Timeouts: listenerTimeouts(cmd),
	}, log.With("id", id))
	if err != nil {
		return err
	}
	<-ctx.Done()
	log.Info("shutting down")
	shutdown, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	return p.Close(shutdown)
}
