// Package watch follows the pool state that the manager replicas serve,
// failing over from one replica to another.
package watch

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"time"

	"github.com/memcache/memcache/auth"
	"github.com/memcache/memcache/fsm"
)

// Config configures a watcher.
type Config struct {
	// Managers returns the base URLs of the manager replicas, in order of
	// preference. It is called again whenever the watcher fails over, so it
	// may follow gossip. Required.
	Managers func() []string
	// Secret is the cluster secret.
	Secret string
	// Wait is how long one blocking request may wait for a change. If zero, 30 s.
	Wait time.Duration
	// Backoff is the pause after every replica has failed in turn. If zero,
	// 100 ms, doubling up to 2 s.
	Backoff time.Duration
}

// Run long-polls GET /v1/pool on one replica and calls fn with every pool
// state whose index is newer than the last one it passed to fn. When the
// replica fails it moves on to the next, asking for changes after the
// index it already has, so no committed change is missed. It returns when
// ctx is done.
func Run(ctx context.Context, cfg Config, log *slog.Logger, fn func(fsm.State)) {
	if cfg.Wait <= 0 {
		cfg.Wait = 30 * time.Second
	}
	if cfg.Backoff <= 0 {
		cfg.Backoff = 100 * time.Millisecond
	}
	client := &http.Client{Transport: &auth.Transport{Secret: cfg.Secret}}
	var (
		index    uint64
		next     int // position in Managers() of the replica to ask
		failures int // consecutive failures
		backoff  = cfg.Backoff
		current  string
	)
	for ctx.Err() == nil {
		urls := cfg.Managers()
		if len(urls) == 0 {
			if !pause(ctx, backoff) {
				return
			}
			backoff = min(2*backoff, 2*time.Second)
			continue
		}
		u := urls[next%len(urls)]
		st, err := poll(ctx, client, u, index, cfg.Wait)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			log.Debug("pool watch failed; trying another replica", "manager", u, "err", err)
			next++
			failures++
			if failures >= len(urls) {
				failures = 0
				if !pause(ctx, backoff) {
					return
				}
				backoff = min(2*backoff, 2*time.Second)
			}
			continue
		}
		if u != current {
			log.Info("watching pool state", "manager", u, "index", index)
			current = u
		}
		failures, backoff = 0, cfg.Backoff
		if st.Index > index {
			index = st.Index
			fn(st)
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

// poll makes one blocking request for the state after index.
func poll(ctx context.Context, client *http.Client, base string, index uint64, wait time.Duration) (fsm.State, error) {
	ctx, cancel := context.WithTimeout(ctx, wait+10*time.Second)
	defer cancel()
	url := fmt.Sprintf("%s/v1/pool?index=%d&wait=%s", base, index, wait)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return fsm.State{}, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return fsm.State{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fsm.State{}, fmt.Errorf("%s: %s", resp.Status, b)
	}
	var st fsm.State
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return fsm.State{}, fmt.Errorf("decoding pool state: %w", err)
	}
	return st, nil
}
