package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/memcache/memcache/auth"
	"github.com/memcache/memcache/gossip"
	"github.com/memcache/memcache/internal/pool"
)

// ServiceConfig configures a running cache node: the node, its HTTP
// listener and its membership in the gossip cluster.
type ServiceConfig struct {
	Node Config
	// HTTPAddr is the host:port the HTTP API listens on; port 0 picks a free port.
	HTTPAddr string
	// AdvertiseHTTP is the base URL others use to reach the API. If blank, it
	// defaults to http://<the listener's address>.
	AdvertiseHTTP string
	// Gossip configures the membership; its Meta is filled in by Start.
	Gossip gossip.Config
	// WatchWait is how long one pool-state watch request blocks. If zero, pool.DefaultWait.
	WatchWait time.Duration
}

// Service is a cache node serving HTTP and taking part in gossip.
type Service struct {
	node   *Node
	log    *slog.Logger
	srv    *http.Server
	url    string
	gossip *gossip.Gossip

	cancel context.CancelFunc
	done   chan struct{} // closed when the HTTP server and sampler have stopped
}

// Start listens, serves the node's API, starts sampling statistics and
// joins the gossip cluster. Close stops it all.
func Start(cfg ServiceConfig, log *slog.Logger) (*Service, error) {
	base := log.With("id", cfg.Node.ID)
	log = base.With("component", "node")
	n, err := New(cfg.Node, log)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", cfg.HTTPAddr)
	if err != nil {
		return nil, fmt.Errorf("node: listen on %s: %w", cfg.HTTPAddr, err)
	}
	url := cfg.AdvertiseHTTP
	if url == "" {
		url = "http://" + ln.Addr().String()
	}
	gcfg := cfg.Gossip
	gcfg.Meta = gossip.Meta{Role: gossip.RoleNode, ID: cfg.Node.ID, HTTP: url}
	g, err := gossip.New(gcfg, base)
	if err != nil {
		ln.Close()
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Service{
		node: n, log: log, url: url, gossip: g, cancel: cancel, done: make(chan struct{}),
		srv: &http.Server{Handler: n.Handler(), ReadHeaderTimeout: 10 * time.Second},
	}
	sampling := make(chan struct{})
	watching := make(chan struct{})
	go func() {
		defer close(sampling)
		n.Run(ctx)
	}()
	// Follow the pool state from whichever manager replicas gossip shows.
	go func() {
		defer close(watching)
		client := &http.Client{Transport: &auth.Transport{Secret: cfg.Node.Secret}}
		pool.Watch(ctx, pool.WatchConfig{Managers: s.managers, Client: client, Wait: cfg.WatchWait}, log, n.ApplyPool)
	}()
	go func() {
		defer close(s.done)
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("http server stopped", "err", err)
		}
		<-sampling
		<-watching
	}()
	log.Info("cache node started", "http", url, "gossip", g.Addr(),
		"capacity_mb", n.cache.Config().CapacityMB, "policy", n.cache.Policy())
	return s, nil
}

// managers returns the HTTP URLs of the manager replicas gossip knows.
func (s *Service) managers() []string {
	var urls []string
	for _, m := range s.gossip.Members() {
		if m.Meta.Role == gossip.RoleManager && m.Meta.HTTP != "" && m.State == gossip.StateAlive {
			urls = append(urls, m.Meta.HTTP)
		}
	}
	return urls
}

// Node returns the running node.
func (s *Service) Node() *Node { return s.node }

// URL returns the base URL of the node's HTTP API.
func (s *Service) URL() string { return s.url }

// Gossip returns the node's gossip membership.
func (s *Service) Gossip() *gossip.Gossip { return s.gossip }

// Close leaves the gossip cluster gracefully, then stops serving (waiting
// for in-flight requests until ctx is done) and stops sampling.
func (s *Service) Close(ctx context.Context) error {
	gerr := s.gossip.Close()
	herr := s.srv.Shutdown(ctx)
	s.cancel()
	select {
	case <-s.done:
	case <-ctx.Done():
		return ctx.Err()
	}
	s.log.Info("cache node stopped")
	return errors.Join(gerr, herr)
}
