package role

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/cloudwatch"

	"github.com/memcache/memcache/auth"
	"github.com/memcache/memcache/gossip"
	"github.com/memcache/memcache/internal/ec2meta"
	"github.com/memcache/memcache/internal/pool"
	"github.com/memcache/memcache/metrics"
	"github.com/memcache/memcache/node"
	"github.com/memcache/memcache/pki"
)

// NodeConfig configures one cache node.
type NodeConfig struct {
	// Name is the node's id, unique in the cluster, as region maps name it.
	// Required.
	Name string
	// HTTPAddr is the host:port the HTTP API listens on. If blank,
	// 127.0.0.1:0 (a free port).
	HTTPAddr string
	// AdvertiseHTTP is the base URL others use to reach the API. If blank,
	// http(s)://<the listener's address>.
	AdvertiseHTTP string
	// TLS, if set, is the node's certificate of the cluster CA: its HTTP
	// API admits only callers with a certificate of that CA (mutual TLS),
	// and it presents the certificate when it watches the managers. If nil,
	// the API is plain HTTP.
	TLS *pki.TLS
	// Gossip configures the membership; its Meta is filled in by StartNode.
	// If Gossip.BindAddr is blank, 127.0.0.1:0.
	Gossip gossip.Config
	// Secret is the cluster secret every cache and control request must
	// carry. If blank, requests are not authenticated.
	Secret string
	// Cache is the initial cache configuration (the pool's configuration
	// replaces it once the node follows the pool). If zero, 64 MB LRU.
	Cache pool.CacheConfig
	// SampleInterval is how often statistics are sampled. If zero, 5 s.
	SampleInterval time.Duration
	// WatchWait is how long one pool-state watch request blocks. If zero, pool.DefaultWait.
	WatchWait time.Duration
	// ReadLease is the longest read lease the node grants frontends'
	// near-caches (node.Config.ReadLease). If zero, DefaultReadLease;
	// negative grants none.
	ReadLease time.Duration
	// HandoffTimeout bounds a warm handoff (node.Config.HandoffTimeout): if
	// zero, node.DefaultHandoffTimeout; negative, moved regions start empty.
	HandoffTimeout time.Duration
	// CloudWatch, if set, makes the node also publish every sample with
	// PutMetricData (credentials and region from the AWS SDK's default
	// chain). Its Interval, if zero, is SampleInterval.
	CloudWatch *metrics.CloudWatchConfig
	// Timeouts bounds what one connection may hold on the HTTP API (its
	// MaxConns is not used: the API is a cluster listener). If zero, the
	// defaults (see Timeouts).
	Timeouts Timeouts
	// MemoryLimit, if true, makes the node govern the process's soft memory
	// limit (runtime/debug.SetMemoryLimit) from its cache capacity and live
	// heap (node.MemoryGovernor), following every capacity change, so a
	// full cache under eviction churn does not hold twice its size; Close
	// restores the limit the process had. The limit is the process's: set
	// it only in a process that runs one node and little else (memcache
	// node does, unless told not to or GOMEMLIMIT is set).
	MemoryLimit bool
	// EC2Identity, if set, makes StartNode first read the EC2 instance's
	// identity from the instance metadata service (IMDSv2, see
	// ec2meta.Config for the endpoint and the bound on the read) and fill
	// what is blank: Name with the instance id, AdvertiseHTTP with
	// https://<local-hostname, else local-ipv4>:<the HTTP port>, and
	// Gossip.AdvertiseAddr with <local-ipv4>:<the gossip port>. If the
	// service cannot be read, StartNode fails rather than advertise a wrong
	// address.
	EC2Identity *ec2meta.Config
}

// Node is a running cache node: it serves its HTTP API, takes part in
// gossip, follows the pool state from the managers and samples its
// statistics (and publishes them to CloudWatch if so configured).
type Node struct {
	node   *node.Node
	log    *slog.Logger
	srv    *http.Server
	url    string
	gossip *gossip.Gossip

	stop context.CancelFunc // stops the sampler, the watch and the publisher
	bg   sync.WaitGroup     // the HTTP server, sampler, watch and publisher

	closeOnce sync.Once
	closeErr  error
}

// StartNode listens, serves the node's API, starts sampling statistics,
// joins the gossip cluster and follows the pool state from whichever
// manager replicas gossip shows. ctx bounds the start only (the read of
// the EC2 identity, the AWS config for CloudWatch); Close stops the node.
func StartNode(ctx context.Context, cfg NodeConfig, log *slog.Logger) (*Node, error) {
	if cfg.HTTPAddr == "" {
		cfg.HTTPAddr = "127.0.0.1:0"
	}
	if cfg.Gossip.BindAddr == "" {
		cfg.Gossip.BindAddr = "127.0.0.1:0"
	}
	var ec2ID *ec2meta.Identity
	if cfg.EC2Identity != nil {
		id, err := ec2meta.Read(ctx, *cfg.EC2Identity)
		if err != nil {
			return nil, fmt.Errorf("node: --ec2-identity: %w", err)
		}
		ec2ID = &id
		if cfg.Name == "" {
			cfg.Name = id.InstanceID
		}
		if cfg.Gossip.AdvertiseAddr == "" {
			_, port, err := net.SplitHostPort(cfg.Gossip.BindAddr)
			if err != nil {
				return nil, fmt.Errorf("node: gossip address %q: %w", cfg.Gossip.BindAddr, err)
			}
			// Port 0 advertises the port gossip binds.
			cfg.Gossip.AdvertiseAddr = net.JoinHostPort(id.LocalIPv4.String(), port)
		}
	}
	if cfg.Name == "" {
		return nil, errNoName
	}
	base := log.With("id", cfg.Name)
	log = base.With("component", "node")
	if ec2ID != nil {
		log.Info("EC2 instance identity", "instance_id", ec2ID.InstanceID, "local_ipv4", ec2ID.LocalIPv4, "local_hostname", ec2ID.LocalHostname)
	}
	// The client of the node's calls to managers (the watch) and to other
	// nodes (a warm handoff's transfer), with the cluster's credentials.
	client := &http.Client{Transport: &auth.Transport{Secret: cfg.Secret, Base: pki.Transport(cfg.TLS)}}
	n, err := node.New(node.Config{ID: cfg.Name, Cache: cfg.Cache, SampleInterval: cfg.SampleInterval, Secret: cfg.Secret,
		ReadLease: readLease(cfg.ReadLease), Peers: client, HandoffTimeout: cfg.HandoffTimeout}, log)
	if err != nil {
		return nil, err
	}
	var publisher *metrics.Publisher
	if cfg.CloudWatch != nil {
		awsCfg, err := config.LoadDefaultConfig(ctx)
		if err != nil {
			return nil, fmt.Errorf("node: AWS config for CloudWatch: %w", err)
		}
		cw := *cfg.CloudWatch
		if cw.Interval <= 0 {
			cw.Interval = cfg.SampleInterval
		}
		publisher = metrics.NewPublisher(cw, cloudwatch.NewFromConfig(awsCfg), cfg.Name, n.Samples, log)
	}
	advertise := cfg.AdvertiseHTTP
	if ec2ID != nil && advertise == "" {
		// The port is the listener's, known once it listens (HTTPAddr
		// may ask for port 0).
		advertise = ec2ID.URL(pki.Scheme(cfg.TLS), 0)
	}
	ln, url, err := listenCluster("node", cfg.HTTPAddr, advertise, cfg.TLS)
	if err != nil {
		return nil, err
	}
	if ec2ID != nil && cfg.AdvertiseHTTP == "" {
		url = ec2ID.URL(pki.Scheme(cfg.TLS), ln.Addr().(*net.TCPAddr).Port)
	}
	gcfg := cfg.Gossip
	gcfg.Meta = gossip.Meta{Role: gossip.RoleNode, ID: cfg.Name, HTTP: url}
	g, err := gossip.New(gcfg, base)
	if err != nil {
		ln.Close()
		return nil, err
	}
	runCtx, stop := context.WithCancel(context.Background())
	s := &Node{
		node: n, log: log, url: url, gossip: g, stop: stop,
		srv: newServer(n.Handler(), cfg.Timeouts, log),
	}
	s.bg.Go(func() { n.Run(runCtx) })
	s.bg.Go(func() {
		// Every answer is a consistent one from the leader, renewing the
		// node's serving lease (node/lease.go).
		pool.Watch(runCtx, pool.WatchConfig{Managers: func() []string { return g.HTTPURLs(gossip.RoleManager) }, Client: client, Wait: cfg.WatchWait,
			OnLease: n.Renew}, log, n.ApplyPool)
	})
	if publisher != nil {
		s.bg.Go(func() { publisher.Run(runCtx) })
	}
	if cfg.MemoryLimit {
		gov := node.NewMemoryGovernor(node.MemoryGovernorConfig{}, log)
		gov.Govern(n.Cache())
		s.bg.Go(func() { gov.Run(runCtx, n.Cache()) })
	}
	s.bg.Go(func() {
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("http server stopped", "err", err)
		}
	})
	c := n.Cache()
	log.Info("cache node started", "http", url, "gossip", g.Addr(), "capacity_mb", c.Config().CapacityMB, "policy", c.Policy())
	return s, nil
}

// Node returns the running cache node.
func (s *Node) Node() *node.Node { return s.node }

// Name returns the node's id.
func (s *Node) Name() string { return s.node.ID() }

// URL returns the base URL of the node's HTTP API.
func (s *Node) URL() string { return s.url }

// Gossip returns the node's gossip membership.
func (s *Node) Gossip() *gossip.Gossip { return s.gossip }

// Close leaves the gossip cluster gracefully, then stops serving (waiting
// for in-flight requests until ctx is done), following the pool, sampling
// and publishing (a CloudWatch publisher flushes first). Calling it again
// returns the first call's result.
func (s *Node) Close(ctx context.Context) error {
	s.closeOnce.Do(func() {
		gerr := s.gossip.Close()
		herr := s.srv.Shutdown(ctx)
		s.stop()
		done := make(chan struct{})
		go func() {
			s.bg.Wait()
			close(done)
		}()
		select {
		case <-done:
			s.log.Info("cache node stopped")
			s.closeErr = errors.Join(gerr, herr)
		case <-ctx.Done():
			s.closeErr = errors.Join(gerr, herr, ctx.Err())
		}
	})
	return s.closeErr
}

// DefaultReadLease is the read lease a node grants unless configured: a
// write waits at most this long for a frontend it cannot reach, and a
// frontend revalidates a popular image this often.
const DefaultReadLease = time.Second

// readLease returns the node's read lease for a configured d (see
// NodeConfig.ReadLease).
func readLease(d time.Duration) time.Duration {
	switch {
	case d == 0:
		return DefaultReadLease
	case d < 0:
		return 0
	}
	return d
}
