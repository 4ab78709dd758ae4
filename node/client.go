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
	"sync/atomic"
	"time"

	"github.com/memcache/memcache/auth"
	"github.com/memcache/memcache/internal/pool"
	"github.com/memcache/memcache/pki"
)

// Default deadlines of a Client (see ClientConfig).
const (
	// DefaultTimeout bounds the wait for a node's answer when
	// ClientConfig.Timeout is zero.
	DefaultTimeout = 2 * time.Second
	// DefaultBodyTimeout bounds the reading of a Get's body when
	// ClientConfig.BodyTimeout is zero.
	DefaultBodyTimeout = 30 * time.Second
)

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
	// ErrExists is a write the node kept out (412): a conditional fill
	// (OnlyIfAbsent) of a key already cached, or a versioned write of a key
	// holding a newer version or fenced against it.
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
	// TLS, if set, is the caller's certificate of the cluster CA (mutual
	// TLS with the nodes); used only when HTTPClient is nil.
	TLS *pki.TLS
	// Timeout bounds the wait for a node's answer: a Get's response
	// headers, and the whole of every other call (whose answers are
	// small). A shorter deadline on the call's context wins. If zero,
	// DefaultTimeout.
	Timeout time.Duration
	// BodyTimeout bounds the reading of a Get's body, from when its
	// headers arrive until the body is closed. A caller may stream the
	// body to a slow reader (the frontend copies a large image straight to
	// its HTTP client), so it is longer than Timeout: a 10 MB image takes
	// 30 s at 350 KB/s. A shorter deadline on the call's context wins. If
	// zero, DefaultBodyTimeout.
	BodyTimeout time.Duration
}

// Client calls cache nodes' HTTP API. It is safe for concurrent use; one
// Client serves calls to any number of nodes, each named by its base URL
// (pool.Member.HTTP).
type Client struct {
	hc *http.Client
	// errAnswer and errBody end a call whose answer or Get body is late;
	// both wrap context.DeadlineExceeded.
	timeout, bodyTimeout time.Duration
	errAnswer, errBody   error
}

// NewClient returns a client configured by cfg.
func NewClient(cfg ClientConfig) *Client {
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.BodyTimeout <= 0 {
		cfg.BodyTimeout = DefaultBodyTimeout
	}
	hc := cfg.HTTPClient
	if hc == nil {
		tr := pki.Transport(cfg.TLS)
		tr.MaxIdleConnsPerHost = 64
		hc = &http.Client{Transport: &auth.Transport{Secret: cfg.Secret, Base: tr}}
	}
	return &Client{hc: hc, timeout: cfg.Timeout, bodyTimeout: cfg.BodyTimeout,
		errAnswer: fmt.Errorf("cache node did not answer within %v: %w", cfg.Timeout, context.DeadlineExceeded),
		errBody:   fmt.Errorf("cache node value not read within %v: %w", cfg.BodyTimeout, context.DeadlineExceeded)}
}

// Entry is a node's answer to Get.
type Entry struct {
	// NotModified is true when the node answered 304 to IfNoneMatch: the
	// caller's copy is current (a hit); Body is then nil.
	NotModified bool
	ContentType string
	ETag        string
	Size        int64 // the value's length; -1 if the node did not say
	// Body streams the value; the caller must close it. Reading it is
	// bounded by ClientConfig.BodyTimeout, from when the headers arrived.
	Body io.ReadCloser
	// Lease is the read lease the node granted GetOptions.Holder (0: none),
	// counted from when the node read the value: the caller may serve its
	// copy until Lease after it sent the request.
	Lease time.Duration
}

// GetOptions are the optional parts of a Get.
type GetOptions struct {
	// IfNoneMatch is the ETag of a copy the caller holds: a node holding
	// the same answers NotModified and moves no bytes.
	IfNoneMatch string
	// Holder, if set, asks for a read lease for this near-cache holder
	// (see Poll).
	Holder string
}

// Get asks the node at base for key, sending the caller's epoch. A miss is
// a *StatusError wrapping ErrMiss; 409 and 421 (the caller's or the node's
// view is behind) wrap ErrConflict and ErrMisdirected. Timeout bounds the
// wait for the answer, BodyTimeout the reading of Entry.Body.
func (c *Client) Get(ctx context.Context, base, key string, epoch uint64, opt GetOptions) (*Entry, error) {
	hdr := http.Header{HeaderEpoch: {strconv.FormatUint(epoch, 10)}}
	if opt.IfNoneMatch != "" {
		hdr.Set("If-None-Match", opt.IfNoneMatch)
	}
	if opt.Holder != "" {
		hdr[HeaderReadLease] = []string{opt.Holder}
	}
	resp, d, err := c.send(ctx, http.MethodGet, keyURL(base, key), hdr, nil)
	if err != nil {
		return nil, err
	}
	switch {
	case resp.StatusCode == http.StatusNotFound:
		// The common miss of every cold read: its JSON message says
		// nothing the status does not.
		serr := &StatusError{Code: http.StatusNotFound, Message: ErrMiss.Error(), Epoch: epochOf(resp)}
		drain(resp, d)
		return nil, serr
	case !ok(resp):
		return nil, statusError(resp, d)
	}
	e := &Entry{ETag: resp.Header.Get("ETag"), ContentType: resp.Header.Get("Content-Type"), Size: resp.ContentLength}
	if v := resp.Header.Get(HeaderReadLeaseMs); v != "" {
		if ms, err := strconv.ParseInt(v, 10, 64); err == nil && ms > 0 && ms <= MaxReadLease.Milliseconds() {
			e.Lease = time.Duration(ms) * time.Millisecond
		}
	}
	if resp.StatusCode == http.StatusNotModified {
		drain(resp, d)
		e.NotModified, e.ContentType, e.Size = true, "", -1
		return e, nil
	}
	d.toBody()
	e.Body = closeDeadline{resp.Body, d}
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
	// Version is the key index version of the value (0: unversioned); a
	// node holding a newer one, or fencing older ones, refuses the write
	// (ErrExists). Fence is the upload's fence token (see Fence).
	Version uint64
	Fence   string
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
	if opt.Version > 0 {
		hdr.Set(HeaderVersion, strconv.FormatUint(opt.Version, 10))
	}
	if opt.Fence != "" {
		hdr.Set(HeaderFence, opt.Fence)
	}
	return c.call(ctx, http.MethodPut, keyURL(base, key), hdr, value, nil)
}

// FenceOptions say how Fence fences a key.
type FenceOptions struct {
	Epoch uint64 // the caller's region-map epoch
	// Token, if set, blocks fills and every write but one carrying it,
	// until that write (an upload's, after its row is committed).
	Token string
	// Version, if set, refuses writes older than it from now on; with
	// Token, it also ends that upload's block (its write failed).
	Version uint64
}

// Fence removes key's copy from the node at base and fences the key (see
// fence.go): before an upload commits its row, with the upload's Token;
// after, with the row's Version if the upload's own write failed. Success
// means the owner's copy is gone and the fence holds. Errors are as
// Invalidate's.
func (c *Client) Fence(ctx context.Context, base, key string, opt FenceOptions) error {
	hdr := http.Header{HeaderEpoch: {strconv.FormatUint(opt.Epoch, 10)}}
	if opt.Token != "" {
		hdr.Set(HeaderFence, opt.Token)
	}
	if opt.Version > 0 {
		hdr.Set(HeaderVersion, strconv.FormatUint(opt.Version, 10))
	}
	return c.call(ctx, http.MethodDelete, keyURL(base, key), hdr, nil, nil)
}

// Invalidate removes key from the node at base. Success means the node
// owned the key's region at an epoch not older than the caller's: the copy
// it would serve is gone. 409 and 421 wrap ErrConflict and ErrMisdirected.
func (c *Client) Invalidate(ctx context.Context, base, key string, epoch uint64) error {
	hdr := http.Header{HeaderEpoch: {strconv.FormatUint(epoch, 10)}}
	return c.call(ctx, http.MethodDelete, keyURL(base, key), hdr, nil, nil)
}

// Poll is a read lease holder's poll of the node at base (readlease.go):
// it acknowledges the revocations up to ack, reports hits reads served
// from the holder's copies, and returns the revocations queued, waiting
// for one until the node's poll wait ends (up to wait plus Timeout).
func (c *Client) Poll(ctx context.Context, base, holder string, ack, hits uint64, wait time.Duration) (Poll, error) {
	u := fmt.Sprintf("%s/leases/%s?ack=%d&hits=%d", base, url.PathEscape(holder), ack, hits)
	var p Poll
	resp, d, err := c.sendWithin(ctx, http.MethodGet, u, nil, nil, wait+c.timeout)
	if err != nil {
		return Poll{}, err
	}
	if !ok(resp) {
		return Poll{}, statusError(resp, d)
	}
	defer drain(resp, d)
	if err := json.NewDecoder(io.LimitReader(resp.Body, 8<<20)).Decode(&p); err != nil {
		return Poll{}, fmt.Errorf("cache node poll: %w", err)
	}
	return p, nil
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

// call makes one request and decodes a JSON answer into out (if not nil),
// all within Timeout.
func (c *Client) call(ctx context.Context, method, u string, hdr http.Header, body []byte, out any) error {
	resp, d, err := c.send(ctx, method, u, hdr, body)
	if err != nil {
		return err
	}
	if !ok(resp) {
		return statusError(resp, d)
	}
	defer d.end()
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

// send sends one request and returns the node's answer, whatever its
// status, with the deadline of the call, which runs Timeout from now
// (cut short by ctx's) and which the caller ends once done with the body.
func (c *Client) send(ctx context.Context, method, u string, hdr http.Header, body []byte) (*http.Response, *deadline, error) {
	return c.sendWithin(ctx, method, u, hdr, body, c.timeout)
}

// sendWithin is send with the answer bounded by timeout.
func (c *Client) sendWithin(ctx context.Context, method, u string, hdr http.Header, body []byte, timeout time.Duration) (*http.Response, *deadline, error) {
	ctx, cancel := context.WithCancelCause(ctx)
	d := &deadline{c: c, cancel: cancel}
	d.timer = time.AfterFunc(timeout, d.fire)
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		d.end()
		return nil, nil, err
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		d.end()
		return nil, nil, err
	}
	return resp, d, nil
}

// ok reports whether resp is a success: 2xx, or 304 to a revalidation.
func ok(resp *http.Response) bool {
	return resp.StatusCode/100 == 2 || resp.StatusCode == http.StatusNotModified
}

func epochOf(resp *http.Response) uint64 {
	e, _ := strconv.ParseUint(resp.Header.Get(HeaderEpoch), 10, 64)
	return e
}

// statusError returns resp, a failure, as a *StatusError carrying the
// message of the node's JSON error body, and ends the call.
func statusError(resp *http.Response, d *deadline) error {
	defer d.end()
	defer resp.Body.Close()
	serr := &StatusError{Code: resp.StatusCode, Message: http.StatusText(resp.StatusCode), Epoch: epochOf(resp)}
	var e struct {
		Error struct {
			Message string `json:"message"`
		} `json:"error"`
	}
	if json.NewDecoder(io.LimitReader(resp.Body, 64<<10)).Decode(&e) == nil && e.Error.Message != "" {
		serr.Message = e.Error.Message
	}
	return serr
}

// maxDrain bounds what drain reads of a body nobody wants (the node's
// error and 304 bodies are empty or a line of JSON): a shorter body is read
// to its end so that its connection is reused.
const maxDrain = 64 << 10

// drain discards what is left of resp's body, closes it and ends the call.
func drain(resp *http.Response, d *deadline) {
	io.Copy(io.Discard, io.LimitReader(resp.Body, maxDrain))
	resp.Body.Close()
	d.end()
}

// deadline ends one call's context when its timer fires, with a cause
// wrapping context.DeadlineExceeded: the timer runs Timeout, then, once a
// Get's headers are in, BodyTimeout.
type deadline struct {
	c      *Client
	cancel context.CancelCauseFunc
	timer  *time.Timer
	body   atomic.Bool // the timer bounds a Get's body
}

func (d *deadline) fire() {
	if d.body.Load() {
		d.cancel(d.c.errBody)
	} else {
		d.cancel(d.c.errAnswer)
	}
}

// toBody re-arms the timer with BodyTimeout. A timer that has already
// fired has ended the call: that stands.
func (d *deadline) toBody() {
	if d.timer.Stop() {
		d.body.Store(true)
		d.timer.Reset(d.c.bodyTimeout)
	}
}

// end stops the timer and releases the call's context.
func (d *deadline) end() {
	d.timer.Stop()
	d.cancel(context.Canceled)
}

// closeDeadline ends a Get's deadline when its body is closed.
type closeDeadline struct {
	io.ReadCloser
	d *deadline
}

func (c closeDeadline) Close() error {
	err := c.ReadCloser.Close()
	c.d.end()
	return err
}
