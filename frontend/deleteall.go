package frontend

// Delete-all, and the internal protocol by which a manager has a frontend
// carry it out. Both halves (the handler and its only client, DeleteAll)
// are here.
//
// Semantics. A delete-all is a generation G committed in the Raft log
// (fsm.DeleteAll). A frontend carries G out with deleteAllAt: in one SQL
// transaction it deletes every row and records G (keyindex.DeleteAllAt),
// having first cleared every pool member's cache with a floor counting G
// (so no node serves an image from before the commit after it); then it
// clears the caches again and deletes the objects the deleted rows named.
// The delete-all linearizes at that SQL commit:
//
//   - an upload whose row commits after it survives. In particular an upload
//     that begins after the delete-all was answered always survives: the
//     answer comes only after the commit (and after the caches and objects
//     are gone), and since G is recorded in the same transaction, a later
//     execution of G (by a lagging frontend, or one that restarts) is a
//     no-op;
//   - an upload concurrent with it survives or not, but never leaves a row
//     without its blob: only the objects of the rows the transaction deleted
//     are removed, and an upload writes its blob before its row.
//
// Who carries it out. The manager that committed G asks a frontend (found by
// gossip) with DeleteAll and answers its caller only when one has done it
// (web.API). Every frontend also runs G when its pool-state watch delivers
// it, as a backstop for a manager that could not reach any frontend; that
// runs on the frontend's delete worker, never on the watch loop.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/cenkalti/backoff/v5"

	"github.com/memcache/memcache/blob"
	"github.com/memcache/memcache/internal/jsonhttp"
	"github.com/memcache/memcache/internal/pool"
)

// DeleteAllPath is the frontend's internal endpoint that carries out a
// delete-all generation (cluster secret required):
//
//	POST /internal/v1/delete_all {"generation":G}
//	  200 {"generation":G}     rows, cached copies and objects are gone
//	  400                      malformed body, or generation 0
//	  401                      missing or wrong cluster secret
//	  403                      the frontend has no cluster secret: the route is off
//	  409                      G is not committed (checked against the managers)
//	  500                      the stores or a cache node failed; ask again
const DeleteAllPath = "/internal/v1/delete_all"

// HeaderCommitted is set, with the command's Raft index, on a manager's 503 answer
// to delete_all or clear_caches when the command is committed but was not
// confirmed carried out (the data plane carries it out when its watch
// delivers it). Such an answer must not be sent to another manager: that
// would commit the command again.
const HeaderCommitted = "X-Memcache-Committed"

// deleteAllBody is the request and answer body of DeleteAllPath.
type deleteAllBody struct {
	Generation uint64 `json:"generation"`
}

// handleDeleteAll carries out the generation in the body, synchronously.
// A generation already done (by this or another frontend) still clears
// every cache, so the answer always means the cached copies are gone.
func (f *Frontend) handleDeleteAll(w http.ResponseWriter, r *http.Request) {
	var body deleteAllBody
	dec := json.NewDecoder(io.LimitReader(r.Body, 4<<10))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&body); err != nil || dec.More() {
		jsonhttp.TesterError(w, http.StatusBadRequest, `want a JSON body {"generation":G}`)
		return
	}
	if body.Generation == 0 {
		jsonhttp.TesterError(w, http.StatusBadRequest, "generation must be at least 1")
		return
	}
	// A generation above the cluster's would be recorded as done and make
	// every real delete-all up to it a no-op: carry out only a committed one.
	if err := f.checkCommitted(r.Context(), body.Generation); err != nil {
		jsonhttp.TesterError(w, http.StatusConflict, "%v", err)
		return
	}
	if err := f.deleteAllAt(r.Context(), body.Generation, true); err != nil {
		f.log.Error("delete all", "generation", body.Generation, "err", err)
		jsonhttp.TesterError(w, http.StatusInternalServerError, "delete-all generation %d: %v", body.Generation, err)
		return
	}
	jsonhttp.Write(w, http.StatusOK, body)
}

// checkCommitted reports whether delete-all generation gen is committed:
// the frontend's view says so, or else a consistent read from a manager
// replica (each within its deadline, then the next) does.
func (f *Frontend) checkCommitted(ctx context.Context, gen uint64) error {
	if v := f.view(); v != nil && gen <= v.DeleteGen {
		return nil
	}
	var errs []error
	for _, m := range f.cfg.Managers() {
		v, err := pool.Current(ctx, f.client, m)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if gen <= v.DeleteGen {
			return nil
		}
		return fmt.Errorf("delete-all generation %d is not committed: the cluster is at %d", gen, v.DeleteGen)
	}
	return fmt.Errorf("delete-all generation %d could not be checked against the managers: %w", gen, errors.Join(append(errs, errors.New("no manager answered"))...))
}

// DeleteAll asks the frontend at baseURL to carry out delete-all generation
// gen, through client (which must carry the cluster secret), and returns nil
// only when the frontend answered that its rows, cached copies and objects
// are gone. ctx bounds the call.
func DeleteAll(ctx context.Context, client *http.Client, baseURL string, gen uint64) error {
	b, err := json.Marshal(deleteAllBody{Generation: gen})
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimSuffix(baseURL, "/")+DeleteAllPath, bytes.NewReader(b))
	if err != nil {
		return fmt.Errorf("frontend %s: %w", baseURL, err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("frontend %s: %w", baseURL, err)
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		return fmt.Errorf("frontend %s: reading the answer: %w", baseURL, err)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("frontend %s: %s: %s", baseURL, resp.Status, bytes.TrimSpace(out))
	}
	var ans deleteAllBody
	if err := json.Unmarshal(out, &ans); err != nil || ans.Generation != gen {
		return fmt.Errorf("frontend %s: unexpected answer %q", baseURL, out)
	}
	return nil
}

// deleteAllTimeout bounds one run of the delete worker.
const deleteAllTimeout = 2 * time.Minute

// handDelete gives the delete worker generation gen, if it is newer than
// the one it holds, and returns at once: the watch loop never waits for a
// delete-all.
func (f *Frontend) handDelete(gen uint64) {
	f.pendingMu.Lock()
	if gen > f.pendingGen {
		f.pendingGen = gen
	}
	f.pendingMu.Unlock()
	select {
	case f.deleteWake <- struct{}{}:
	default: // already woken; it will read the newest generation
	}
}

// runDeletes is the delete worker: until ctx is done it carries out the
// newest generation handed over (older ones it skipped are covered by it),
// retrying with jittered backoff on failure.
func (f *Frontend) runDeletes(ctx context.Context) {
	var done uint64 // the newest generation carried out (or found done) here
	b := &backoff.ExponentialBackOff{InitialInterval: time.Second, RandomizationFactor: 0.5, Multiplier: 2, MaxInterval: time.Minute}
	var retry <-chan time.Time // set while a failed run waits to be retried
	for {
		select {
		case <-ctx.Done():
			return
		case <-f.deleteWake:
		case <-retry:
		}
		retry = nil
		f.pendingMu.Lock()
		gen := f.pendingGen
		f.pendingMu.Unlock()
		if gen <= done {
			continue
		}
		rctx, cancel := context.WithTimeout(ctx, deleteAllTimeout)
		err := f.deleteAllAt(rctx, gen, false)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			wait := b.NextBackOff()
			f.log.Error("delete all (from the pool state); will retry", "generation", gen, "retry_in", wait, "err", err)
			retry = time.After(wait)
			continue
		}
		done = gen
		b.Reset()
	}
}

// deleteAllAt carries out the delete-all of generation gen once (see the
// semantics at the top of this file): it clears every pool member's cache,
// removes every row, recording gen in the index in the same transaction
// (with the rows' objects, as orphans), clears the caches again, then
// removes the orphaned objects. A member that cannot be cleared first
// stops it before any row is deleted (the caller retries).
// If gen was already done it deletes no row, but with clearIfDone still
// clears the caches, and it still removes orphans an earlier run left. Runs
// are serialised.
func (f *Frontend) deleteAllAt(ctx context.Context, gen uint64, clearIfDone bool) error {
	f.deleteMu.Lock()
	defer f.deleteMu.Unlock()
	// Clear every cache before the rows go, raising the floors to gen: from
	// the commit on, no node may serve an image from before it (a node that
	// has not yet seen gen in its view would, until it does), and fills of
	// what reads load meanwhile are stamped below gen and refused.
	if err := f.clearCaches(ctx, gen); err != nil {
		return fmt.Errorf("before deleting the rows: %w", err)
	}
	_, done, err := f.index.DeleteAllAt(ctx, gen)
	if err != nil {
		return fmt.Errorf("key index: %w", err)
	}
	f.deleted(gen)
	if !done || clearIfDone {
		// The nodes clear when they see the generation, but a read between
		// that and the rows' deletion may have filled them again: clear again.
		if err := f.clearCaches(ctx, gen); err != nil {
			return err
		}
	}
	return f.deleteOrphans(ctx, gen)
}

// deleteOrphans deletes the objects whose rows a delete-all removed (this
// run's, and any an earlier run left because it failed or was cut short),
// forgetting each once it is gone. It fails if any is left.
func (f *Frontend) deleteOrphans(ctx context.Context, gen uint64) error {
	names, err := f.index.Orphans(ctx)
	if err != nil {
		return fmt.Errorf("key index: %w", err)
	}
	var failed int
	for _, name := range names {
		err := f.blobs.Delete(ctx, name)
		if err == nil || errors.Is(err, blob.ErrNotFound) {
			err = f.index.ForgetOrphan(ctx, name)
		}
		if err != nil {
			failed++
			f.log.Warn("deleting an object of a delete-all", "object", name, "err", err)
		}
	}
	if len(names) > 0 {
		f.log.Info("objects of deleted rows removed", "generation", gen, "objects", len(names), "failed", failed)
	}
	if failed > 0 {
		return fmt.Errorf("blob store: %d of %d objects not deleted (they are retried on the next run)", failed, len(names))
	}
	return nil
}

// clearCaches asks every pool member to drop its whole cache after the
// delete-all of generation deleteGen, each within the node client's
// deadline, raising each node's floor to the cache generation after it so
// that a fill of what a read loaded before is refused.
func (f *Frontend) clearCaches(ctx context.Context, deleteGen uint64) error {
	v := f.view()
	if v == nil {
		return fmt.Errorf("clearing caches: %w: no pool view yet", ErrUnavailable)
	}
	gen := v.ClearGen + max(v.DeleteGen, deleteGen)
	var errs []error
	for _, m := range v.Members {
		if err := f.nodes.Clear(ctx, m.HTTP, gen); err != nil {
			errs = append(errs, fmt.Errorf("node %s: %w", m.ID, err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("clearing caches: %w", err)
	}
	return nil
}
