package web_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/go-chi/chi/v5"
	"github.com/hashicorp/raft"

	"github.com/memcache/memcache/cluster"
	"github.com/memcache/memcache/fsm"
	"github.com/memcache/memcache/web"
)

// fakeCluster is a web.Cluster over a real FSM, as one replica that leads.
// With gate set, every Apply waits until gate commands have arrived before
// any is applied: it stands for two replicas that prepared their writes at
// the same time (or a leader change between them), which a process-local
// lock cannot serialise.
type fakeCluster struct {
	f *fsm.FSM

	mu      sync.Mutex // guards index, arrived
	index   uint64
	gate    int
	arrived int
	open    chan struct{} // closed when gate commands have arrived
}

func newFakeCluster(gate int) *fakeCluster {
	return &fakeCluster{f: fsm.New(), gate: gate, open: make(chan struct{})}
}

func (c *fakeCluster) Apply(ctx context.Context, cmd fsm.Command) (fsm.Result, error) {
	if err := cmd.Validate(c.f.State()); err != nil {
		return fsm.Result{}, err
	}
	data, err := fsm.Encode(cmd)
	if err != nil {
		return fsm.Result{}, err
	}
	c.mu.Lock()
	c.arrived++
	if c.arrived == c.gate {
		close(c.open)
	}
	c.mu.Unlock()
	if c.gate > 0 {
		select {
		case <-c.open:
		case <-ctx.Done():
			return fsm.Result{}, ctx.Err()
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.index++
	res := c.f.Apply(&raft.Log{Index: c.index, Type: raft.LogCommand, Data: data}).(fsm.Result)
	return res, res.Err
}

func (c *fakeCluster) State() fsm.State                                   { return c.f.State() }
func (c *fakeCluster) ConsistentState(context.Context) (fsm.State, error) { return c.f.State(), nil }
func (c *fakeCluster) Wait(ctx context.Context, after uint64) (fsm.State, error) {
	return c.f.Wait(ctx, after)
}
func (c *fakeCluster) ForwardToLeader(next http.Handler) http.Handler { return next }
func (c *fakeCluster) Status() cluster.Status                         { return cluster.Status{} }
func (c *fakeCluster) Frontends() []string                            { return nil }

// fakePool counts resizes.
type fakePool struct {
	mu      sync.Mutex
	resized []int
}

func (p *fakePool) Resize(_ context.Context, n int) (fsm.Result, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.resized = append(p.resized, n)
	return fsm.Result{}, nil
}

func (p *fakePool) calls() []int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]int(nil), p.resized...)
}

// serveAPI serves the API of one replica over c and p.
func serveAPI(t *testing.T, c web.Cluster, p web.Pool) string {
	t.Helper()
	api := web.New(web.Config{}, c, p, nil, testLogger())
	r := chi.NewRouter()
	api.Routes(r)
	srv := httptest.NewServer(r)
	t.Cleanup(srv.Close)
	return srv.URL
}

func call(t *testing.T, method, url, contentType, body string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestConcurrentPartialConfigUpdatesOnTwoReplicasLoseNothing: two replicas
// each take a partial update of a different field at the same moment; both
// must be in the committed config.
func TestConcurrentPartialConfigUpdatesOnTwoReplicasLoseNothing(t *testing.T) {
	routes := []struct {
		name, method, path, ctype string
		first, second             string
	}{
		{"v1 cache", http.MethodPut, "/v1/config/cache", "application/json", `{"capacity_mb":200}`, `{"policy":"RR"}`},
		{"configure_cache", http.MethodPost, "/api/configure_cache?", "", "cacheSize=200", "policy=RR"},
	}
	for _, rt := range routes {
		t.Run(rt.name, func(t *testing.T) {
			c := newFakeCluster(2)
			a, b := serveAPI(t, c, &fakePool{}), serveAPI(t, c, &fakePool{})
			var wg sync.WaitGroup
			for i, base := range []string{a, b} {
				body, url := rt.first, base+rt.path
				if i == 1 {
					body = rt.second
				}
				if rt.method == http.MethodPost { // the tester sends query parameters
					url, body = url+body, ""
				}
				wg.Go(func() {
					if code, out := call(t, rt.method, url, rt.ctype, body); code != http.StatusOK {
						t.Errorf("%s %s: got %d, want 200: %s", rt.method, url, code, out)
					}
				})
			}
			wg.Wait()
			if got, want := c.State().Cache, (fsm.CacheConfig{CapacityMB: 200, Policy: fsm.PolicyRR}); got != want {
				t.Errorf("cache config: got %+v, want %+v (an update was lost)", got, want)
			}
		})
	}
}

// TestAdminParametersAreParsedStrictly: every malformed, repeated or unknown
// parameter is a 400 that changes nothing (no config change, no resize).
func TestAdminParametersAreParsedStrictly(t *testing.T) {
	const form = "application/x-www-form-urlencoded"
	tests := []struct {
		name, path, ctype, body string
		want                    string // in the error message
	}{
		{"malformed escape beside a resize", "/api/configure_cache?cacheSize=%ZZ&numNodes=3&mode=manual", "", "", "malformed query"},
		{"malformed escape in the value", "/api/configure_cache?numNodes=3&policy=R%R", "", "", "malformed query"},
		{"semicolon separator", "/api/configure_cache?numNodes=3;cacheSize=5", "", "", "malformed query"},
		{"repeated parameter", "/api/configure_cache?numNodes=3&numNodes=2", "", "", `"numNodes" is given more than once`},
		{"parameter in query and body", "/api/configure_cache?numNodes=3", form, "numNodes=2", `"numNodes" is given more than once`},
		{"unknown parameter", "/api/configure_cache?numNodes=3&cachesize=5", "", "", `unknown parameter "cachesize"`},
		{"unknown parameter in body", "/api/configure_cache", form, "numNodes=3&colour=red", `unknown parameter "colour"`},
		{"malformed body", "/api/configure_cache", form, "numNodes=3&policy=%G1", "malformed form body"},
		{"empty number", "/api/configure_cache?numNodes=3&cacheSize=", "", "", `cacheSize "" is not a whole number`},
		{"NaN ratio", "/api/configure_cache?numNodes=3&expRatio=NaN", "", "", `expRatio "NaN" is not a number`},
		{"bad value beside a resize", "/api/configure_cache?numNodes=3&policy=LFU", "", "", `policy "LFU"`},
		{"numNodes out of range", "/api/configure_cache?numNodes=9", "", "", "numNodes 9 is outside 1..8"},
		{"getRate malformed", "/api/getRate?rate=%ZZ", "", "", "malformed query"},
		{"getRate repeated", "/api/getRate?rate=miss&rate=hit", "", "", `"rate" is given more than once`},
		{"getRate unknown", "/api/getRate?rate=miss&window=5m", "", "", `unknown parameter "window"`},
		{"getRate missing", "/api/getRate", "", "", "rate must be miss or hit"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, p := newFakeCluster(0), &fakePool{}
			base := serveAPI(t, c, p)
			before := c.State()
			code, body := call(t, http.MethodPost, base+tt.path, tt.ctype, tt.body)
			var ans struct {
				Success string `json:"success"`
				Error   struct {
					Code    int    `json:"code"`
					Message string `json:"message"`
				} `json:"error"`
			}
			json.Unmarshal([]byte(body), &ans)
			if code != http.StatusBadRequest || ans.Success != "false" || ans.Error.Code != 400 || !strings.Contains(ans.Error.Message, tt.want) {
				t.Errorf("POST %s %q: got %d %s, want 400 with %q", tt.path, tt.body, code, body, tt.want)
			}
			if after := c.State(); after.Index != before.Index || after.Cache != before.Cache || after.Scaling != before.Scaling {
				t.Errorf("the refused call changed the state: got %+v, want %+v", after, before)
			}
			if r := p.calls(); len(r) != 0 {
				t.Errorf("the refused call resized the pool: got resizes %v, want none", r)
			}
		})
	}
	t.Run("good parameters are applied", func(t *testing.T) {
		c, p := newFakeCluster(0), &fakePool{}
		base := serveAPI(t, c, p)
		code, body := call(t, http.MethodPost, base+"/api/configure_cache?cacheSize=100&mode=manual", form, "numNodes=3&policy=RR")
		if code != http.StatusOK {
			t.Fatalf("got %d %s, want 200", code, body)
		}
		if got, want := c.State().Cache, (fsm.CacheConfig{CapacityMB: 100, Policy: fsm.PolicyRR}); got != want {
			t.Errorf("cache: got %+v, want %+v", got, want)
		}
		if r := p.calls(); len(r) != 1 || r[0] != 3 {
			t.Errorf("resizes: got %v, want [3]", r)
		}
	})
}
