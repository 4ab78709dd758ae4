// Package history records the operations of a fault campaign and checks
// them: linearizability with porcupine, and lost and stale reads by rules
// that explain each finding in one line.
//
// # Model
//
// The image store is a map from key to content id, checked as one register
// per key (porcupine partitions the history by key). A Write sets its key to
// Value, a content id unique to that write; a Read returns the key's current
// value, "" when the key is absent; a DeleteAll makes every key absent; a List
// tells, for every key, whether it is present. A DeleteAll and a List are
// therefore projected into every key's history with their own Call and
// Return. The store must be empty when the recorder starts.
//
// The pool config is a second history, a map register: a ConfigWrite sets
// the fields it carries and leaves the others; a ConfigRead must agree with
// the register on every field it carries. A field that no write has set yet
// holds its initial value, which the checker does not know: the first read of
// it fixes it.
//
// An operation's Outcome says what its client learnt. Failed ops had no
// effect and are dropped. An Unknown write, delete-all or config write may
// have taken effect at any time after its call, or never: it is checked with
// no end (its return is placed after every other operation). Unknown and
// Failed reads and lists observed nothing and are dropped.
//
// # Lost and stale reads
//
// Independently of porcupine, Check looks for reads that cannot be right
// given only the writes and delete-alls that were acknowledged (Outcome OK)
// before the read was invoked; an op "returned before" another when its
// Return is strictly less than the other's Call, as porcupine treats
// intervals as closed. An OK Read r of key k returning v is stale when
//
//	(a) v's write returned before some acknowledged write w of k was invoked,
//	    and w returned before r was invoked (r should have seen w or later);
//	(b) an acknowledged DeleteAll was invoked after v's write returned and
//	    returned before r was invoked (r should have found k absent or newer);
//	(c) v is "" but an acknowledged write of k returned before r was invoked
//	    and no DeleteAll, acknowledged or Unknown, could be ordered between
//	    them (none with Return > the write's Call and Call < r's Return);
//	(d) no write of k that did not fail wrote v, or v's write was invoked
//	    after r returned.
//
// An Unknown write's Return counts as never for these rules. The same rules
// applied to a Final read (one of the final phase, after the faults healed)
// count it as lost instead of stale: the acknowledged write is gone for good.
// A Final List that omits a key counts as lost under rule (c).
package history

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"sync"
	"time"
)

// Kind is what an operation did.
type Kind string

// The kinds of operation the campaign records.
const (
	Write       Kind = "write"        // upload or replace of Key with Value (a content id unique per write)
	Read        Kind = "read"         // read of Key; Value = content id seen, "" = not found
	DeleteAll   Kind = "delete_all"   // every key deleted
	List        Kind = "list"         // Keys = the keys listed
	ConfigWrite Kind = "config_write" // Config = the fields set (partial update)
	ConfigRead  Kind = "config_read"  // Config = the whole config as read
)

// Outcome is what the client learnt of an operation's effect.
type Outcome int

// The outcomes of an operation.
const (
	OK      Outcome = iota // acknowledged
	Failed                 // definitely had no effect
	Unknown                // may or may not have taken effect (timeout, connection lost)
)

// String returns "ok", "failed" or "unknown".
func (o Outcome) String() string {
	switch o {
	case OK:
		return "ok"
	case Failed:
		return "failed"
	case Unknown:
		return "unknown"
	}
	return fmt.Sprintf("outcome(%d)", int(o))
}

// MarshalText encodes the outcome as its String.
func (o Outcome) MarshalText() ([]byte, error) {
	switch o {
	case OK, Failed, Unknown:
		return []byte(o.String()), nil
	}
	return nil, fmt.Errorf("history: invalid outcome %d", int(o))
}

// UnmarshalText decodes "ok", "failed" or "unknown".
func (o *Outcome) UnmarshalText(b []byte) error {
	switch string(b) {
	case "ok":
		*o = OK
	case "failed":
		*o = Failed
	case "unknown":
		*o = Unknown
	default:
		return fmt.Errorf("history: invalid outcome %q", b)
	}
	return nil
}

// Op is one operation of one client, from its invocation to its response.
type Op struct {
	Client  int               `json:"client"`
	Kind    Kind              `json:"kind"`
	Key     string            `json:"key,omitempty"`
	Value   string            `json:"value,omitempty"`
	Keys    []string          `json:"keys,omitempty"`
	Config  map[string]string `json:"config,omitempty"`
	Via     string            `json:"via,omitempty"`   // entry point (e.g. "fe1 /images"), for diagnostics
	Final   bool              `json:"final,omitempty"` // a read of the final phase, after the faults healed
	Call    time.Duration     `json:"call_ns"`         // since the recorder started
	Return  time.Duration     `json:"return_ns"`       // since the recorder started
	Outcome Outcome           `json:"outcome"`
	Err     string            `json:"err,omitempty"`
}

// String describes the op in one line, for reports.
func (o Op) String() string {
	var b bytes.Buffer
	fmt.Fprintf(&b, "client %d %s", o.Client, o.Kind)
	switch o.Kind {
	case Write:
		fmt.Fprintf(&b, " %q=%q", o.Key, o.Value)
	case Read:
		fmt.Fprintf(&b, " %q", o.Key)
		if o.Outcome == OK {
			fmt.Fprintf(&b, " -> %s", showValue(o.Value))
		}
	case List:
		if o.Outcome == OK {
			fmt.Fprintf(&b, " -> %d keys", len(o.Keys))
		}
	case ConfigWrite, ConfigRead:
		fmt.Fprintf(&b, " %s", showConfig(o.Config))
	}
	if o.Via != "" {
		fmt.Fprintf(&b, " via %s", o.Via)
	}
	fmt.Fprintf(&b, " [%v, %v] %s", o.Call, o.Return, o.Outcome)
	if o.Err != "" {
		fmt.Fprintf(&b, " (%s)", o.Err)
	}
	return b.String()
}

func showValue(v string) string {
	if v == "" {
		return "absent"
	}
	return fmt.Sprintf("%q", v)
}

func showConfig(c map[string]string) string {
	b, _ := json.Marshal(c) // sorted keys; a map of strings always encodes
	return string(b)
}

// Recorder collects the ops of concurrent clients. It is safe for
// concurrent use.
type Recorder struct {
	start time.Time // holds the monotonic clock reading all times count from

	mu  sync.Mutex
	ops []Op // guarded by mu
}

// NewRecorder returns an empty recorder whose clock starts now.
func NewRecorder() *Recorder {
	return &Recorder{start: time.Now()}
}

// Now returns the time since NewRecorder on the monotonic clock: take it
// just before invoking an op (Call) and just after its response (Return).
func (r *Recorder) Now() time.Duration {
	return time.Since(r.start)
}

// Add records op. Its Keys and Config are copied, so the caller may reuse
// them.
func (r *Recorder) Add(op Op) {
	op.Keys = slices.Clone(op.Keys)
	if op.Config != nil {
		c := make(map[string]string, len(op.Config))
		for k, v := range op.Config {
			c[k] = v
		}
		op.Config = c
	}
	r.mu.Lock()
	r.ops = append(r.ops, op)
	r.mu.Unlock()
}

// Ops returns a copy of the recorded ops sorted by Call. The ops share
// their Keys and Config with the recorder: do not modify them.
func (r *Recorder) Ops() []Op {
	r.mu.Lock()
	ops := slices.Clone(r.ops)
	r.mu.Unlock()
	sortByCall(ops)
	return ops
}

func sortByCall(ops []Op) {
	slices.SortStableFunc(ops, func(a, b Op) int {
		if a.Call != b.Call {
			return cmpDuration(a.Call, b.Call)
		}
		return cmpDuration(a.Return, b.Return)
	})
}

func cmpDuration(a, b time.Duration) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// WriteJSON writes ops to path as a JSON array, one op a line, so that a
// kept history can be read back with ReadJSON and checked again.
func WriteJSON(path string, ops []Op) error {
	var b bytes.Buffer
	b.WriteString("[\n")
	for i, op := range ops {
		line, err := json.Marshal(op)
		if err != nil {
			return fmt.Errorf("history: encode op %d: %w", i, err)
		}
		b.Write(line)
		if i < len(ops)-1 {
			b.WriteByte(',')
		}
		b.WriteByte('\n')
	}
	b.WriteString("]\n")
	if err := os.WriteFile(path, b.Bytes(), 0o644); err != nil {
		return fmt.Errorf("history: %w", err)
	}
	return nil
}

// ReadJSON reads a history that WriteJSON wrote.
func ReadJSON(path string) ([]Op, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("history: %w", err)
	}
	var ops []Op
	if err := json.Unmarshal(b, &ops); err != nil {
		return nil, fmt.Errorf("history: decode %s: %w", path, err)
	}
	return ops, nil
}
