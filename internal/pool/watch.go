package pool

// The watch protocol, both halves: the manager replicas serve
//
//	GET /v1/pool?index=N&wait=D[&consistent=1]
//
// and nodes and frontends follow it with Watch. The request blocks until
// the view's Index passes N (at most D, then it answers the current view).
// With consistent=1 the request is served by the leader after a Raft
// barrier, so the answer is at least as new as every change committed
// before the request: a watcher starts with such a read, and is ready only
// once it holds it. A replica that knows no leader answers 503 (it may be
// cut off from the majority and hold an old view), sending the watcher to
// another replica.
//
// # Leases
//
// A replica configured with a lease (LeasedHandler) grants one on every
// consistent answer, in the HeaderLease header: the watcher may act on the
// view it holds until the lease has run from the moment it sent the
// request, and no longer unless another answer renews it. A cache node
// serves reads only under a lease, so a node cut off from the leader stops
// serving its regions before the managers give them to another node (they
// wait gossip's detection and then the dead grace, at least the lease). A
// leased consistent request long-polls for a change before its barrier,
// and the replica caps that wait at a quarter of the lease: a renewal sent
// at s is answered by s+W+b (W the wait, b the barrier and round trip), the
// next one, sent at once, by s+2W+2b, and the lease from the first runs to
// s+L. With W = L/2 every cycle left the watcher unleased for 2b, a few
// milliseconds when idle and seconds when the cores are saturated; with
// W = L/4 the lease holds while b < L/4.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	"github.com/cenkalti/backoff/v5"
	"github.com/memcache/memcache/internal/jsonhttp"
)

// HeaderIndex carries the view's Index on watch responses.
const HeaderIndex = "X-Memcache-Index"

// HeaderLease carries the lease a consistent answer grants (a duration
// such as "1.5s"), counted from when the watcher sent the request.
const HeaderLease = "X-Memcache-Lease"

// Watch timings.
const (
	// DefaultWait is how long one watch request blocks by default. It is
	// short so that a watcher notices within seconds a replica that stops
	// answering (paused, or cut off without a reset).
	DefaultWait = 4 * time.Second
	// MaxWait bounds the wait a watcher may ask for.
	MaxWait = 5 * time.Minute
	// slack is how much longer than the wait a watcher gives a replica to
	// answer before it moves on.
	slack = 2 * time.Second
	// leaseSlack is how much longer a leased watcher gives a replica: its
	// answer waits on a Raft barrier at the leader, which a loaded machine
	// may take seconds to commit.
	leaseSlack = 4 * time.Second
)

// ErrNoLeader is returned by a Source that knows no leader.
var ErrNoLeader = errors.New("no leader known")

// Source is what a manager replica serves the watch from.
type Source interface {
	// View returns the replica's current view. It returns ErrNoLeader when
	// the replica knows no leader.
	View() (View, error)
	// WaitView returns the view once its Index is above after.
	WaitView(ctx context.Context, after uint64) (View, error)
	// ConsistentView returns a view at least as new as every change
	// committed before the call (the leader, after a barrier).
	ConsistentView(ctx context.Context) (View, error)
}

// Handler serves GET /v1/pool from src, granting no lease. Authentication
// is the caller's (mount it behind the cluster's middleware).
func Handler(src Source) http.Handler { return LeasedHandler(src, 0) }

// LeasedHandler is Handler granting lease (if positive) on every
// consistent answer; it caps a request's wait at lease/4 (see Leases above).
func LeasedHandler(src Source, lease time.Duration) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		var index uint64
		if v := q.Get("index"); v != "" {
			i, err := strconv.ParseUint(v, 10, 64)
			if err != nil {
				jsonhttp.Error(w, http.StatusBadRequest, "index %q is not an unsigned integer", v)
				return
			}
			index = i
		}
		wait := DefaultWait
		if v := q.Get("wait"); v != "" {
			d, err := time.ParseDuration(v)
			if err != nil || d < 0 {
				jsonhttp.Error(w, http.StatusBadRequest, "wait %q is not a duration such as 4s", v)
				return
			}
			wait = min(d, MaxWait)
		}
		if lease > 0 {
			wait = min(wait, lease/4)
		}
		var (
			v   View
			err error
		)
		consistent := q.Get("consistent") != ""
		if consistent && lease > 0 && wait > 0 {
			// A leased watcher renews with every answer: wait here (on the
			// leader: the request was forwarded) for a change first.
			ctx, cancel := context.WithTimeout(r.Context(), wait)
			src.WaitView(ctx, index)
			cancel()
			if r.Context().Err() != nil {
				return // the watcher went away
			}
		}
		if consistent {
			v, err = src.ConsistentView(r.Context())
		} else {
			v, err = src.View()
		}
		if err != nil {
			w.Header().Set("Retry-After", "1")
			jsonhttp.Error(w, http.StatusServiceUnavailable, "%v; ask another replica", err)
			return
		}
		if !consistent && v.Index <= index && wait > 0 {
			ctx, cancel := context.WithTimeout(r.Context(), wait)
			defer cancel()
			if nv, err := src.WaitView(ctx, index); err == nil {
				v = nv
			} else if r.Context().Err() != nil {
				return // the watcher went away
			}
		}
		w.Header().Set(HeaderIndex, strconv.FormatUint(v.Index, 10))
		if consistent && lease > 0 {
			w.Header().Set(HeaderLease, lease.String())
		}
		jsonhttp.Write(w, http.StatusOK, v)
	})
}

// WatchConfig configures Watch.
type WatchConfig struct {
	// Managers returns the base URLs of the manager replicas, in order of
	// preference. It is called again whenever the watcher fails over, so it
	// may follow gossip. Required.
	Managers func() []string
	// Client makes the requests; it carries the cluster's credentials. If
	// nil, http.DefaultClient.
	Client *http.Client
	// Wait is how long one blocking request may wait for a change. If zero,
	// DefaultWait. A replica that has not answered Wait + 2 s after a
	// request is left for the next.
	Wait time.Duration
	// Backoff is the first pause after every replica has failed in turn;
	// pauses grow to MaxBackoff, each jittered by ±50% so that watchers do
	// not come back in step. If zero, 100 ms and 2 s.
	Backoff, MaxBackoff time.Duration
	// OnLease, if set, makes every request a consistent one and is called
	// after each answer that grants a lease (after fn has the answer's
	// view, if it is newer): the view held is current until sent+lease.
	OnLease func(sent time.Time, lease time.Duration)
}

// Watch follows the view the manager replicas serve and calls fn with every
// view whose Index is newer than the last one it passed to fn, in order, on
// Watch's goroutine. The first view it passes is a consistent read: at least
// as new as the cluster's when Watch started. When a replica fails or does
// not answer in time, Watch moves on to the next, asking for changes after
// the index it already has, so no change is missed. It returns when ctx is
// done.
func Watch(ctx context.Context, cfg WatchConfig, log *slog.Logger, fn func(View)) {
	if cfg.Wait <= 0 {
		cfg.Wait = DefaultWait
	}
	if cfg.Backoff <= 0 {
		cfg.Backoff = 100 * time.Millisecond
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = 2 * time.Second
	}
	client := cfg.Client
	if client == nil {
		client = http.DefaultClient
	}
	b := &backoff.ExponentialBackOff{InitialInterval: cfg.Backoff, RandomizationFactor: 0.5, Multiplier: 2, MaxInterval: cfg.MaxBackoff}
	b.Reset()
	var (
		index      uint64
		consistent = true // until the first view arrives
		next       int    // position in Managers() of the replica to ask
		failures   int    // consecutive failures
		current    string
	)
	for ctx.Err() == nil {
		urls := cfg.Managers()
		if len(urls) == 0 {
			if !pause(ctx, b.NextBackOff()) {
				return
			}
			continue
		}
		u := urls[next%len(urls)]
		sent := time.Now()
		v, lease, err := poll(ctx, client, u, index, cfg.Wait, consistent || cfg.OnLease != nil)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			log.Debug("pool watch failed; trying another replica", "manager", u, "err", err)
			next++
			failures++
			if failures >= len(urls) {
				failures = 0
				if !pause(ctx, b.NextBackOff()) {
					return
				}
			}
			continue
		}
		if u != current {
			log.Info("watching pool state", "manager", u, "index", index)
			current = u
		}
		failures = 0
		b.Reset()
		if consistent || v.Index > index {
			consistent = false
			index = max(index, v.Index)
			fn(v)
		}
		if cfg.OnLease != nil && lease > 0 {
			cfg.OnLease(sent, lease)
		}
	}
}

func pause(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// Current asks the replica at base for a consistent view (served by the
// leader after a barrier): at least as new as every change committed
// before the call. It gives the replica the default slack to answer.
func Current(ctx context.Context, client *http.Client, base string) (View, error) {
	v, _, err := poll(ctx, client, base, 0, 0, true)
	return v, err
}

// poll makes one blocking request for the view after index. It returns
// the lease the answer grants (0 if none).
func poll(ctx context.Context, client *http.Client, base string, index uint64, wait time.Duration, consistent bool) (View, time.Duration, error) {
	timeout := wait + slack
	if consistent && index > 0 {
		timeout += leaseSlack // a leased watcher's (a first read is quick)
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	url := fmt.Sprintf("%s/v1/pool?index=%d&wait=%s", base, index, wait)
	if consistent {
		url += "&consistent=1"
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return View{}, 0, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return View{}, 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return View{}, 0, fmt.Errorf("%s: %s", resp.Status, b)
	}
	var v View
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&v); err != nil {
		return View{}, 0, fmt.Errorf("decoding pool view: %w", err)
	}
	if v.Members == nil {
		v.Members = []Member{}
	}
	var lease time.Duration
	if h := resp.Header.Get(HeaderLease); h != "" {
		if lease, err = time.ParseDuration(h); err != nil || lease < 0 {
			return View{}, 0, fmt.Errorf("%s header %q is not a duration", HeaderLease, h)
		}
	}
	return v, lease, nil
}
