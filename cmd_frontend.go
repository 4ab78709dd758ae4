package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/urfave/cli/v3"

	"github.com/memcache/memcache/blob"
	"github.com/memcache/memcache/frontend"
	"github.com/memcache/memcache/gossip"
	"github.com/memcache/memcache/keyindex"
)

func frontendFlags() []cli.Flag {
	return []cli.Flag{
		stringFlag("id", "", "frontend id in the gossip cluster (default: <hostname>-<http port>)"),
		stringFlag("http-addr", "127.0.0.1:8080", "host:port for the pages and the data API"),
		stringFlag("advertise-http", "", "base URL others use to reach this frontend (default: http://<http-addr>)"),
		stringFlag("gossip-addr", "127.0.0.1:7500", "host:port for gossip (TCP and UDP)"),
		stringFlag("gossip-advertise", "", "host:port others use to reach this frontend's gossip"),
		stringSliceFlag("join", "gossip addresses (host:port) of cluster members to join; the managers are found through gossip"),
		stringFlag("gossip-key", "", "base64 AES key (16, 24 or 32 bytes) that encrypts gossip"),
		stringFlag("cluster-secret", "", "shared secret for calls to cache nodes and managers"),
		stringSliceFlag("managers", "manager base URLs to use instead of (or before) those found by gossip"),
		stringFlag("db", "./memcache-data/frontend/keys.db", "key index: postgres://user:pass@host/db?sslmode=... (PostgreSQL, e.g. RDS) or an SQLite file path"),
		stringFlag("blob-dir", "./memcache-data/frontend/blobs", "directory for image files (when --s3-bucket is not set)"),
		stringFlag("s3-bucket", "", "S3 bucket for image files (credentials and region from the AWS SDK's default chain)"),
		stringFlag("s3-prefix", "memcache/", "key prefix for objects in --s3-bucket"),
		stringFlag("s3-endpoint", "", "endpoint of an S3-compatible server (path-style addressing)"),
		stringFlag("s3-region", "", "S3 region (default: from the SDK's chain; us-east-1 with --s3-endpoint)"),
		intFlag("max-upload", 10<<20, "largest accepted image, in bytes"),
		intFlag("hot-cache-mb", 64, "size of the frontend's copy of popular images, revalidated with the owner node on every read (0: off)"),
	}
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

// frontendOptions is everything needed to start a frontend.
type frontendOptions struct {
	id, httpAddr, advertiseHTTP string
	gossipAddr, gossipAdvertise string
	join, managers              []string
	gossipKey                   []byte
	secret, db, blobDir         string
	s3                          blob.S3Config
	maxUpload                   int64
	hotCacheMB                  int
	fastGossip                  bool
}

// frontendProc is a running frontend.
type frontendProc struct {
	fe     *frontend.Frontend
	srv    *http.Server
	url    string
	gossip *gossip.Gossip
	index  *keyindex.Index
	cancel context.CancelFunc
	done   chan struct{}
}

func startFrontend(ctx context.Context, o frontendOptions, log *slog.Logger) (*frontendProc, error) {
	var blobs frontend.Blobs
	if o.s3.Bucket != "" {
		s, err := blob.NewS3(ctx, o.s3)
		if err != nil {
			return nil, err
		}
		blobs = s
	} else {
		d, err := blob.NewDir(o.blobDir)
		if err != nil {
			return nil, err
		}
		blobs = d
	}
	if !strings.HasPrefix(o.db, "postgres") {
		if err := os.MkdirAll(filepath.Dir(strings.TrimPrefix(o.db, "sqlite:")), 0o755); err != nil {
			return nil, err
		}
	}
	index, err := keyindex.Open(ctx, o.db)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", o.httpAddr)
	if err != nil {
		index.Close()
		return nil, fmt.Errorf("frontend: listen on %s: %w", o.httpAddr, err)
	}
	url := o.advertiseHTTP
	if url == "" {
		url = "http://" + ln.Addr().String()
	}
	p := &frontendProc{url: url, index: index, done: make(chan struct{})}
	g, err := gossip.New(gossip.Config{BindAddr: o.gossipAddr, AdvertiseAddr: o.gossipAdvertise, Join: o.join,
		SecretKey: o.gossipKey, Fast: o.fastGossip, Meta: gossip.Meta{Role: gossip.RoleFrontend, ID: o.id, HTTP: url}}, log)
	if err != nil {
		ln.Close()
		index.Close()
		return nil, err
	}
	p.gossip = g
	managers := func() []string {
		urls := append([]string(nil), o.managers...)
		for _, m := range g.Members() {
			if m.Meta.Role == gossip.RoleManager && m.State == gossip.StateAlive && m.Meta.HTTP != "" {
				urls = append(urls, m.Meta.HTTP)
			}
		}
		return urls
	}
	p.fe = frontend.New(frontend.Config{MaxUpload: o.maxUpload, Secret: o.secret, Managers: managers, HotCacheMB: o.hotCacheMB}, blobs, index, log)
	p.srv = &http.Server{Handler: p.fe.Handler(), ReadHeaderTimeout: 10 * time.Second}
	runCtx, cancel := context.WithCancel(context.Background())
	p.cancel = cancel
	watching := make(chan struct{})
	go func() {
		defer close(watching)
		p.fe.Run(runCtx)
	}()
	go func() {
		defer close(p.done)
		if err := p.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("frontend http server stopped", "err", err)
		}
		<-watching
	}()
	log.Info("frontend started", "http", url, "blobs", blobs.Kind(), "index", index.Kind())
	return p, nil
}

func (p *frontendProc) close(ctx context.Context) error {
	herr := p.srv.Shutdown(ctx)
	p.cancel()
	<-p.done
	gerr := p.gossip.Close()
	ierr := p.index.Close()
	return errors.Join(herr, gerr, ierr)
}

func runFrontend(ctx context.Context, cmd *cli.Command) error {
	log, key, id, err := processSetup(cmd, "id", "http-addr")
	if err != nil {
		return err
	}
	p, err := startFrontend(ctx, frontendOptions{
		id: id, httpAddr: cmd.String("http-addr"), advertiseHTTP: cmd.String("advertise-http"),
		gossipAddr: cmd.String("gossip-addr"), gossipAdvertise: cmd.String("gossip-advertise"),
		join: cmd.StringSlice("join"), managers: cmd.StringSlice("managers"), gossipKey: key,
		secret: cmd.String("cluster-secret"), db: cmd.String("db"), blobDir: cmd.String("blob-dir"),
		s3: blob.S3Config{Bucket: cmd.String("s3-bucket"), Prefix: cmd.String("s3-prefix"),
			Endpoint: cmd.String("s3-endpoint"), Region: cmd.String("s3-region")},
		maxUpload: int64(cmd.Int("max-upload")), hotCacheMB: cmd.Int("hot-cache-mb"),
	}, log.With("id", id))
	if err != nil {
		return err
	}
	<-ctx.Done()
	log.Info("shutting down")
	shutdown, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	return p.close(shutdown)
}
