package cluster

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/cenkalti/backoff/v5"
	"github.com/hashicorp/raft"

	"github.com/memcache/memcache/fsm"
	"github.com/memcache/memcache/internal/jsonhttp"
)

// applyTimeout bounds one raft.Apply on the leader.
const applyTimeout = 10 * time.Second

// errRetry marks a failure after which the command may be sent again: it
// was not applied (no leader, not the leader), or — errMaybeApplied too —
// leadership was lost while it was being committed, or the leader did not
// answer within ForwardTimeout, so it may or may not have been.
//
// Sending it again is safe: the config commands set absolute values (a
// Configure patch applied twice is applied once), and clearing or deleting
// twice is harmless. A Resize (epoch precondition) or MarkFailed sent again
// after it was applied is refused; Apply then finds its effect already in
// the state (fsm.Settled) and reports success.
var (
	errRetry        = errors.New("retry")
	errMaybeApplied = errors.New("may have been applied")
)

// Apply validates cmd against this replica's state, then has the leader
// commit it: directly when this replica leads, otherwise by forwarding it
// to the leader's HTTP API, each attempt within ForwardTimeout. While no
// leader is known, or the leader does not answer, it retries with jittered
// exponential backoff (10 ms growing to 250 ms, ±50 %, so that replicas do
// not retry in step) until ctx is done. A command the FSM refuses returns
// its fsm.ErrInvalidCommand error and changes nothing.
//
// A replica whose FSM has halted (fsm.ErrHalted) refuses every write: it
// cannot check one against the state.
func (c *Cluster) Apply(ctx context.Context, cmd fsm.Command) (fsm.Result, error) {
	if h, halted := c.fsm.Halted(); halted {
		return fsm.Result{}, fmt.Errorf("replica %s: %w: %v", c.cfg.Name, fsm.ErrHalted, h)
	}
	if err := cmd.Validate(c.fsm.State()); err != nil {
		return fsm.Result{}, err
	}
	data, err := fsm.Encode(cmd)
	if err != nil {
		return fsm.Result{}, err
	}
	b := &backoff.ExponentialBackOff{
		InitialInterval:     10 * time.Millisecond,
		RandomizationFactor: 0.5,
		Multiplier:          2,
		MaxInterval:         250 * time.Millisecond,
	}
	maybeApplied := false // an earlier attempt may have committed cmd
	for {
		res, err := c.applyOnce(ctx, data)
		if maybeApplied && errors.Is(err, fsm.ErrInvalidCommand) {
			return c.settled(ctx, cmd, res, err)
		}
		if !errors.Is(err, errRetry) {
			return res, err
		}
		maybeApplied = maybeApplied || errors.Is(err, errMaybeApplied)
		t := time.NewTimer(b.NextBackOff())
		select {
		case <-c.stop:
			t.Stop()
			return fsm.Result{}, ErrClosed
		case <-ctx.Done():
			t.Stop()
			return fsm.Result{}, fmt.Errorf("%w: %w (%v)", ErrNoLeader, ctx.Err(), err)
		case <-t.C:
		}
	}
}

// settled decides a command refused after an earlier attempt may have
// committed it: once this replica has applied what the leader had when it
// refused (res.Index), a command whose effect the state already holds
// (fsm.Settled) succeeded; anything else keeps its refusal.
func (c *Cluster) settled(ctx context.Context, cmd fsm.Command, res fsm.Result, refusal error) (fsm.Result, error) {
	s, ok := cmd.(fsm.Settled)
	if !ok {
		return res, refusal
	}
	st := c.fsm.State()
	if res.Index > 0 {
		var err error
		if st, err = c.fsm.Wait(ctx, res.Index-1); err != nil {
			return res, refusal
		}
	}
	if !s.SettledIn(st) {
		return res, refusal
	}
	c.log.Info("a command retried after an uncertain attempt was already applied", "command", cmd.Type())
	return fsm.Result{Index: st.Index, Epoch: st.Epoch}, nil
}

func (c *Cluster) applyOnce(ctx context.Context, data []byte) (fsm.Result, error) {
	if c.IsLeader() {
		return c.applyLocal(data)
	}
	_, url, ok := c.Leader()
	if !ok {
		return fsm.Result{}, fmt.Errorf("%w: no known leader", errRetry)
	}
	return c.forward(ctx, url, data)
}

// applyLocal commits data through this replica's Raft, which must lead.
func (c *Cluster) applyLocal(data []byte) (fsm.Result, error) {
	f := c.raft.Apply(data, applyTimeout)
	if err := f.Error(); err != nil {
		if errors.Is(err, raft.ErrLeadershipLost) {
			return fsm.Result{}, fmt.Errorf("%w: %w: %v", errRetry, errMaybeApplied, err)
		}
		if errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrEnqueueTimeout) {
			return fsm.Result{}, fmt.Errorf("%w: %v", errRetry, err)
		}
		return fsm.Result{}, fmt.Errorf("cluster: apply: %w", err)
	}
	res, ok := f.Response().(fsm.Result)
	if !ok {
		return fsm.Result{}, fmt.Errorf("cluster: apply: unexpected response %T", f.Response())
	}
	return res, res.Err
}

// applyResponse is the body of POST /internal/v1/apply.
type applyResponse struct {
	Index   uint64 `json:"index"`
	Epoch   uint64 `json:"epoch"`
	Refused string `json:"refused,omitempty"` // the FSM's domain error
	Error   string `json:"error,omitempty"`   // any other failure
	Retry   bool   `json:"retry,omitempty"`   // send again (to the new leader)
	// MaybeApplied: with Retry, leadership was lost while the command was
	// being committed, so it may have been applied.
	MaybeApplied bool `json:"maybe_applied,omitempty"`
}

// forward sends an encoded command to the leader at url, within
// ForwardTimeout.
func (c *Cluster) forward(ctx context.Context, url string, data []byte) (fsm.Result, error) {
	actx, cancel := context.WithTimeout(ctx, c.cfg.ForwardTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(actx, http.MethodPost, url+"/internal/v1/apply", bytes.NewReader(data))
	if err != nil {
		return fsm.Result{}, err
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err := c.client.Do(req)
	if err != nil {
		// A dial error means the leader never saw the request; a leader that
		// did not answer within the attempt's deadline is paused or cut off
		// (and about to be replaced). Both are worth another attempt, which
		// is safe (errRetry); after a timeout it may have been applied.
		// Other errors (a reset) end the call.
		if isDialError(err) {
			return fsm.Result{}, fmt.Errorf("%w: leader at %s: %v", errRetry, url, err)
		}
		if ctx.Err() == nil && errors.Is(actx.Err(), context.DeadlineExceeded) {
			return fsm.Result{}, fmt.Errorf("%w: %w: leader at %s: %v", errRetry, errMaybeApplied, url, err)
		}
		return fsm.Result{}, fmt.Errorf("cluster: forward to leader: %w", err)
	}
	defer resp.Body.Close()
	var ar applyResponse
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&ar); err != nil {
		if ctx.Err() == nil && errors.Is(actx.Err(), context.DeadlineExceeded) {
			return fsm.Result{}, fmt.Errorf("%w: %w: leader at %s: %v", errRetry, errMaybeApplied, url, err)
		}
		return fsm.Result{}, fmt.Errorf("cluster: forward to leader: %s: %w", resp.Status, err)
	}
	switch {
	case ar.Retry && ar.MaybeApplied:
		return fsm.Result{}, fmt.Errorf("%w: %w: %s", errRetry, errMaybeApplied, ar.Error)
	case ar.Retry:
		return fsm.Result{}, fmt.Errorf("%w: %s", errRetry, ar.Error)
	case ar.Refused != "":
		return fsm.Result{Index: ar.Index, Epoch: ar.Epoch}, fmt.Errorf("%w: %s", fsm.ErrInvalidCommand, ar.Refused)
	case ar.Error != "":
		return fsm.Result{}, fmt.Errorf("cluster: leader: %s", ar.Error)
	}
	return fsm.Result{Index: ar.Index, Epoch: ar.Epoch}, nil
}

// handleApply commits a command forwarded by another replica. A command
// the leader cannot decode (a type or version it does not know, even one
// marked ignorable) is refused with 400 before it is proposed: only what
// the leader can check against its state enters the log. A leader whose
// FSM has halted commits nothing.
func (c *Cluster) handleApply(w http.ResponseWriter, r *http.Request) {
	data, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil {
		jsonhttp.Error(w, http.StatusBadRequest, "reading command: %v", err)
		return
	}
	var ar applyResponse
	if !c.IsLeader() {
		ar.Retry, ar.Error = true, "not the leader"
	} else if h, halted := c.fsm.Halted(); halted {
		ar.Error = fmt.Sprintf("leader %s: %v: %v", c.cfg.Name, fsm.ErrHalted, h)
	} else if cmd, err := fsm.Decode(data); err != nil {
		st := c.fsm.State()
		ar.Index, ar.Epoch, ar.Refused = st.Index, st.Epoch, err.Error()
		jsonhttp.Write(w, http.StatusBadRequest, ar)
		return
	} else if st := c.fsm.State(); cmd.Validate(st) != nil {
		// The state's index lets a proposer that retried after an uncertain
		// attempt wait for it and see whether its command was applied.
		ar.Index, ar.Epoch, ar.Refused = st.Index, st.Epoch, unwrapInvalid(cmd.Validate(st))
	} else {
		res, err := c.applyLocal(data)
		ar.Index, ar.Epoch = res.Index, res.Epoch
		switch {
		case errors.Is(err, errRetry):
			ar.Retry, ar.MaybeApplied, ar.Error = true, errors.Is(err, errMaybeApplied), err.Error()
		case errors.Is(err, fsm.ErrInvalidCommand):
			ar.Refused = unwrapInvalid(err)
		case err != nil:
			ar.Error = err.Error()
		}
	}
	jsonhttp.Write(w, http.StatusOK, ar)
}

// unwrapInvalid returns err's message without the sentinel's prefix, so the
// forwarding replica can wrap it again.
func unwrapInvalid(err error) string {
	msg := err.Error()
	prefix := fsm.ErrInvalidCommand.Error() + ": "
	if len(msg) > len(prefix) && msg[:len(prefix)] == prefix {
		return msg[len(prefix):]
	}
	return msg
}
