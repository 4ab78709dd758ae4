package node

// The client half of the node's HTTP API (the server half is http.go).
// Every caller in this repository — frontends, the managers' metrics and
// UI — talks to cache nodes through Client and nothing else.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/memcache/memcache/auth"
	"github.com/memcache/memcache/internal/pool"
)

// DefaultTimeout bounds one call to a node when ClientConfig.Timeout is zero.
const DefaultTimeout = 2 * time.Second

// Errors of the client; a *StatusError for one of these statuses wraps the
// matching sentinel, so callers test with errors.Is.
var (
	// ErrMiss is a GET of a key the node does not hold (404).
	ErrMiss = errors.New("key is not cached")
	// ErrConflict is a node refusing a request because the caller's view
	// and the node's disagree (409): the node holds an older region map
	// than the caller, the caller's map predates the node's ownership of
	// the region, or a fill's generation is below the node's floor.
	ErrConflict = errors.New("caller's and node's pool views disagree")
	// ErrExists is a conditional fill (OnlyIfAbsent) of a key already cached (412).
	ErrExists = errors.New("key is already cached")
	// ErrMisdirected is a request for a key whose region the node does not own (421).
	ErrMisdirected = errors.New("node does not own the key's region")
)

// StatusError is a node's answer other than success: its status, its
// message and the epoch it holds (from X-Memcache-Epoch, 0 if absent).
type StatusError struct {
	Code    int
	Message string
	Epoch   uint64
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("cache node: %d %s: %s", e.Code, http.StatusText(e.Code), e.Message)
}

// Unwrap returns the sentinel of e's status, if it has one.
func (e *StatusError) Unwrap() error {
	switch e.Code {
	case http.StatusNotFound:
		return ErrMiss
	case http.StatusConflict:
		return ErrConflict
	case http.StatusPreconditionFailed:
		return ErrExists
	case http.StatusMisdirectedRequest:
		return ErrMisdirected
	case http.StatusRequestEntityTooLarge:
		return ErrTooLarge
	}
	return nil
}

// ClientConfig configures a Client.
type ClientConfig struct {
	// HTTPClient makes the requests. If nil, the client uses its own
	// transport (a clone of http.DefaultTransport keeping up to 64 idle
	// connections per node) carrying Secret through auth.Transport.
	HTTPClient *http.Client
	// Secret is the cluster secret; used only when HTTPClient is nil (an
	// HTTPClient given must carry it itself).
	Secret string
	// Timeout bounds every call, a Get's body included; a shorter deadline
	// on the call's context wins. If zero, DefaultTimeout.
	Timeout time.Duration
}

// Client calls cache nodes' HTTP API. It is safe for concurrent use; one
// Client serves calls to any number of nodes, each named by its base URL
// (pool.Member.HTTP).
type Client struct {
	hc      *http.Client
	timeout time.Duration
}

// NewClient returns a client configured by cfg.
func NewClient(cfg ClientConfig) *Client {
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	hc := cfg.HTTPClient
	if hc == nil {
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.MaxIdleConnsPerHost = 64
		hc = &http.Client{Transport: &auth.Transport{Secret: cfg.Secret, Base: tr}}
	}
	return &Client{hc: hc, timeout: cfg.Timeout}
}

// Entry is a node's answer to Get.
type Entry struct {
	// NotModified is true when the node answered 304 to IfNoneMatch: the
	// caller's copy is current (a hit); Body is then nil.
	NotModified bool
	ContentType string
	ETag        string
	Size        int64 // the value's length; -1 if the node did not say
	// Body streams the value; the caller must close it. The call's
	// deadline runs until it is closed.
	Body io.ReadCloser
}

// GetOptions are the optional parts of a Get.
type GetOptions struct {
	// IfNoneMatch is the ETag of a copy the caller holds: a node holding
	// the same answers NotModified and moves no bytes.
	IfNoneMatch string
}

// Get asks the node at base for key, sending the caller's epoch. A miss is
// an error wrapping ErrMiss; 409 and 421 (the caller's or the node's view
// is behind) wrap ErrConflict and ErrMisdirected.
func (c *Client) Get(ctx context.Context, base, key string, epoch uint64, opt GetOptions) (*Entry, error) {
	hdr := http.Header{HeaderEpoch: {strconv.FormatUint(epoch, 10)}}
	if opt.IfNoneMatch != "" {
		hdr.Set("If-None-Match", opt.IfNoneMatch)
	}
	resp, cancel, err := c.do(ctx, http.MethodGet, keyURL(base, key), hdr, nil)
	if err != nil {
		return nil, err
	}
	e := &Entry{ETag: resp.Header.Get("ETag"), ContentType: resp.Header.Get("Content-Type"), Size: resp.ContentLength}
	if resp.StatusCode == http.StatusNotModified {
		drain(resp, cancel)
		e.NotModified, e.ContentType, e.Size = true, "", -1
		return e, nil
	}
	e.Body = cancelOnClose{resp.Body, cancel}
	return e, nil
}

// PutOptions are what a Put carries beside the value.
type PutOptions struct {
	Epoch       uint64 // the caller's region-map epoch
	Generation  uint64 // the caller's cache generation (pool.View.Generation) when the value was read
	ContentType string
	ETag        string
	// OnlyIfAbsent stores the value only if the key is not cached
	// (If-None-Match: *); otherwise the answer wraps ErrExists.
	OnlyIfAbsent bool
}

// Put stores value under key at the node at base. A refusal because of the
// caller's epoch or generation wraps ErrConflict; a key of a region the node
// does not own, ErrMisdirected; a value over the node's capacity, ErrTooLarge.
func (c *Client) Put(ctx context.Context, base, key string, value []byte, opt PutOptions) error {
	hdr := http.Header{
		HeaderEpoch:      {strconv.FormatUint(opt.Epoch, 10)},
		HeaderGeneration: {strconv.FormatUint(opt.Generation, 10)},
	}
	if opt.ContentType != "" {
		hdr.Set("Content-Type", opt.ContentType)
	}
	if opt.ETag != "" {
		hdr.Set(HeaderETag, opt.ETag)
	}
	if opt.OnlyIfAbsent {
		hdr.Set("If-None-Match", "*")
	}
	return c.call(ctx, http.MethodPut, keyURL(base, key), hdr, value, nil)
}

// Invalidate removes key from the node at base. Success means the node
// owned the key's region at an epoch not older than the caller's: the copy
// it would serve is gone. 409 and 421 wrap ErrConflict and ErrMisdirected.
func (c *Client) Invalidate(ctx context.Context, base, key string, epoch uint64) error {
	hdr := http.Header{HeaderEpoch: {strconv.FormatUint(epoch, 10)}}
	return c.call(ctx, http.MethodDelete, keyURL(base, key), hdr, nil, nil)
}

// Clear empties the cache of the node at base and raises its floor to
// generation: fills stamped with an older generation are refused after.
func (c *Client) Clear(ctx context.Context, base string, generation uint64) error {
	hdr := http.Header{HeaderGeneration: {strconv.FormatUint(generation, 10)}}
	return c.call(ctx, http.MethodDelete, base+"/cache", hdr, nil, nil)
}

// Stats returns the node's counters and the samples that ended after
// since (none if since is now or later; all it keeps if since is zero).
func (c *Client) Stats(ctx context.Context, base string, since time.Time) (Stats, error) {
	u := base + "/stats"
	if !since.IsZero() {
		u += "?" + url.Values{"since": {since.UTC().Format(time.RFC3339Nano)}}.Encode()
	}
	var st Stats
	err := c.call(ctx, http.MethodGet, u, nil, nil, &st)
	return st, err
}

// Config returns the cache config the node at base applies.
func (c *Client) Config(ctx context.Context, base string) (pool.CacheConfig, error) {
	var cfg pool.CacheConfig
	err := c.call(ctx, http.MethodGet, base+"/config", nil, nil, &cfg)
	return cfg, err
}

// SetConfig applies cfg at the node at base and returns the config applied.
func (c *Client) SetConfig(ctx context.Context, base string, cfg pool.CacheConfig) (pool.CacheConfig, error) {
	body, err := json.Marshal(cfg)
	if err != nil {
		return pool.CacheConfig{}, err
	}
	var got pool.CacheConfig
	err = c.call(ctx, http.MethodPut, base+"/config", jsonHeader(), body, &got)
	return got, err
}

// Regions returns the region map the node at base holds.
func (c *Client) Regions(ctx context.Context, base string) (Regions, error) {
	var m Regions
	err := c.call(ctx, http.MethodGet, base+"/regions", nil, nil, &m)
	return m, err
}

// RegionsApplied is the node's answer to SetRegions.
type RegionsApplied struct {
	Epoch   uint64 `json:"epoch"`
	Owned   []int  `json:"owned"`   // the regions the node now owns
	Dropped int    `json:"dropped"` // entries dropped
}

// SetRegions installs m at the node at base. A map older than the node's
// wraps ErrConflict.
func (c *Client) SetRegions(ctx context.Context, base string, m Regions) (RegionsApplied, error) {
	body, err := json.Marshal(m)
	if err != nil {
		return RegionsApplied{}, err
	}
	var got RegionsApplied
	err = c.call(ctx, http.MethodPut, base+"/regions", jsonHeader(), body, &got)
	return got, err
}

func jsonHeader() http.Header { return http.Header{"Content-Type": {"application/json"}} }

// keyURL is the URL of key at the node at base, the key path-escaped.
func keyURL(base, key string) string { return base + "/cache/" + url.PathEscape(key) }

// maxAnswer bounds the JSON answers read (30 minutes of 5-s samples take
// about 70 KB).
const maxAnswer = 8 << 20

// call makes one request and decodes a JSON answer into out (if not nil).
func (c *Client) call(ctx context.Context, method, u string, hdr http.Header, body []byte, out any) error {
	resp, cancel, err := c.do(ctx, method, u, hdr, body)
	if err != nil {
		return err
	}
	defer cancel()
	defer resp.Body.Close()
	if out == nil {
		io.Copy(io.Discard, io.LimitReader(resp.Body, maxAnswer))
		return nil
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxAnswer)).Decode(out); err != nil {
		return fmt.Errorf("cache node %s %s: decoding the answer: %w", method, u, err)
	}
	return nil
}

// do sends one request under the client's timeout. On success (2xx or 304)
// it returns the response and the cancel func of its deadline, which the
// caller runs once done with the body; any other status is returned as a
// *StatusError, the response closed.
func (c *Client) do(ctx context.Context, method, u string, hdr http.Header, body []byte) (*http.Response, context.CancelFunc, error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		cancel()
		return nil, nil, err
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		cancel()
		return nil, nil, err
	}
	if resp.StatusCode/100 == 2 || resp.StatusCode == http.StatusNotModified {
		return resp, cancel, nil
	}
	defer cancel()
	defer resp.Body.Close()
	serr := &StatusError{Code: resp.StatusCode, Message: http.StatusText(resp.StatusCode)}
	serr.Epoch, _ = strconv.ParseUint(resp.Header.Get(HeaderEpoch), 10, 64)
	var e struct {
		Error struct {
			Message string `json:"message"`
		} `json:"error"`
	}
	if json.NewDecoder(io.LimitReader(resp.Body, 64<<10)).Decode(&e) == nil && e.Error.Message != "" {
		serr.Message = e.Error.Message
	}
	return nil, nil, serr
}

func drain(resp *http.Response, cancel context.CancelFunc) {
	io.Copy(io.Discard, io.LimitReader(resp.Body, maxAnswer))
	resp.Body.Close()
	cancel()
}

// cancelOnClose ends a call's deadline when its body is closed.
type cancelOnClose struct {
	io.ReadCloser
	cancel context.CancelFunc
}

func (c cancelOnClose) Close() error {
	err := c.ReadCloser.Close()
	c.cancel()
	return err
}
