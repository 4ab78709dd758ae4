package gossip

import (
	"encoding/json"
	"fmt"
)

// Role says what kind of process a member is.
type Role string

// The roles that share the cluster.
const (
	RoleNode     Role = "node"
	RoleManager  Role = "manager"
	RoleFrontend Role = "frontend"
)

// valid reports whether r is one of the known roles.
func (r Role) valid() bool {
	switch r {
	case RoleNode, RoleManager, RoleFrontend:
		return true
	}
	return false
}

// Meta is what each member advertises. It travels JSON-encoded in memberlist
// node metadata, so its encoding must stay under memberlist.MetaMaxSize
// (512 bytes); New and UpdateMeta reject larger values.
type Meta struct {
	Role Role   `json:"role"`
	ID   string `json:"id"`
	HTTP string `json:"http"` // base URL of the member's cluster HTTP API (mutual TLS), e.g. https://10.0.0.5:7201
	// Public is the base URL of the member's public listener (a manager's
	// UI and admin API, a frontend's pages and data API); blank for nodes.
	Public string `json:"public,omitempty"`
	Raft   string `json:"raft,omitempty"` // Raft address; managers only
}

// validate checks the metadata this process advertises. Metadata received
// from others is not validated, so that newer roles do not break older
// members.
func (m Meta) validate() error {
	if m.ID == "" {
		return fmt.Errorf("%w: Meta.ID is empty", ErrInvalidConfig)
	}
	if !m.Role.valid() {
		return fmt.Errorf("%w: unknown role %q (want %q, %q or %q)",
			ErrInvalidConfig, m.Role, RoleNode, RoleManager, RoleFrontend)
	}
	return nil
}

// wireMeta is the JSON actually placed in memberlist metadata: the public
// Meta plus the leaving flag described in the package's design note.
type wireMeta struct {
	Meta
	Leaving bool `json:"leaving,omitempty"`
}

// encodeMeta encodes w and checks it fits in limit bytes.
func encodeMeta(w wireMeta, limit int) ([]byte, error) {
	b, err := json.Marshal(w)
	if err != nil {
		return nil, fmt.Errorf("gossip: encode metadata: %w", err)
	}
	if len(b) > limit {
		return nil, fmt.Errorf("%w: %d bytes, limit %d", ErrMetaTooLarge, len(b), limit)
	}
	return b, nil
}

// decodeMeta decodes metadata received from a member.
func decodeMeta(b []byte) (wireMeta, error) {
	var w wireMeta
	if err := json.Unmarshal(b, &w); err != nil {
		return wireMeta{}, fmt.Errorf("gossip: decode metadata: %w", err)
	}
	return w, nil
}

// State is a member's state as this process last saw it.
//
// memberlist v0.7.0 does not expose suspicion, so a suspected member is
// reported as StateAlive until it is declared dead.
type State int

// Member states.
const (
	StateAlive   State = iota // in the cluster (possibly suspected)
	StateLeaving              // has announced a graceful leave and is about to go
	StateLeft                 // left gracefully
	StateDead                 // declared dead by failure detection
)

// String returns the state's name.
func (s State) String() string {
	switch s {
	case StateAlive:
		return "alive"
	case StateLeaving:
		return "leaving"
	case StateLeft:
		return "left"
	case StateDead:
		return "dead"
	}
	return fmt.Sprintf("State(%d)", int(s))
}

// Member is one process in the cluster.
type Member struct {
	Name  string // memberlist node name; equals Meta.ID unless Config.Name was set
	Meta  Meta
	Addr  string // gossip host:port
	State State
}

// EventKind says what happened to a member.
type EventKind int

// Event kinds.
const (
	EventJoin   EventKind = iota + 1 // the member joined (or was first seen)
	EventLeave                       // the member left gracefully; Member.State is StateLeft
	EventFail                        // the member was declared dead; Member.State is StateDead
	EventUpdate                      // the member's Meta or State (StateLeaving) changed
)

// String returns the kind's name.
func (k EventKind) String() string {
	switch k {
	case EventJoin:
		return "join"
	case EventLeave:
		return "leave"
	case EventFail:
		return "fail"
	case EventUpdate:
		return "update"
	}
	return fmt.Sprintf("EventKind(%d)", int(k))
}

// Event is one membership change.
type Event struct {
	Kind   EventKind
	Member Member
}
