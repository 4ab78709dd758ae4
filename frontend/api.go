package frontend

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/memcache/memcache/internal/jsonhttp"
)

// statusOf maps an error of the read and write paths to an HTTP status.
func statusOf(err error) int {
	var maxBytes *http.MaxBytesError
	switch {
	case errors.Is(err, ErrBadKey), errors.Is(err, ErrNotImage), errors.Is(err, errBadForm):
		return http.StatusBadRequest
	case errors.Is(err, ErrTooLarge), errors.As(err, &maxBytes):
		return http.StatusRequestEntityTooLarge
	case errors.Is(err, ErrNotFound):
		return http.StatusNotFound
	case errors.Is(err, ErrUnavailable):
		return http.StatusServiceUnavailable
	default:
		return http.StatusInternalServerError
	}
}

var errBadForm = errors.New("malformed form")

// readUpload parses a multipart upload and returns its key and file bytes.
func (f *Frontend) readUpload(w http.ResponseWriter, r *http.Request) (string, []byte, error) {
	// Room for the form's other fields and boundaries beside the file.
	r.Body = http.MaxBytesReader(w, r.Body, f.cfg.MaxUpload+64<<10)
	ct, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || ct != "multipart/form-data" {
		return "", nil, fmt.Errorf("%w: want multipart/form-data with fields key and file", errBadForm)
	}
	if err := r.ParseMultipartForm(f.cfg.MaxUpload + 64<<10); err != nil {
		var maxBytes *http.MaxBytesError
		if errors.As(err, &maxBytes) {
			return "", nil, fmt.Errorf("%w: the upload is over the %d-byte limit", ErrTooLarge, f.cfg.MaxUpload)
		}
		return "", nil, fmt.Errorf("%w: %v", errBadForm, err)
	}
	defer r.MultipartForm.RemoveAll()
	var key string
	if v := r.MultipartForm.Value["key"]; len(v) > 0 {
		key = v[0]
	}
	if err := ValidateKey(key); err != nil {
		return "", nil, err
	}
	file, hdr, err := r.FormFile("file")
	if err != nil {
		return "", nil, fmt.Errorf("%w: missing file field", errBadForm)
	}
	defer file.Close()
	if hdr.Size > f.cfg.MaxUpload {
		return "", nil, fmt.Errorf("%w: %d bytes, the limit is %d", ErrTooLarge, hdr.Size, f.cfg.MaxUpload)
	}
	data, err := io.ReadAll(io.LimitReader(file, f.cfg.MaxUpload+1))
	if err != nil {
		return "", nil, fmt.Errorf("%w: reading file: %v", errBadForm, err)
	}
	if len(data) == 0 {
		return "", nil, fmt.Errorf("%w: the file is empty", ErrNotImage)
	}
	return key, data, nil
}

func (f *Frontend) apiUpload(w http.ResponseWriter, r *http.Request) {
	key, data, err := f.readUpload(w, r)
	if err == nil {
		_, err = f.Put(r.Context(), key, data)
	}
	if err != nil {
		code := statusOf(err)
		if code == http.StatusServiceUnavailable {
			w.Header().Set("Retry-After", "1")
		} else if code >= 500 {
			f.log.Error("upload failed", "err", err)
		}
		jsonhttp.TesterError(w, code, "%v", err)
		return
	}
	jsonhttp.Write(w, http.StatusOK, map[string]any{"success": "true", "key": key})
}

func (f *Frontend) apiListKeys(w http.ResponseWriter, r *http.Request) {
	entries, err := f.List(r.Context())
	if err != nil {
		jsonhttp.TesterError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	keys := make([]string, 0, len(entries))
	for _, e := range entries {
		keys = append(keys, e.Key)
	}
	jsonhttp.Write(w, http.StatusOK, map[string]any{"success": "true", "keys": keys})
}

// pathKey returns the unescaped key after prefix in r's escaped path.
func pathKey(r *http.Request, prefix string) (string, error) {
	key, err := url.PathUnescape(strings.TrimPrefix(r.URL.EscapedPath(), prefix))
	if err != nil {
		return "", fmt.Errorf("%w: not a valid path-escaped key", ErrBadKey)
	}
	return key, ValidateKey(key)
}

func (f *Frontend) apiKey(w http.ResponseWriter, r *http.Request) {
	key, err := pathKey(r, "/api/key/")
	if err == nil {
		var img Image
		img, err = f.Get(r.Context(), key)
		if err == nil {
			jsonhttp.Write(w, http.StatusOK, map[string]any{"success": "true", "content": base64.StdEncoding.EncodeToString(img.Data)})
			return
		}
	}
	jsonhttp.TesterError(w, statusOf(err), "%v", err)
}

// serveImage serves GET /images/{key}: the bytes with their content type
// and ETag, or 304 when If-None-Match matches. It makes one read (one GET
// at the owner node, which revalidates the client's copy when the frontend
// holds none: a browser's revalidation moves no image bytes), or none when
// the near-cache answers; a cache hit too large for the near-cache is
// streamed from the node to the client without being buffered here.
func (f *Frontend) serveImage(w http.ResponseWriter, r *http.Request) {
	key, err := pathKey(r, "/images/")
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	img, err := f.read(r.Context(), key, true, r.Header.Get("If-None-Match"))
	if err != nil {
		http.Error(w, err.Error(), statusOf(err))
		return
	}
	defer img.close()
	writeImageHeaders(w, img.ContentType, img.ETag, img.size, source(img.Image))
	if img.notModified {
		writeNotModified(w)
		return
	}
	if notModified(w, r, img.ETag) {
		return
	}
	if img.body == nil {
		w.Write(img.Data)
		return
	}
	bufp := f.copyBufs.Get().(*[]byte)
	defer f.copyBufs.Put(bufp)
	io.CopyBuffer(w, img.body, *bufp) // on error the client sees a short body
}

func writeImageHeaders(w http.ResponseWriter, contentType, etag string, size int, source string) {
	h := w.Header()
	h["Etag"] = []string{etag}
	h["Cache-Control"] = []string{"no-cache"} // revalidate: a key can be replaced
	h["Content-Type"] = []string{contentType}
	h["Content-Length"] = []string{strconv.Itoa(size)}
	h["X-Memcache-Source"] = []string{source}
}

// notModified answers 304 when r's If-None-Match lists etag.
func notModified(w http.ResponseWriter, r *http.Request, etag string) bool {
	match := r.Header.Get("If-None-Match")
	if match == "" || etag == "" || !etagMatches(match, etag) {
		return false
	}
	writeNotModified(w)
	return true
}

// writeNotModified answers 304, without the headers of a body.
func writeNotModified(w http.ResponseWriter) {
	h := w.Header()
	delete(h, "Content-Type")
	delete(h, "Content-Length")
	w.WriteHeader(http.StatusNotModified)
}

func source(img Image) string {
	if img.FromCache {
		return "cache"
	}
	return "store"
}

// etagMatches reports whether an If-None-Match header lists etag (or *).
func etagMatches(header, etag string) bool {
	for _, t := range strings.Split(header, ",") {
		t = strings.TrimPrefix(strings.TrimSpace(t), "W/")
		if t == etag || t == "*" {
			return true
		}
	}
	return false
}

// Deadlines of one attempt to have a manager answer an admin call. A
// manager that does not answer in time (paused, cut off), cannot be reached,
// or answers 502/503/504 (no leader, or its leader did not answer) is left
// for the next one. Every admin call is idempotent in effect (absolute
// config values and pool sizes; a repeated delete-all deletes what the first
// one did), so asking the next manager after a timeout is safe.
const (
	// adminReadTimeout bounds getNumNodes, getRate and configure_cache
	// without numNodes: a manager answers them from its state or one commit.
	adminReadTimeout = 5 * time.Second
	// adminResizeTimeout bounds configure_cache with numNodes: a resize may
	// start nodes (the manager's own write timeout is 90 s).
	adminResizeTimeout = 100 * time.Second
	// adminDeleteAllTimeout bounds delete_all: the manager commits it, then
	// has a frontend delete every row, cached copy and object, trying each
	// frontend for up to 30 s.
	adminDeleteAllTimeout = 2 * time.Minute
	// adminProbeTimeout bounds the /healthz probe that precedes an attempt
	// with a long deadline (resize, delete-all): a paused or cut-off manager
	// is passed over in seconds instead of holding the call for minutes.
	adminProbeTimeout = 2 * time.Second
)

// adminTimeout returns the deadline of one attempt of r with body (see
// above). numNodes is looked for in the raw query and body: a false match
// only gives a call the longer deadline.
func adminTimeout(r *http.Request, body []byte) time.Duration {
	switch {
	case r.URL.Path == "/api/delete_all":
		return adminDeleteAllTimeout
	case r.URL.Path == "/api/configure_cache" &&
		(strings.Contains(r.URL.RawQuery, "numNodes") || bytes.Contains(body, []byte("numNodes"))):
		return adminResizeTimeout
	}
	return adminReadTimeout
}

// maxAdminBody bounds the body of an admin API request the frontend
// forwards; a manager takes no larger one either.
const maxAdminBody = 64 << 10

// proxyAdmin forwards an admin API request to a manager replica and
// returns its answer. It starts at the next manager in rotation and moves
// on to the next when one cannot be reached, or for a read (getNumNodes,
// getRate) when one does not answer within adminTimeout or answers 502,
// 503 or 504. A write (configure_cache, delete_all) goes to another
// manager only if it surely never reached the first (no connection, or no
// answer to the /healthz probe of adminProbeTimeout that precedes every
// write and every long call): a manager that took it may still apply it
// later, and a second copy could undo writes answered in between, so any
// other failure is answered 503, outcome unknown. A 503 that says the
// command is committed (HeaderCommitted) is the answer. The manager checks
// the admin token.
func (f *Frontend) proxyAdmin(w http.ResponseWriter, r *http.Request) ([]byte, int, bool) {
	body, err := io.ReadAll(io.LimitReader(r.Body, maxAdminBody+1))
	if err != nil {
		jsonhttp.TesterError(w, http.StatusBadRequest, "reading request: %v", err)
		return nil, 0, false
	}
	if len(body) > maxAdminBody {
		// Forwarding the first part would have the manager act on a
		// different request (a form cut short can still parse).
		jsonhttp.TesterError(w, http.StatusRequestEntityTooLarge, "the request body is over %d bytes", maxAdminBody)
		return nil, 0, false
	}
	managers := f.cfg.Managers()
	if len(managers) == 0 {
		jsonhttp.TesterError(w, http.StatusServiceUnavailable, "no manager replica is known to this frontend")
		return nil, 0, false
	}
	timeout := adminTimeout(r, body)
	write := isAdminWrite(r)
	start := int(f.adminNext.Add(1)-1) % len(managers)
	var lastErr error
	for i := range managers {
		m := managers[(start+i)%len(managers)]
		if timeout > adminReadTimeout || write {
			if err := f.probeManager(r.Context(), m); err != nil {
				lastErr = err
				f.log.Warn("admin call: manager did not answer its probe, trying the next", "manager", m, "path", r.URL.Path, "err", err)
				continue
			}
		}
		out, code, committed, err := f.adminAttempt(r, m, body, timeout)
		if committed != "" {
			// Committed but not yet carried out: sending it to another
			// manager would commit it again. The caller decides.
			w.Header().Set(HeaderCommitted, committed)
			return out, code, true
		}
		if err == nil && code != http.StatusBadGateway && code != http.StatusServiceUnavailable && code != http.StatusGatewayTimeout {
			return out, code, true
		}
		if write && !isDialError(err) {
			// The manager may have taken the write (a leader cut off may
			// commit it later still): sending it to another would let it
			// take effect twice, the late copy undoing writes made after
			// this call answered (the fault campaign saw a config revert).
			// The outcome is unknown; the caller decides.
			if err == nil {
				return out, code, true
			}
			jsonhttp.TesterError(w, http.StatusServiceUnavailable, "manager %s did not answer (%v); the call may or may not have taken effect", m, err)
			return nil, 0, false
		}
		if err == nil {
			err = fmt.Errorf("%s answered %d: %s", m, code, bytes.TrimSpace(out))
		}
		lastErr = err
		if r.Context().Err() != nil {
			break // the client went away
		}
		f.log.Warn("admin call: manager did not answer, trying the next", "manager", m, "path", r.URL.Path, "err", err)
	}
	jsonhttp.TesterError(w, http.StatusServiceUnavailable, "no manager replica answered: %v", lastErr)
	return nil, 0, false
}

// isAdminWrite reports whether r is an admin call that changes something
// (configure_cache, delete_all); the rest only read.
func isAdminWrite(r *http.Request) bool {
	return r.URL.Path == "/api/configure_cache" || r.URL.Path == "/api/delete_all"
}

// isDialError reports whether err means no connection was made: the
// request was never sent.
func isDialError(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

// probeManager asks manager m's /healthz within adminProbeTimeout: any
// answer (even "halted") means the process runs and reads its socket.
func (f *Frontend) probeManager(ctx context.Context, m string) error {
	ctx, cancel := context.WithTimeout(ctx, adminProbeTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, m+"/healthz", nil)
	if err != nil {
		return err
	}
	resp, err := f.client.Do(req)
	if err != nil {
		return fmt.Errorf("manager %s: probe: %w", m, err)
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, 4<<10))
	resp.Body.Close()
	return nil
}

// adminAttempt sends r (with body) to manager m within timeout. committed
// is the manager's HeaderCommitted, if it answered one.
func (f *Frontend) adminAttempt(r *http.Request, m string, body []byte, timeout time.Duration) (out []byte, code int, committed string, err error) {
	ctx, cancel := context.WithTimeout(r.Context(), timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, r.Method, m+r.URL.RequestURI(), bytes.NewReader(body))
	if err != nil {
		return nil, 0, "", err
	}
	for _, h := range []string{"Authorization", "Content-Type"} {
		if v := r.Header.Get(h); v != "" {
			req.Header.Set(h, v)
		}
	}
	resp, err := f.client.Do(req)
	if err != nil {
		return nil, 0, "", fmt.Errorf("manager %s: %w", m, err)
	}
	defer resp.Body.Close()
	out, err = io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, 0, "", fmt.Errorf("manager %s: reading the answer: %w", m, err)
	}
	return out, resp.StatusCode, resp.Header.Get(HeaderCommitted), nil
}

func copyJSON(w http.ResponseWriter, code int, body []byte) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	w.Write(body)
}

// apiAdmin forwards configure_cache, getNumNodes and getRate.
func (f *Frontend) apiAdmin(w http.ResponseWriter, r *http.Request) {
	if body, code, ok := f.proxyAdmin(w, r); ok {
		copyJSON(w, code, body)
	}
}

// apiDeleteAll forwards delete_all to a manager and copies its answer: the
// manager commits a new generation and answers 200 only once a frontend has
// deleted every row, cached copy and object (deleteall.go).
func (f *Frontend) apiDeleteAll(w http.ResponseWriter, r *http.Request) {
	if body, code, ok := f.proxyAdmin(w, r); ok {
		copyJSON(w, code, body)
	}
}
