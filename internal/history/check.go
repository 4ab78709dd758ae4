package history

import (
	"cmp"
	"fmt"
	"maps"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/anishathalye/porcupine"
)

// ConfigKey names the config history in a Report's key lists and in
// Visualize.
const ConfigKey = "(config)"

// Anomaly is a read that cannot be right: Read saw what it saw although
// Because (an acknowledged write or delete-all) returned before Read was
// invoked. Why says which rule, in words.
type Anomaly struct {
	Key     string
	Read    Op
	Because Op // zero when the read's value was never written
	Why     string
}

// String describes the anomaly in one line.
func (a Anomaly) String() string {
	s := fmt.Sprintf("key %q: %s: %s", a.Key, a.Why, a.Read)
	if a.Because.Kind != "" {
		s += "; because " + a.Because.String()
	}
	return s
}

// Report is what Check found.
type Report struct {
	Ops     int          // ops checked
	ByKind  map[Kind]int // ops by kind
	Unknown int          // ops whose outcome was unknown
	Failed  int          // ops that failed (dropped from the check)
	Keys    int          // keys in the store's histories

	// Linearizable is true when porcupine found a linearization of every
	// key's history and of the config history; NonLinearizable names those
	// it proved have none, Undecided those it could not decide within the
	// timeout (Linearizable is false then too).
	Linearizable    bool
	NonLinearizable []string
	Undecided       []string

	Lost  []Anomaly // final reads missing an acknowledged write
	Stale []Anomaly // reads older than a write acknowledged before they began
}

// String summarises the report, one anomaly a line.
func (r Report) String() string {
	var b strings.Builder
	kinds := slices.Sorted(maps.Keys(r.ByKind))
	var parts []string
	for _, k := range kinds {
		parts = append(parts, fmt.Sprintf("%s %d", k, r.ByKind[k]))
	}
	fmt.Fprintf(&b, "ops %d (%s), unknown %d, failed %d, keys %d\n", r.Ops, strings.Join(parts, ", "), r.Unknown, r.Failed, r.Keys)
	switch {
	case r.Linearizable:
		b.WriteString("linearizable: yes\n")
	default:
		fmt.Fprintf(&b, "linearizable: NO (illegal: %v; undecided: %v)\n", r.NonLinearizable, r.Undecided)
	}
	fmt.Fprintf(&b, "lost: %d, stale: %d\n", len(r.Lost), len(r.Stale))
	for _, a := range r.Lost {
		fmt.Fprintf(&b, "lost: %s\n", a)
	}
	for _, a := range r.Stale {
		fmt.Fprintf(&b, "stale: %s\n", a)
	}
	return b.String()
}

// Check checks ops (as Recorder.Ops returns them): linearizability of each
// key's history and of the config history with porcupine, each given at
// most timeout, and the lost and stale rules of the package doc.
func Check(ops []Op, timeout time.Duration) Report {
	r := Report{Ops: len(ops), ByKind: map[Kind]int{}, Linearizable: true}
	for _, op := range ops {
		r.ByKind[op.Kind]++
		switch op.Outcome {
		case Unknown:
			r.Unknown++
		case Failed:
			r.Failed++
		}
	}
	parts := partitions(ops)
	r.Keys = len(parts) - 1 // the config history is one of them

	type result struct {
		key string
		res porcupine.CheckResult
	}
	results := make([]result, len(parts))
	var wg sync.WaitGroup
	sem := make(chan struct{}, runtime.GOMAXPROCS(0))
	for i, p := range parts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			res, _ := porcupine.CheckOperationsVerbose(p.model(), p.ops, timeout)
			results[i] = result{p.key, res}
		}()
	}
	wg.Wait()
	for _, res := range results {
		switch res.res {
		case porcupine.Illegal:
			r.NonLinearizable = append(r.NonLinearizable, res.key)
		case porcupine.Unknown:
			r.Undecided = append(r.Undecided, res.key)
		}
	}
	r.Linearizable = len(r.NonLinearizable) == 0 && len(r.Undecided) == 0
	r.Lost, r.Stale = anomalies(ops)
	return r
}

// Visualize writes porcupine's HTML visualisation of key's history (or of
// the config history, for ConfigKey) to path.
func Visualize(ops []Op, key, path string) error {
	for _, p := range partitions(ops) {
		if p.key != key {
			continue
		}
		m := p.model()
		_, info := porcupine.CheckOperationsVerbose(m, p.ops, time.Minute)
		if err := porcupine.VisualizePath(m, info, path); err != nil {
			return fmt.Errorf("history: visualise %q: %w", key, err)
		}
		return nil
	}
	return fmt.Errorf("history: no history for key %q", key)
}

// partition is one history porcupine checks on its own.
type partition struct {
	key    string
	config bool
	ops    []porcupine.Operation
}

func (p partition) model() porcupine.Model {
	if p.config {
		return configModel
	}
	return registerModel
}

// registerInput is a store op projected onto one key.
type registerInput struct {
	op    Kind   // Write, Read, DeleteAll or List
	value string // Write's value
}

// registerModel is one key of the store: its state is the key's content
// id, "" when absent. A Read's output is the id it saw, a List's whether
// it listed the key.
var registerModel = porcupine.Model{
	Init: func() any { return "" },
	Step: func(state, input, output any) (bool, any) {
		s, in := state.(string), input.(registerInput)
		switch in.op {
		case Write:
			return true, in.value
		case DeleteAll:
			return true, ""
		case Read:
			return output.(string) == s, s
		case List:
			return output.(bool) == (s != ""), s
		}
		return false, s
	},
	DescribeOperation: func(input, output any) string {
		in := input.(registerInput)
		switch in.op {
		case Write:
			return fmt.Sprintf("write %s", in.value)
		case DeleteAll:
			return "delete-all"
		case Read:
			return fmt.Sprintf("read -> %s", showValue(output.(string)))
		case List:
			if output.(bool) {
				return "list -> listed"
			}
			return "list -> not listed"
		}
		return string(in.op)
	},
	DescribeState: func(state any) string { return showValue(state.(string)) },
}

// configInput is a config op: a write sets the fields of c, a read saw c.
type configInput struct {
	write bool
	c     map[string]string
}

// configModel is the pool config, a map register whose state is the
// fields known so far, encoded as a sorted "k=v\n" string so that states
// compare with ==. A read of a field nothing has set yet fixes it (its
// initial value is not known to the checker).
var configModel = porcupine.Model{
	Init: func() any { return "" },
	Step: func(state, input, _ any) (bool, any) {
		s, in := decodeConfig(state.(string)), input.(configInput)
		if in.write {
			maps.Copy(s, in.c)
			return true, encodeConfig(s)
		}
		changed := false
		for k, v := range in.c {
			have, ok := s[k]
			switch {
			case !ok:
				s[k], changed = v, true
			case have != v:
				return false, state
			}
		}
		if changed {
			return true, encodeConfig(s)
		}
		return true, state
	},
	DescribeOperation: func(input, _ any) string {
		in := input.(configInput)
		if in.write {
			return "set " + showConfig(in.c)
		}
		return "read " + showConfig(in.c)
	},
	DescribeState: func(state any) string { return showConfig(decodeConfig(state.(string))) },
}

func encodeConfig(c map[string]string) string {
	var b strings.Builder
	for _, k := range slices.Sorted(maps.Keys(c)) {
		b.WriteString(k + "=" + c[k] + "\n")
	}
	return b.String()
}

func decodeConfig(s string) map[string]string {
	c := map[string]string{}
	for line := range strings.Lines(s) {
		k, v, _ := strings.Cut(strings.TrimSuffix(line, "\n"), "=")
		c[k] = v
	}
	return c
}

// partitions projects ops into one history per key and one for the
// config: failed ops and unknown reads are dropped, unknown writes and
// delete-alls get a return after every other op. The config history comes
// first.
func partitions(ops []Op) []partition {
	end := time.Duration(0)
	clients := map[int]int{} // client -> dense id, for porcupine's visualisation
	keys := map[string]bool{}
	for _, op := range ops {
		end = max(end, op.Return, op.Call)
		if _, ok := clients[op.Client]; !ok {
			clients[op.Client] = len(clients)
		}
		if op.Key != "" {
			keys[op.Key] = true
		}
		for _, k := range op.Keys {
			keys[k] = true
		}
	}
	end++
	conv := func(op Op, in, out any) porcupine.Operation {
		ret := op.Return
		if op.Outcome == Unknown {
			ret = end
		}
		return porcupine.Operation{ClientId: clients[op.Client], Input: in, Call: int64(op.Call), Output: out, Return: int64(ret), Metadata: op.Via}
	}
	config := partition{key: ConfigKey, config: true}
	byKey := map[string]*partition{}
	for k := range keys {
		byKey[k] = &partition{key: k}
	}
	for _, op := range ops {
		if op.Outcome == Failed {
			continue
		}
		readLike := op.Kind == Read || op.Kind == List || op.Kind == ConfigRead
		if readLike && op.Outcome != OK {
			continue
		}
		switch op.Kind {
		case Write:
			p := byKey[op.Key]
			p.ops = append(p.ops, conv(op, registerInput{op: Write, value: op.Value}, nil))
		case Read:
			p := byKey[op.Key]
			p.ops = append(p.ops, conv(op, registerInput{op: Read}, op.Value))
		case DeleteAll:
			for _, p := range byKey {
				p.ops = append(p.ops, conv(op, registerInput{op: DeleteAll}, nil))
			}
		case List:
			listed := map[string]bool{}
			for _, k := range op.Keys {
				listed[k] = true
			}
			for k, p := range byKey {
				p.ops = append(p.ops, conv(op, registerInput{op: List}, listed[k]))
			}
		case ConfigWrite:
			config.ops = append(config.ops, conv(op, configInput{write: true, c: op.Config}, nil))
		case ConfigRead:
			config.ops = append(config.ops, conv(op, configInput{c: op.Config}, nil))
		}
	}
	out := []partition{config}
	for _, k := range slices.Sorted(maps.Keys(byKey)) {
		out = append(out, *byKey[k])
	}
	return out
}

// never is the return time of an op whose outcome is unknown, for the
// lost and stale rules.
const never = time.Duration(1<<63 - 1)

func returned(op Op) time.Duration {
	if op.Outcome == Unknown {
		return never
	}
	return op.Return
}

// acked is a set of acknowledged ops sorted by Return, with, for each
// prefix, the op of latest Call: the latest-invoked op of those that
// returned before a given time.
type acked struct {
	ops    []Op
	latest []int // latest[i] = index in ops of the max Call among ops[:i+1]
}

func newAcked(ops []Op) acked {
	slices.SortFunc(ops, func(a, b Op) int { return cmp.Compare(a.Return, b.Return) })
	a := acked{ops: ops, latest: make([]int, len(ops))}
	for i := range ops {
		a.latest[i] = i
		if i > 0 && ops[a.latest[i-1]].Call > ops[i].Call {
			a.latest[i] = a.latest[i-1]
		}
	}
	return a
}

// latestBefore returns the latest-invoked op that returned strictly
// before t.
func (a acked) latestBefore(t time.Duration) (Op, bool) {
	n, _ := slices.BinarySearchFunc(a.ops, t, func(op Op, t time.Duration) int { return cmp.Compare(op.Return, t) })
	if n == 0 {
		return Op{}, false
	}
	return a.ops[a.latest[n-1]], true
}

// anomalies applies the lost and stale rules of the package doc.
func anomalies(ops []Op) (lost, stale []Anomaly) {
	written := map[string]Op{}       // value -> its write (not failed)
	ackedWrites := map[string][]Op{} // key -> acknowledged writes
	var ackedDeletes, deletes []Op   // acknowledged; not failed
	for _, op := range ops {
		switch {
		case op.Kind == Write && op.Outcome != Failed:
			written[op.Value] = op
			if op.Outcome == OK {
				ackedWrites[op.Key] = append(ackedWrites[op.Key], op)
			}
		case op.Kind == DeleteAll && op.Outcome != Failed:
			deletes = append(deletes, op)
			if op.Outcome == OK {
				ackedDeletes = append(ackedDeletes, op)
			}
		}
	}
	writes := map[string]acked{}
	for k, ws := range ackedWrites {
		writes[k] = newAcked(ws)
	}
	dels := newAcked(ackedDeletes)

	// absentWrongly tells whether key k, found absent by r, must have been
	// present: an acknowledged write returned before r began and no
	// delete-all could be ordered between them.
	absentWrongly := func(k string, r Op) (Op, bool) {
		w, ok := writes[k].latestBefore(r.Call)
		if !ok {
			return Op{}, false
		}
		for _, d := range deletes {
			if d.Call < r.Return && returned(d) > w.Call {
				return Op{}, false
			}
		}
		return w, true
	}
	report := func(a Anomaly) {
		if a.Read.Final {
			lost = append(lost, a)
		} else {
			stale = append(stale, a)
		}
	}
	for _, r := range ops {
		if r.Outcome != OK {
			continue
		}
		switch r.Kind {
		case Read:
			if r.Value == "" {
				if w, ok := absentWrongly(r.Key, r); ok {
					report(Anomaly{Key: r.Key, Read: r, Because: w, Why: "absent after an acknowledged write"})
				}
				continue
			}
			v, ok := written[r.Value]
			switch {
			case !ok || v.Key != r.Key:
				report(Anomaly{Key: r.Key, Read: r, Why: "value never written to this key"})
				continue
			case v.Call > r.Return:
				report(Anomaly{Key: r.Key, Read: r, Because: v, Why: "value written after the read returned"})
				continue
			}
			if w, ok := writes[r.Key].latestBefore(r.Call); ok && w.Call > returned(v) {
				report(Anomaly{Key: r.Key, Read: r, Because: w, Why: "value overwritten before the read began"})
				continue
			}
			if d, ok := dels.latestBefore(r.Call); ok && d.Call > returned(v) {
				report(Anomaly{Key: r.Key, Read: r, Because: d, Why: "value deleted before the read began"})
			}
		case List:
			listed := map[string]bool{}
			for _, k := range r.Keys {
				listed[k] = true
			}
			for _, k := range slices.Sorted(maps.Keys(writes)) {
				if listed[k] {
					continue
				}
				if w, ok := absentWrongly(k, r); ok {
					report(Anomaly{Key: k, Read: r, Because: w, Why: "not listed after an acknowledged write"})
				}
			}
		}
	}
	return lost, stale
}
