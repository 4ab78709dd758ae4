package cluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strconv"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/hashicorp/raft"

	"github.com/memcache/memcache/auth"
	"github.com/memcache/memcache/fsm"
	"github.com/memcache/memcache/internal/jsonhttp"
	"github.com/memcache/memcache/internal/pool"
	"github.com/memcache/memcache/pki"
)

// headerForwarded marks a request a replica has forwarded to the leader.
const headerForwarded = "X-Memcache-Forwarded-By"

func isDialError(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

// Routes mounts the replica's public cluster endpoint on r:
//
//	GET  /raft/status          this replica's Raft state, leader and term; with the admin
//	                           token also its indexes, peers and pool epoch (status.go)
func (c *Cluster) Routes(r chi.Router) {
	r.Get("/raft/status", c.handleStatus)
}

// InternalRoutes mounts the endpoints of cluster members on r, which
// belongs on the cluster listener (mutual TLS); they also require the
// cluster secret if one is set:
//
//	GET  /v1/pool              the data plane's pool view (the watch, see package pool);
//	                           ?index=N blocks until the view's index passes N (at most
//	                           ?wait=, then answers the current view); ?consistent=1 is
//	                           served by the leader after a barrier; 503 while the replica
//	                           knows no leader (it may be cut off); a consistent answer
//	                           grants the watcher a lease of ViewLease (X-Memcache-Lease)
//	POST /internal/v1/apply    a command forwarded to the leader
func (c *Cluster) InternalRoutes(r chi.Router) {
	r.Group(func(r chi.Router) {
		r.Use(auth.Require(c.cfg.Secret))
		r.With(extendWriteDeadline, c.forwardConsistent).Method(http.MethodGet, "/v1/pool", pool.LeasedHandler(watchSource{c}, c.cfg.ViewLease))
		// Only a replica forwards a command to the leader.
		r.With(auth.RequireRole(pki.RoleManager)).Post("/internal/v1/apply", c.handleApply)
	})
}

// watchWriteSlack is how long a watch answer may take to write once its
// wait (at most pool.MaxWait) is over.
const watchWriteSlack = 30 * time.Second

// extendWriteDeadline lets a watch outlive the server's WriteTimeout: a
// long poll may block up to pool.MaxWait before it answers, so it moves its
// own connection's write deadline past that. A ResponseWriter that cannot
// (a test recorder) is left as it is.
func extendWriteDeadline(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rc := http.NewResponseController(w)
		_ = rc.SetWriteDeadline(time.Now().Add(pool.MaxWait + watchWriteSlack))
		next.ServeHTTP(w, r)
	})
}

// forwardConsistent sends a consistent watch read to the leader.
func (c *Cluster) forwardConsistent(next http.Handler) http.Handler {
	fwd := c.ForwardToLeader(next)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("consistent") != "" {
			fwd.ServeHTTP(w, r)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// watchSource serves the watch from the replica's FSM.
type watchSource struct{ c *Cluster }

// View returns the replica's view; a replica that knows no leader may be
// cut off from the majority and hold an old view, so it refuses.
func (s watchSource) View() (pool.View, error) {
	if h, halted := s.c.fsm.Halted(); halted {
		return pool.View{}, fmt.Errorf("replica %s: %w: %v", s.c.cfg.Name, fsm.ErrHalted, h)
	}
	if _, _, ok := s.c.Leader(); !ok {
		return pool.View{}, fmt.Errorf("replica %s: %w", s.c.cfg.Name, pool.ErrNoLeader)
	}
	return s.c.fsm.View(), nil
}

func (s watchSource) WaitView(ctx context.Context, after uint64) (pool.View, error) {
	return s.c.fsm.WaitView(ctx, after)
}

// ConsistentView returns the view after a barrier on the leader: every
// change committed before the call has been applied here.
func (s watchSource) ConsistentView(ctx context.Context) (pool.View, error) {
	if !s.c.IsLeader() {
		return pool.View{}, fmt.Errorf("replica %s is not the leader: %w", s.c.cfg.Name, pool.ErrNoLeader)
	}
	if h, halted := s.c.fsm.Halted(); halted {
		return pool.View{}, fmt.Errorf("replica %s: %w: %v", s.c.cfg.Name, fsm.ErrHalted, h)
	}
	timeout := applyTimeout
	if d, ok := ctx.Deadline(); ok {
		timeout = min(timeout, time.Until(d))
	}
	if err := s.c.raft.Barrier(timeout).Error(); err != nil {
		return pool.View{}, fmt.Errorf("replica %s: barrier: %w", s.c.cfg.Name, err)
	}
	return s.c.fsm.View(), nil
}

// Status is the body of GET /raft/status.
type Status struct {
	ID            string `json:"id"`
	State         string `json:"state"`
	Leader        Peer   `json:"leader"`
	Term          uint64 `json:"term"`
	LastLogIndex  uint64 `json:"last_log_index"`
	CommitIndex   uint64 `json:"commit_index"`
	AppliedIndex  uint64 `json:"applied_index"`
	LastContact   string `json:"last_contact,omitempty"`
	Peers         []Peer `json:"peers"`
	PoolEpoch     uint64 `json:"pool_epoch"`
	PoolIndex     uint64 `json:"pool_index"`
	ConfigIndex   uint64 `json:"configuration_index"`
	LastSnapIndex uint64 `json:"last_snapshot_index"`
	// Halted, if set, is the committed entry this replica's FSM could not
	// apply: it applies nothing more until it runs a build that knows it.
	Halted *fsm.Halt `json:"halted,omitempty"`
}

// Peer is a member of the Raft configuration.
type Peer struct {
	ID       string `json:"id"`
	Address  string `json:"address"`
	Suffrage string `json:"suffrage,omitempty"`
}

// Status returns this replica's view of the Raft group.
func (c *Cluster) Status() Status {
	addr, id := c.raft.LeaderWithID()
	stats := c.raft.Stats()
	st := c.fsm.State()
	s := Status{
		ID:           c.cfg.Name,
		State:        c.raft.State().String(),
		Leader:       Peer{ID: string(id), Address: string(addr)},
		LastLogIndex: c.raft.LastIndex(),
		CommitIndex:  c.raft.CommitIndex(),
		AppliedIndex: c.raft.AppliedIndex(),
		PoolEpoch:    st.Epoch,
		PoolIndex:    st.Index,
		Peers:        []Peer{},
	}
	if h, halted := c.fsm.Halted(); halted {
		s.Halted = &h
	}
	s.Term, _ = strconv.ParseUint(stats["term"], 10, 64)
	s.LastSnapIndex, _ = strconv.ParseUint(stats["last_snapshot_index"], 10, 64)
	if s.State != raft.Leader.String() {
		s.LastContact = stats["last_contact"]
	}
	if f := c.raft.GetConfiguration(); f.Error() == nil {
		s.ConfigIndex = f.Index()
		for _, srv := range f.Configuration().Servers {
			s.Peers = append(s.Peers, Peer{ID: string(srv.ID), Address: string(srv.Address), Suffrage: srv.Suffrage.String()})
		}
	}
	return s
}

// ForwardToLeader returns middleware that serves a request here when this
// replica leads and otherwise proxies it to the leader, with the cluster
// secret, within ProxyTimeout (or the request's own earlier deadline). With
// no leader known (an election), it answers 503 with Retry-After; a leader
// that does not answer in time gets 504, one that cannot be reached 502,
// both with Retry-After, so that the caller moves on. A request already
// forwarded once is never forwarded again.
func (c *Cluster) ForwardToLeader(next http.Handler) http.Handler {
	proxy := &httputil.ReverseProxy{
		Transport: pki.Transport(c.cfg.TLS),
		Rewrite: func(pr *httputil.ProxyRequest) {
			target := pr.In.Context().Value(leaderURLKey{}).(*url.URL)
			pr.SetURL(target)
			pr.Out.Host = target.Host
			pr.SetXForwarded()
			pr.Out.Header.Set(headerForwarded, c.cfg.Name)
			if c.cfg.Secret != "" {
				pr.Out.Header.Set(auth.Header, c.cfg.Secret)
			}
		},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			w.Header().Set("Retry-After", "1")
			if errors.Is(r.Context().Err(), context.DeadlineExceeded) {
				jsonhttp.Error(w, http.StatusGatewayTimeout, "the leader did not answer in time: %v", err)
				return
			}
			jsonhttp.Error(w, http.StatusBadGateway, "forwarding to the leader failed: %v", err)
		},
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if c.IsLeader() {
			next.ServeHTTP(w, r)
			return
		}
		name, leaderURL, ok := c.Leader()
		if !ok || r.Header.Get(headerForwarded) != "" {
			w.Header().Set("Retry-After", "1")
			jsonhttp.Error(w, http.StatusServiceUnavailable, "no leader is known to replica %s yet; retry", c.cfg.Name)
			return
		}
		u, err := url.Parse(leaderURL)
		if err != nil {
			jsonhttp.Error(w, http.StatusBadGateway, "leader %s advertises a bad URL %q", name, leaderURL)
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), c.cfg.ProxyTimeout)
		defer cancel()
		proxy.ServeHTTP(w, r.WithContext(context.WithValue(ctx, leaderURLKey{}, u)))
	})
}

type leaderURLKey struct{}
