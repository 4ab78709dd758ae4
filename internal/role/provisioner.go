package role

import (
	"context"
	"errors"
	"log/slog"
	"sync"

	"github.com/memcache/memcache/gossip"
	"github.com/memcache/memcache/scaler"
)

// ProvisionerFunc builds a manager replica's provisioner once the replica's
// gossip runs; g is the replica's gossip membership. The replica closes the
// provisioner when it closes.
type ProvisionerFunc func(g *gossip.Gossip, pool scaler.PoolState, log *slog.Logger) (scaler.Provisioner, error)

// Static is the static provisioner: pool nodes are the cache nodes that
// joined by gossip and are not in the pool yet.
func Static() ProvisionerFunc {
	return func(g *gossip.Gossip, _ scaler.PoolState, _ *slog.Logger) (scaler.Provisioner, error) {
		return scaler.NewStatic(g), nil
	}
}

// Local is the local provisioner: the replica starts `memcache node`
// processes on this machine. If cfg.Join is empty, the nodes join the
// replica's gossip.
func Local(cfg scaler.LocalConfig) ProvisionerFunc {
	return func(g *gossip.Gossip, _ scaler.PoolState, log *slog.Logger) (scaler.Provisioner, error) {
		if len(cfg.Join) == 0 {
			cfg.Join = []string{g.Addr()}
		}
		return scaler.NewLocal(cfg, g, log)
	}
}

// SharedLocal is one local provisioner that several replicas in one process
// use, so the nodes are children of this process whichever replica leads
// (`memcache up`, system tests). It is created over the gossip of the first
// replica that asks for it. Close it after the replicas.
type SharedLocal struct {
	cfg scaler.LocalConfig
	log *slog.Logger

	mu    sync.Mutex // guards local
	local *scaler.Local
}

// NewSharedLocal returns a shared local provisioner that starts nodes with cfg.
func NewSharedLocal(cfg scaler.LocalConfig, log *slog.Logger) *SharedLocal {
	return &SharedLocal{cfg: cfg, log: log}
}

// Provisioner is the ProvisionerFunc each replica is given; what it builds
// does nothing on Close, which is left to the SharedLocal's owner.
func (s *SharedLocal) Provisioner() ProvisionerFunc {
	return func(g *gossip.Gossip, _ scaler.PoolState, _ *slog.Logger) (scaler.Provisioner, error) {
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.local == nil {
			cfg := s.cfg
			if len(cfg.Join) == 0 {
				cfg.Join = []string{g.Addr()}
			}
			l, err := scaler.NewLocal(cfg, g, s.log)
			if err != nil {
				return nil, err
			}
			s.local = l
		}
		return sharedProvisioner{s.local}, nil
	}
}

// Local returns the provisioner once a replica has created it, else nil.
func (s *SharedLocal) Local() *scaler.Local {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.local
}

// Close stops every node the provisioner started.
func (s *SharedLocal) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.local == nil {
		return nil
	}
	return s.local.Close()
}

// sharedProvisioner lets a replica use a SharedLocal without closing it.
type sharedProvisioner struct{ *scaler.Local }

func (sharedProvisioner) Close() error { return nil }

var errNoName = errors.New("role: Name is required")

// leaderWork is a provisioner with work of its own that runs on the leader
// only (the ec2 provisioner's orphan reconciler).
type leaderWork interface {
	Run(ctx context.Context)
}
