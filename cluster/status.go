package cluster

import (
	"net/http"

	"github.com/memcache/memcache/auth"
	"github.com/memcache/memcache/fsm"
	"github.com/memcache/memcache/internal/jsonhttp"
)

// PublicStatus is the part of Status that GET /raft/status shows anyone:
// who this replica is, its Raft state, the leader it follows, the term, and
// whether its state machine has halted (as /healthz says too). Indexes,
// addresses and the configuration need the admin token.
type PublicStatus struct {
	ID     string     `json:"id"`
	State  string     `json:"state"`
	Leader PublicPeer `json:"leader"`
	Term   uint64     `json:"term"`
	Halted *fsm.Halt  `json:"halted,omitempty"`
}

// PublicPeer names a Raft server without its address.
type PublicPeer struct {
	ID string `json:"id"`
}

// Public returns the public part of s.
func (s Status) Public() PublicStatus {
	return PublicStatus{ID: s.ID, State: s.State, Leader: PublicPeer{ID: s.Leader.ID}, Term: s.Term, Halted: s.Halted}
}

// handleStatus answers GET /raft/status: the whole Status with the admin
// token (or when none is configured, as the admin API is then open), the
// PublicStatus without an Authorization header, and 401 for any other
// Authorization (an operator who sent one meant to see everything).
func (c *Cluster) handleStatus(w http.ResponseWriter, r *http.Request) {
	st := c.Status()
	switch {
	case auth.ValidAdmin(r, c.cfg.AdminToken):
		jsonhttp.Write(w, http.StatusOK, st)
	case r.Header.Get("Authorization") != "":
		w.Header().Set("WWW-Authenticate", `Bearer realm="memcache"`)
		jsonhttp.Error(w, http.StatusUnauthorized, "wrong admin token (Authorization: Bearer <token>)")
	default:
		jsonhttp.Write(w, http.StatusOK, st.Public())
	}
}
