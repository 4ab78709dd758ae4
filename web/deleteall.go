package web

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/memcache/memcache/frontend"
	"github.com/memcache/memcache/fsm"
	"github.com/memcache/memcache/internal/pool"
)

// Deadlines of the calls a manager makes to carry out a delete-all or a
// clear before it answers.
const (
	// frontendDeleteTimeout bounds one frontend's run of a delete-all; on
	// timeout the next frontend is asked.
	frontendDeleteTimeout = 30 * time.Second
	// nodeClearTimeout bounds one node's clear.
	nodeClearTimeout = 5 * time.Second
)

// errNotCarriedOut: the command is committed, but this replica could not
// confirm it was carried out; the data plane carries it out when it sees the
// new generation (frontends' and nodes' watches).
var errNotCarriedOut = errors.New("committed, not yet carried out")

// deleteAll commits a new delete-all generation, waits for this replica to
// apply it, and has a frontend carry it out (frontend.DeleteAll): the frontends
// are tried in random order, each within frontendDeleteTimeout. It returns
// nil only when one answered that every row, cached copy and object is gone;
// otherwise the error wraps errNotCarriedOut (or is the commit's).
func (a *API) deleteAll(ctx context.Context) (fsm.Result, uint64, error) {
	res, err := a.cluster.Apply(ctx, fsm.DeleteAll{})
	if err != nil {
		return res, 0, err
	}
	st, err := a.cluster.Wait(ctx, res.Index-1)
	if err != nil {
		return res, 0, fmt.Errorf("%w: delete-all at index %d: this replica did not apply it: %w", errNotCarriedOut, res.Index, err)
	}
	gen := st.DeleteGen // >= the generation committed; a newer one covers it
	fronts := a.cluster.Frontends()
	rand.Shuffle(len(fronts), func(i, j int) { fronts[i], fronts[j] = fronts[j], fronts[i] })
	errs := []error{}
	for _, u := range fronts {
		fctx, cancel := context.WithTimeout(ctx, frontendDeleteTimeout)
		err := frontend.DeleteAll(fctx, a.client, u, gen)
		cancel()
		if err == nil {
			// The frontend cleared the members of its pool view, which may
			// lag this replica's: clear every member this replica knows too.
			if err := a.clearMembers(ctx, st.View()); err != nil {
				return res, gen, fmt.Errorf("%w: delete-all generation %d: rows and objects are deleted, but not every cache confirmed it is cleared (the nodes clear when they see it): %w",
					errNotCarriedOut, gen, err)
			}
			return res, gen, nil
		}
		a.log.Warn("delete all: a frontend did not carry it out; trying the next", "generation", gen, "err", err)
		errs = append(errs, err)
		if ctx.Err() != nil {
			break
		}
	}
	if len(fronts) == 0 {
		errs = append(errs, errors.New("no frontend is known to this replica"))
	}
	return res, gen, fmt.Errorf("%w: delete-all generation %d is committed and will be carried out when a frontend sees it: %w",
		errNotCarriedOut, gen, errors.Join(errs...))
}

// clearCaches commits a new clear-caches generation, waits for this replica
// to apply it, and clears every pool member's cache directly, concurrently,
// each within nodeClearTimeout. It returns nil only when every member
// confirmed; otherwise the error wraps errNotCarriedOut (the nodes still
// clear when their watch delivers the generation).
func (a *API) clearCaches(ctx context.Context) (fsm.Result, error) {
	res, err := a.cluster.Apply(ctx, fsm.ClearCaches{})
	if err != nil {
		return res, err
	}
	st, err := a.cluster.Wait(ctx, res.Index-1)
	if err != nil {
		return res, fmt.Errorf("%w: clear at index %d: this replica did not apply it: %w", errNotCarriedOut, res.Index, err)
	}
	if err := a.clearMembers(ctx, st.View()); err != nil {
		return res, fmt.Errorf("%w: clear-caches generation %d is committed and nodes clear when they see it: %w", errNotCarriedOut, st.ClearGen, err)
	}
	return res, nil
}

// clearMembers empties the cache of every member of v, concurrently, each
// within nodeClearTimeout, raising each node's generation floor to v's (so
// no fill stamped older is accepted afterwards), and reports those that did
// not confirm.
func (a *API) clearMembers(ctx context.Context, v pool.View) error {
	errs := make([]error, len(v.Members))
	var wg sync.WaitGroup
	for i, m := range v.Members {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(ctx, nodeClearTimeout)
			defer cancel()
			if err := a.nodes.Clear(ctx, m.HTTP, v.Generation()); err != nil {
				errs[i] = fmt.Errorf("node %s: %w", m.ID, err)
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// markCommitted sets the headers of an answer that carries err from
// deleteAll or clearCaches: a command committed but not confirmed carried
// out gets frontend.HeaderCommitted with its Raft index, so a proxy does
// not send it to another manager (committing it again); any other failure
// may be retried.
func markCommitted(w http.ResponseWriter, err error, res fsm.Result) {
	if errors.Is(err, errNotCarriedOut) {
		w.Header().Set(frontend.HeaderCommitted, strconv.FormatUint(res.Index, 10))
		return
	}
	w.Header().Set("Retry-After", "1")
}

// statusOfCarryOut maps an error of deleteAll or clearCaches to a status:
// refused (400), or not committed or not confirmed (503).
func statusOfCarryOut(err error) int {
	if errors.Is(err, fsm.ErrInvalidCommand) {
		return http.StatusBadRequest
	}
	return http.StatusServiceUnavailable
}
