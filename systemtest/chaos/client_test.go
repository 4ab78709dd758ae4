package chaos

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"image"
	"image/png"
	"io"
	"math/rand/v2"
	"mime/multipart"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/memcache/memcache/internal/history"
)

// marker precedes a write's content id in the bytes it uploads: the PNG is
// followed by marker and the id, which the frontend stores and serves as
// given, so every read names the write it saw.
const marker = "\nmemcache-chaos:"

// opTimeout bounds one client operation: past it the operation's outcome
// is unknown (it may still take effect).
const opTimeout = 10 * time.Second

// workload drives the clients: each loops over random operations on a
// small key set through a random frontend, recording each in rec.
type workload struct {
	s    *system
	rec  *history.Recorder
	keys []string
	png  []byte
	seq  atomic.Int64

	// counts of answers by kind and status, for the report.
	mu      sync.Mutex
	answers map[string]int
}

func newWorkload(s *system, rec *history.Recorder, numKeys int) *workload {
	img := image.NewGray(image.Rect(0, 0, 4, 4))
	var b bytes.Buffer
	if err := png.Encode(&b, img); err != nil {
		s.t.Fatal(err)
	}
	w := &workload{s: s, rec: rec, png: b.Bytes(), answers: map[string]int{}}
	run := randomHex(3)
	for i := range numKeys {
		w.keys = append(w.keys, fmt.Sprintf("chaos-%s-%02d", run, i))
	}
	return w
}

func (w *workload) count(kind string, code int, err error) {
	k := fmt.Sprintf("%s %d", kind, code)
	if err != nil && code == 0 {
		k = kind + " error"
	}
	w.mu.Lock()
	w.answers[k]++
	w.mu.Unlock()
}

// frontendURL is the public base URL of frontend i.
func (w *workload) frontendURL(i int) string {
	return "http://" + w.s.frontends[i].hostPort(frontendHTTPPort)
}

func (w *workload) managerURL(i int) string {
	return "http://" + w.s.managers[i].hostPort(managerHTTPPort)
}

// client runs operations until ctx is done.
func (w *workload) client(ctx context.Context, id int, rng *rand.Rand) {
	for ctx.Err() == nil {
		fe := rng.IntN(len(w.s.frontends))
		key := w.keys[rng.IntN(len(w.keys))]
		switch r := rng.Float64(); {
		case r < 0.35:
			w.write(id, fe, key)
		case r < 0.62:
			w.readImage(id, fe, key, false)
		case r < 0.90:
			w.readAPI(id, fe, key, false)
		default:
			w.list(id, fe, false)
		}
	}
}

// admin runs the rarer operations until ctx is done: a delete-all every
// few seconds, configuration writes and reads, through a random entry
// point (a frontend forwards them; a manager replica forwards to its
// leader).
func (w *workload) admin(ctx context.Context, id int, rng *rand.Rand, deleteEvery time.Duration) {
	nextDelete := time.Now().Add(deleteEvery / 2)
	for ctx.Err() == nil {
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Duration(200+rng.IntN(600)) * time.Millisecond):
		}
		switch {
		case time.Now().After(nextDelete):
			nextDelete = time.Now().Add(deleteEvery/2 + time.Duration(rng.Int64N(int64(deleteEvery))))
			w.deleteAll(id, rng)
		case rng.IntN(2) == 0:
			w.configWrite(id, rng)
		default:
			w.configRead(id, rng)
		}
	}
}

// outcome classifies a write's answer: 2xx done, 4xx refused (no effect),
// a connection that could not be made failed (nothing was sent), anything
// else unknown.
func outcome(code int, err error) history.Outcome {
	var op *net.OpError
	switch {
	case err == nil && code/100 == 2:
		return history.OK
	case err == nil && code/100 == 4:
		return history.Failed
	case errors.As(err, &op) && op.Op == "dial":
		return history.Failed
	}
	return history.Unknown
}

func (w *workload) send(req *http.Request, out any) (int, []byte, error) {
	ctx, cancel := context.WithTimeout(req.Context(), opTimeout)
	defer cancel()
	return w.s.do(req.WithContext(ctx), out)
}

func (w *workload) write(client, fe int, key string) {
	id := fmt.Sprintf("c%d-%d", client, w.seq.Add(1))
	data := append(slices.Clone(w.png), marker+id...)
	var body bytes.Buffer
	mw := multipart.NewWriter(&body)
	mw.WriteField("key", key)
	fw, _ := mw.CreateFormFile("file", "image.png")
	fw.Write(data)
	mw.Close()
	req, _ := http.NewRequest(http.MethodPost, w.frontendURL(fe)+"/api/upload", &body)
	req.Header.Set("Content-Type", mw.FormDataContentType())
	call := w.rec.Now()
	code, b, err := w.send(req, nil)
	ret := w.rec.Now()
	oc := outcome(code, err)
	if oc == history.OK && !bytes.Contains(b, []byte(`"success":"true"`)) {
		oc = history.Unknown
	}
	w.count("upload", code, err)
	w.rec.Add(history.Op{Client: client, Kind: history.Write, Key: key, Value: id, Via: w.s.frontends[fe].name + " upload",
		Call: call, Return: ret, Outcome: oc, Err: errText(code, b, err)})
}

// contentID returns the id a write put in data, or an error if data is
// not one of the campaign's writes.
func contentID(data []byte) (string, error) {
	i := bytes.LastIndex(data, []byte(marker))
	if i < 0 {
		return "", fmt.Errorf("%d bytes without the campaign's marker", len(data))
	}
	return string(data[i+len(marker):]), nil
}

func (w *workload) readImage(client, fe int, key string, final bool) {
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, w.frontendURL(fe)+"/images/"+url.PathEscape(key), nil)
	call := w.rec.Now()
	resp, err := w.s.client.Do(req)
	var data []byte
	code := 0
	if err == nil {
		data, err = io.ReadAll(resp.Body)
		resp.Body.Close()
		code = resp.StatusCode
	}
	ret := w.rec.Now()
	w.count("image", code, err)
	op := history.Op{Client: client, Kind: history.Read, Key: key, Via: w.s.frontends[fe].name + " /images", Call: call, Return: ret, Final: final}
	switch {
	case err == nil && code == http.StatusOK:
		id, perr := contentID(data)
		if perr != nil {
			op.Err = perr.Error()
			op.Value = "?corrupt"
		} else {
			op.Value = id
		}
	case err == nil && code == http.StatusNotFound:
	default:
		op.Outcome, op.Err = history.Unknown, errText(code, data, err)
	}
	w.rec.Add(op)
}

func (w *workload) readAPI(client, fe int, key string, final bool) {
	req, _ := http.NewRequest(http.MethodPost, w.frontendURL(fe)+"/api/key/"+url.PathEscape(key), nil)
	var ans struct {
		Success string `json:"success"`
		Content string `json:"content"`
	}
	call := w.rec.Now()
	code, b, err := w.send(req, &ans)
	ret := w.rec.Now()
	w.count("api/key", code, err)
	op := history.Op{Client: client, Kind: history.Read, Key: key, Via: w.s.frontends[fe].name + " /api/key", Call: call, Return: ret, Final: final}
	switch {
	case err == nil && code == http.StatusOK && ans.Success == "true":
		data, derr := base64.StdEncoding.DecodeString(ans.Content)
		id, perr := contentID(data)
		if derr != nil || perr != nil {
			op.Err, op.Value = fmt.Sprint(derr, perr), "?corrupt"
		} else {
			op.Value = id
		}
	case err == nil && code == http.StatusNotFound:
	default:
		op.Outcome, op.Err = history.Unknown, errText(code, b, err)
	}
	w.rec.Add(op)
}

func (w *workload) list(client, fe int, final bool) {
	req, _ := http.NewRequest(http.MethodPost, w.frontendURL(fe)+"/api/list_keys", nil)
	var ans struct {
		Success string   `json:"success"`
		Keys    []string `json:"keys"`
	}
	call := w.rec.Now()
	code, b, err := w.send(req, &ans)
	ret := w.rec.Now()
	w.count("list_keys", code, err)
	op := history.Op{Client: client, Kind: history.List, Via: w.s.frontends[fe].name + " list_keys", Call: call, Return: ret, Final: final}
	if err == nil && code == http.StatusOK && ans.Success == "true" {
		for _, k := range ans.Keys {
			if slices.Contains(w.keys, k) {
				op.Keys = append(op.Keys, k)
			}
		}
	} else {
		op.Outcome, op.Err = history.Unknown, errText(code, b, err)
	}
	w.rec.Add(op)
}

// deleteAll sends a delete-all to a random frontend or manager replica.
func (w *workload) deleteAll(client int, rng *rand.Rand) {
	var base, via string
	if rng.IntN(2) == 0 {
		i := rng.IntN(len(w.s.frontends))
		base, via = w.frontendURL(i), w.s.frontends[i].name
	} else {
		i := rng.IntN(len(w.s.managers))
		base, via = w.managerURL(i), w.s.managers[i].name
	}
	req, _ := http.NewRequest(http.MethodPost, base+"/api/delete_all", nil)
	call := w.rec.Now()
	code, b, err := w.send(req, nil)
	ret := w.rec.Now()
	w.count("delete_all", code, err)
	oc := outcome(code, err)
	if oc == history.OK && !bytes.Contains(b, []byte(`"success":"true"`)) {
		oc = history.Unknown
	}
	w.rec.Add(history.Op{Client: client, Kind: history.DeleteAll, Via: via + " delete_all", Call: call, Return: ret, Outcome: oc, Err: errText(code, b, err)})
}

// configWrite sets the cache's capacity or policy (or both) through a
// random manager replica's PUT /v1/config/cache or a frontend's tester
// configure_cache.
func (w *workload) configWrite(client int, rng *rand.Rand) {
	set := map[string]string{}
	if rng.IntN(3) != 0 {
		set["capacity_mb"] = strconv.Itoa([]int{32, 48, 64, 96}[rng.IntN(4)])
	}
	if _, ok := set["capacity_mb"]; !ok || rng.IntN(2) == 0 {
		set["policy"] = []string{"LRU", "RR"}[rng.IntN(2)]
	}
	w.setConfig(client, rng, set)
}

// setConfig writes the fields of set, named as GET /v1/config names them.
func (w *workload) setConfig(client int, rng *rand.Rand, set map[string]string) {
	var req *http.Request
	var via string
	if rng.IntN(2) == 0 {
		i := rng.IntN(len(w.s.managers))
		body := map[string]any{}
		if v, ok := set["capacity_mb"]; ok {
			n, _ := strconv.Atoi(v)
			body["capacity_mb"] = n
		}
		if v, ok := set["policy"]; ok {
			body["policy"] = v
		}
		b, _ := json.Marshal(body)
		req, _ = http.NewRequest(http.MethodPut, w.managerURL(i)+"/v1/config/cache", bytes.NewReader(b))
		req.Header.Set("Content-Type", "application/json")
		via = w.s.managers[i].name + " PUT /v1/config/cache"
	} else {
		i := rng.IntN(len(w.s.frontends))
		q := url.Values{}
		if v, ok := set["capacity_mb"]; ok {
			q.Set("cacheSize", v)
		}
		if v, ok := set["policy"]; ok {
			q.Set("policy", v)
		}
		req, _ = http.NewRequest(http.MethodPost, w.frontendURL(i)+"/api/configure_cache?"+q.Encode(), nil)
		via = w.s.frontends[i].name + " configure_cache"
	}
	call := w.rec.Now()
	code, b, err := w.send(req, nil)
	ret := w.rec.Now()
	w.count("config write", code, err)
	w.rec.Add(history.Op{Client: client, Kind: history.ConfigWrite, Config: set, Via: via, Call: call, Return: ret,
		Outcome: outcome(code, err), Err: errText(code, b, err)})
}

// configRead reads the cache config from a random manager replica.
func (w *workload) configRead(client int, rng *rand.Rand) {
	i := rng.IntN(len(w.s.managers))
	req, _ := http.NewRequest(http.MethodGet, w.managerURL(i)+"/v1/config", nil)
	var ans struct {
		Cache struct {
			CapacityMB int    `json:"capacity_mb"`
			Policy     string `json:"policy"`
		} `json:"cache"`
	}
	call := w.rec.Now()
	code, b, err := w.send(req, &ans)
	ret := w.rec.Now()
	w.count("config read", code, err)
	op := history.Op{Client: client, Kind: history.ConfigRead, Via: w.s.managers[i].name + " GET /v1/config", Call: call, Return: ret}
	if err == nil && code == http.StatusOK {
		op.Config = map[string]string{"capacity_mb": strconv.Itoa(ans.Cache.CapacityMB), "policy": ans.Cache.Policy}
	} else {
		op.Outcome, op.Err = history.Unknown, errText(code, b, err)
	}
	w.rec.Add(op)
}

func errText(code int, body []byte, err error) string {
	switch {
	case err != nil && errors.Is(err, context.DeadlineExceeded):
		return "timed out"
	case err != nil:
		return err.Error()
	case code/100 != 2:
		return fmt.Sprintf("%d %s", code, strings.TrimSpace(string(body[:min(len(body), 200)])))
	}
	return ""
}
