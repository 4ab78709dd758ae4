package role

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/memcache/memcache/blob"
	"github.com/memcache/memcache/frontend"
	"github.com/memcache/memcache/gossip"
	"github.com/memcache/memcache/keyindex"
	"github.com/memcache/memcache/pki"
)

// FrontendConfig configures one frontend.
type FrontendConfig struct {
	// Name is the frontend's id in the gossip cluster. Required.
	Name string
	// HTTPAddr is the host:port of the pages and the data API. If blank,
	// 127.0.0.1:0 (a free port).
	HTTPAddr string
	// AdvertiseHTTP is the base URL users reach the pages and data API by.
	// If blank, http(s)://<the listener's address>.
	AdvertiseHTTP string
	// PublicTLS, if set, serves the pages and data API over TLS.
	PublicTLS *tls.Config
	// ClusterAddr is the host:port of the listener managers call (the
	// delete-all executor). If blank, 127.0.0.1:0.
	ClusterAddr string
	// AdvertiseCluster is the base URL managers reach ClusterAddr by. If
	// blank, http(s)://<the listener's address>.
	AdvertiseCluster string
	// TLS, if set, is the frontend's certificate of the cluster CA: the
	// cluster listener admits only callers with a certificate of that CA,
	// and the frontend presents it to nodes and managers.
	TLS *pki.TLS
	// Gossip configures the membership, through which the managers are
	// found; its Meta is filled in by StartFrontend. If Gossip.BindAddr is
	// blank, 127.0.0.1:0.
	Gossip gossip.Config
	// Managers are manager base URLs tried before those found by gossip.
	Managers []string
	// Secret is the cluster secret sent to cache nodes and managers.
	Secret string
	// DB is the key index: a postgres:// URL (PostgreSQL) or an SQLite file
	// path (its directory is created). Required.
	DB string
	// BlobDir is the directory for image files, used when S3.Bucket is
	// blank. Required then.
	BlobDir string
	// S3, if S3.Bucket is set, keeps the images in S3 (or an S3-compatible
	// server) instead of BlobDir.
	S3 blob.S3Config
	// MaxUpload is the largest accepted image, in bytes. If zero, 10 MB.
	MaxUpload int64
	// NearCacheMB is the size of the frontend's near-cache: copies of
	// popular images served under the owner node's read leases
	// (frontend.Config.NearCacheMB). 0 turns it off.
	NearCacheMB int
	// WatchWait is how long one pool-state watch request blocks. If zero, pool.DefaultWait.
	WatchWait time.Duration
	// Timeouts bounds what one connection may hold on the listeners, and
	// MaxConns the connections of the public one. If zero, the defaults
	// (see Timeouts).
	Timeouts Timeouts
}

// Frontend is a running frontend: the pages and data API over the blob
// store and key index, following the pool state from the managers.
type Frontend struct {
	fe         *frontend.Frontend
	srv        *http.Server // the public listener's
	internal   *http.Server // the cluster listener's
	url        string
	clusterURL string
	gossip     *gossip.Gossip
	index      *keyindex.Index
	log        *slog.Logger

	stop context.CancelFunc // stops following the pool
	bg   sync.WaitGroup     // the HTTP server and the watch

	closeOnce sync.Once
	closeErr  error
}

// StartFrontend opens the stores (running the key index's migrations),
// listens, joins gossip, starts following the pool state and serves. ctx
// bounds the start only; Close stops the frontend.
func StartFrontend(ctx context.Context, cfg FrontendConfig, log *slog.Logger) (*Frontend, error) {
	if cfg.Name == "" {
		return nil, errNoName
	}
	if cfg.HTTPAddr == "" {
		cfg.HTTPAddr = "127.0.0.1:0"
	}
	if cfg.Gossip.BindAddr == "" {
		cfg.Gossip.BindAddr = "127.0.0.1:0"
	}
	if cfg.ClusterAddr == "" {
		cfg.ClusterAddr = "127.0.0.1:0"
	}
	var blobs frontend.Blobs
	if cfg.S3.Bucket != "" {
		s, err := blob.NewS3(ctx, cfg.S3)
		if err != nil {
			return nil, err
		}
		blobs = s
	} else {
		d, err := blob.NewDir(cfg.BlobDir)
		if err != nil {
			return nil, err
		}
		blobs = d
	}
	if !strings.HasPrefix(cfg.DB, "postgres") {
		if err := os.MkdirAll(filepath.Dir(strings.TrimPrefix(cfg.DB, "sqlite:")), 0o755); err != nil {
			return nil, err
		}
	}
	index, err := keyindex.Open(ctx, cfg.DB)
	if err != nil {
		return nil, err
	}
	ln, url, err := listenPublic("frontend", cfg.HTTPAddr, cfg.AdvertiseHTTP, cfg.PublicTLS, cfg.Timeouts.withDefaults().MaxConns)
	if err != nil {
		index.Close()
		return nil, err
	}
	cln, clusterURL, err := listenCluster("frontend", cfg.ClusterAddr, cfg.AdvertiseCluster, cfg.TLS)
	if err != nil {
		ln.Close()
		index.Close()
		return nil, err
	}
	gcfg := cfg.Gossip
	gcfg.Meta = gossip.Meta{Role: gossip.RoleFrontend, ID: cfg.Name, HTTP: clusterURL, Public: url}
	g, err := gossip.New(gcfg, log)
	if err != nil {
		ln.Close()
		cln.Close()
		index.Close()
		return nil, err
	}
	managers := func() []string {
		return append(append([]string(nil), cfg.Managers...), g.HTTPURLs(gossip.RoleManager)...)
	}
	fe := frontend.New(frontend.Config{MaxUpload: cfg.MaxUpload, Secret: cfg.Secret, TLS: cfg.TLS, Managers: managers,
		NearCacheMB: cfg.NearCacheMB, WatchWait: cfg.WatchWait}, blobs, index, log)
	runCtx, stop := context.WithCancel(context.Background())
	p := &Frontend{fe: fe, url: url, clusterURL: clusterURL, gossip: g, index: index, log: log, stop: stop,
		srv: newServer(fe.Handler(), cfg.Timeouts, log), internal: newServer(fe.InternalHandler(), cfg.Timeouts, log)}
	p.bg.Go(func() { fe.Run(runCtx) })
	for srv, l := range map[*http.Server]net.Listener{p.srv: ln, p.internal: cln} {
		p.bg.Go(func() {
			if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error("frontend http server stopped", "err", err, "addr", l.Addr().String())
			}
		})
	}
	log.Info("frontend started", "http", url, "cluster", clusterURL, "blobs", blobs.Kind(), "index", index.Kind())
	return p, nil
}

// Frontend returns the running frontend.
func (p *Frontend) Frontend() *frontend.Frontend { return p.fe }

// URL returns the frontend's base URL.
func (p *Frontend) URL() string { return p.url }

// ClusterURL returns the base URL of the frontend's cluster listener.
func (p *Frontend) ClusterURL() string { return p.clusterURL }

// Gossip returns the frontend's gossip membership.
func (p *Frontend) Gossip() *gossip.Gossip { return p.gossip }

// Close stops serving (waiting for in-flight requests until ctx is done),
// stops following the pool, leaves gossip and closes the key index.
// Calling it again returns the first call's result.
func (p *Frontend) Close(ctx context.Context) error {
	p.closeOnce.Do(func() {
		herr := errors.Join(p.srv.Shutdown(ctx), p.internal.Shutdown(ctx))
		p.stop()
		p.bg.Wait()
		gerr := p.gossip.Close()
		ierr := p.index.Close()
		p.closeErr = errors.Join(herr, gerr, ierr)
	})
	return p.closeErr
}
