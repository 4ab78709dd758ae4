package cluster

// The operator API: listing and removing the servers of the Raft group, on
// a manager's public listener with the admin token, and its only client
// (OperatorClient, used by `memcache operator raft`).

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"
	"unicode"

	"github.com/go-chi/chi/v5"
	"github.com/hashicorp/raft"

	"github.com/memcache/memcache/auth"
	"github.com/memcache/memcache/gossip"
	"github.com/memcache/memcache/internal/jsonhttp"
)

// removeTimeout bounds the commit of a configuration change.
const removeTimeout = 10 * time.Second

// maxPeerID is the longest server id the operator API accepts.
const maxPeerID = 128

// RaftPeer is one server of the Raft configuration.
type RaftPeer struct {
	ID       string `json:"id"`
	Address  string `json:"address"`
	Suffrage string `json:"suffrage"` // Voter, Nonvoter or Staging
	Leader   bool   `json:"leader"`
}

// Peers returns the servers of this replica's latest Raft configuration,
// sorted by id, marking the leader it knows.
func (c *Cluster) Peers() ([]RaftPeer, error) {
	f := c.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return nil, fmt.Errorf("cluster: raft configuration: %w", err)
	}
	_, leader := c.raft.LeaderWithID()
	peers := []RaftPeer{}
	for _, s := range f.Configuration().Servers {
		peers = append(peers, RaftPeer{ID: string(s.ID), Address: string(s.Address), Suffrage: s.Suffrage.String(), Leader: s.ID == leader})
	}
	slices.SortFunc(peers, func(a, b RaftPeer) int { return strings.Compare(a.ID, b.ID) })
	return peers, nil
}

// RemovePeer removes server id from the Raft configuration; this replica
// must lead. It refuses (ErrPeerRefused, changing nothing) to remove the
// leader itself, the last voter, or, unless force is set, a manager alive
// in gossip: the leader adds live managers back (reconcileManagers), so
// removing one is meant for a replica that is gone. A live manager removed
// with force is left out until it leaves gossip; a later leader may add it
// back while it stays alive, so stop it first. A bad id returns
// ErrBadPeerID, one not in the configuration ErrUnknownPeer.
func (c *Cluster) RemovePeer(id string, force bool) error {
	if err := validPeerID(id); err != nil {
		return err
	}
	if !c.IsLeader() {
		return fmt.Errorf("cluster: replica %s: %w", c.cfg.Name, raft.ErrNotLeader)
	}
	f := c.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return fmt.Errorf("cluster: raft configuration: %w", err)
	}
	servers := f.Configuration().Servers
	i := slices.IndexFunc(servers, func(s raft.Server) bool { return s.ID == raft.ServerID(id) })
	if i < 0 {
		return fmt.Errorf("%w: %q is not in the raft configuration", ErrUnknownPeer, id)
	}
	target := servers[i]
	voters := 0
	for _, s := range servers {
		if s.Suffrage == raft.Voter {
			voters++
		}
	}
	switch {
	case id == c.cfg.Name:
		return fmt.Errorf("%w: %s is the leader; stop it, and remove it from another replica once a new leader is elected", ErrPeerRefused, id)
	case target.Suffrage == raft.Voter && voters == 1:
		return fmt.Errorf("%w: %s is the last voter", ErrPeerRefused, id)
	case !force && c.aliveManager(id):
		return fmt.Errorf("%w: %s is alive in gossip and the leader would add it back; stop it first, or force the removal", ErrPeerRefused, id)
	}
	if force {
		c.mu.Lock()
		if c.removed == nil {
			c.removed = map[raft.ServerID]bool{}
		}
		c.removed[target.ID] = true
		c.mu.Unlock()
	}
	// prevIndex makes Raft refuse the change if the configuration changed
	// since it was checked.
	if err := c.raft.RemoveServer(target.ID, f.Index(), removeTimeout).Error(); err != nil {
		return fmt.Errorf("cluster: removing %s: %w", id, err)
	}
	c.log.Info("removed a server from the raft group", "server", id, "address", target.Address, "force", force)
	return nil
}

// validPeerID checks an id given by the operator.
func validPeerID(id string) error {
	if id == "" || len(id) > maxPeerID || strings.ContainsFunc(id, func(r rune) bool { return unicode.IsSpace(r) || !unicode.IsPrint(r) }) {
		return fmt.Errorf("%w: %q: want 1..%d printable characters without spaces", ErrBadPeerID, id, maxPeerID)
	}
	return nil
}

// aliveManager reports whether gossip shows manager id alive.
func (c *Cluster) aliveManager(id string) bool {
	return slices.ContainsFunc(c.gossip.Members(), func(m gossip.Member) bool {
		return m.Meta.Role == gossip.RoleManager && m.Meta.ID == id && m.State == gossip.StateAlive
	})
}

// isRemoved reports whether the operator force-removed live manager id.
func (c *Cluster) isRemoved(id raft.ServerID) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.removed[id]
}

// forgetRemoved forgets the force-removed managers that are no longer
// alive in members: once one has stopped, it may be added again when it
// comes back.
func (c *Cluster) forgetRemoved(members []gossip.Member) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for id := range c.removed {
		if !slices.ContainsFunc(members, func(m gossip.Member) bool {
			return m.Meta.ID == string(id) && m.Meta.Role == gossip.RoleManager && m.State == gossip.StateAlive
		}) {
			delete(c.removed, id)
		}
	}
}

// OperatorRoutes mounts the operator API on r (a manager's public
// listener); every route requires the admin token:
//
//	GET    /v1/operator/raft/peers        the Raft configuration as a JSON list of RaftPeer,
//	                                      from the leader; ?stale=1 answers from this replica
//	                                      (when no leader is known, for instance)
//	DELETE /v1/operator/raft/peers/{id}   remove server id (served by the leader) and answer
//	                                      the remaining peers; ?force=1 removes a live one.
//	                                      400 bad id, 404 unknown id, 409 refused (the leader,
//	                                      the last voter, a live manager without force)
func (c *Cluster) OperatorRoutes(r chi.Router) {
	r.Group(func(r chi.Router) {
		r.Use(auth.RequireAdmin(c.cfg.AdminToken))
		leader := c.ForwardToLeader(http.HandlerFunc(c.handlePeers))
		r.Get("/v1/operator/raft/peers", func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Query().Get("stale") != "" {
				c.handlePeers(w, r)
				return
			}
			leader.ServeHTTP(w, r)
		})
		r.Method(http.MethodDelete, "/v1/operator/raft/peers/{id}", c.ForwardToLeader(http.HandlerFunc(c.handleRemovePeer)))
	})
}

func (c *Cluster) handlePeers(w http.ResponseWriter, _ *http.Request) {
	peers, err := c.Peers()
	if err != nil {
		jsonhttp.Error(w, http.StatusInternalServerError, "%v", err)
		return
	}
	jsonhttp.Write(w, http.StatusOK, peers)
}

func (c *Cluster) handleRemovePeer(w http.ResponseWriter, r *http.Request) {
	id, err := url.PathUnescape(chi.URLParam(r, "id"))
	if err == nil {
		err = c.RemovePeer(id, r.URL.Query().Get("force") != "")
	} else {
		err = fmt.Errorf("%w: %v", ErrBadPeerID, err)
	}
	switch {
	case err == nil:
		c.handlePeers(w, r)
	case errors.Is(err, ErrBadPeerID):
		jsonhttp.Error(w, http.StatusBadRequest, "%v", err)
	case errors.Is(err, ErrUnknownPeer):
		jsonhttp.Error(w, http.StatusNotFound, "%v", err)
	case errors.Is(err, ErrPeerRefused):
		jsonhttp.Error(w, http.StatusConflict, "%v", err)
	case errors.Is(err, raft.ErrNotLeader), errors.Is(err, raft.ErrLeadershipLost), errors.Is(err, raft.ErrEnqueueTimeout):
		w.Header().Set("Retry-After", "1")
		jsonhttp.Error(w, http.StatusServiceUnavailable, "%v; retry", err)
	default:
		jsonhttp.Error(w, http.StatusInternalServerError, "%v", err)
	}
}

// OperatorClient calls a manager's operator API: the only client of it.
type OperatorClient struct {
	// Addr is the base URL of a manager's public listener. Required.
	Addr string
	// Token is the admin token; if blank, none is sent.
	Token string
	// HTTP makes the calls (its transport verifies an https manager). If
	// nil, http.DefaultClient.
	HTTP *http.Client
	// Timeout bounds each call; an earlier deadline of its context wins.
	// If zero, 30 s.
	Timeout time.Duration
}

// OperatorError is an answer of the operator API other than 200.
type OperatorError struct {
	Status  int
	Message string
}

func (e *OperatorError) Error() string {
	return fmt.Sprintf("%d %s: %s", e.Status, http.StatusText(e.Status), e.Message)
}

// Peers lists the Raft configuration; with stale the manager at Addr
// answers from its own copy instead of the leader's.
func (o *OperatorClient) Peers(ctx context.Context, stale bool) ([]RaftPeer, error) {
	q := url.Values{}
	if stale {
		q.Set("stale", "1")
	}
	var peers []RaftPeer
	return peers, o.do(ctx, http.MethodGet, "/v1/operator/raft/peers", q, &peers)
}

// RemovePeer removes server id from the Raft configuration (force: even
// one alive in gossip) and returns the remaining servers.
func (o *OperatorClient) RemovePeer(ctx context.Context, id string, force bool) ([]RaftPeer, error) {
	q := url.Values{}
	if force {
		q.Set("force", "1")
	}
	var peers []RaftPeer
	return peers, o.do(ctx, http.MethodDelete, "/v1/operator/raft/peers/"+url.PathEscape(id), q, &peers)
}

func (o *OperatorClient) do(ctx context.Context, method, path string, q url.Values, out any) error {
	timeout := o.Timeout
	if timeout <= 0 {
		timeout = 30 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	u := strings.TrimRight(o.Addr, "/") + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, method, u, nil)
	if err != nil {
		return err
	}
	if o.Token != "" {
		req.Header.Set("Authorization", "Bearer "+o.Token)
	}
	client := o.HTTP
	if client == nil {
		client = http.DefaultClient
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, u, err)
	}
	if resp.StatusCode != http.StatusOK {
		var e struct {
			Error struct {
				Message string `json:"message"`
			} `json:"error"`
		}
		msg := strings.TrimSpace(string(body))
		if json.Unmarshal(body, &e) == nil && e.Error.Message != "" {
			msg = e.Error.Message
		}
		return &OperatorError{Status: resp.StatusCode, Message: msg}
	}
	if err := json.Unmarshal(body, out); err != nil {
		return fmt.Errorf("%s %s: %w", method, u, err)
	}
	return nil
}
