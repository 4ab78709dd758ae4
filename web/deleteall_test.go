package web_test

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/memcache/memcache/blob"
	"github.com/memcache/memcache/frontend"
	"github.com/memcache/memcache/gossip"
	"github.com/memcache/memcache/internal/testcluster"
	"github.com/memcache/memcache/internal/waitfor"
	"github.com/memcache/memcache/keyindex"
	"github.com/memcache/memcache/pki"
)

// testFrontend is an in-process frontend that joined the system's gossip.
type testFrontend struct {
	fe         *frontend.Frontend
	url        string // the public listener
	clusterURL string // the cluster listener (mutual TLS)
	blobDir    string
	run        func() // starts its pool-state watch (and delete worker)
}

// startFrontend starts a frontend over embedded stores in s's gossip. It
// takes its first pool view (so it is ready and accepts uploads), then its
// watch stops until run is called: meanwhile it is like a frontend whose
// watched replica is paused.
func startFrontend(t *testing.T, s *system) *testFrontend {
	t.Helper()
	dir := t.TempDir()
	blobs, err := blob.NewDir(filepath.Join(dir, "blobs"))
	if err != nil {
		t.Fatal(err)
	}
	index, err := keyindex.Open(context.Background(), filepath.Join(dir, "keys.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { index.Close() })
	// The public listener (plain) and the cluster listener the managers
	// call (mutual TLS), as role.StartFrontend has them.
	srv := httptest.NewUnstartedServer(nil)
	u := "http://" + srv.Listener.Addr().String()
	cln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	clusterURL := "https://" + cln.Addr().String()
	feTLS := s.TLS(pki.RoleFrontend)
	g, err := gossip.New(gossip.Config{BindAddr: "127.0.0.1:0", Join: []string{s.replicas[0].cluster.Gossip().Addr()}, Fast: true,
		Meta: gossip.Meta{Role: gossip.RoleFrontend, ID: "fe1", HTTP: clusterURL, Public: u}}, testLogger())
	if err != nil {
		srv.Close()
		cln.Close()
		t.Fatal(err)
	}
	managers := func() []string {
		var out []string
		for _, m := range g.Members() {
			if m.Meta.Role == gossip.RoleManager && m.Meta.HTTP != "" {
				out = append(out, m.Meta.HTTP)
			}
		}
		return out
	}
	fe := frontend.New(frontend.Config{MaxUpload: 1 << 20, Secret: testSecret, TLS: feTLS, Managers: managers, WatchWait: time.Second}, blobs, index, testLogger())
	srv.Config.Handler = fe.Handler()
	srv.Start()
	internal := &http.Server{Handler: fe.InternalHandler()}
	go internal.Serve(pki.Listen(cln, feTLS))
	first, stopFirst := context.WithCancel(context.Background())
	firstDone := make(chan struct{})
	go func() {
		defer close(firstDone)
		fe.Run(first)
	}()
	waitfor.True(t, testcluster.StartWait, "the frontend to take its first pool view", func() bool {
		resp, err := http.Get(u + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	stopFirst()
	<-firstDone
	ctx, cancel := context.WithCancel(context.Background())
	running := make(chan struct{})
	started := false
	tf := &testFrontend{fe: fe, url: u, clusterURL: clusterURL, blobDir: filepath.Join(dir, "blobs"), run: func() {
		started = true
		go func() {
			defer close(running)
			fe.Run(ctx)
		}()
	}}
	// Registered after the replicas' cleanups, so it runs first.
	t.Cleanup(func() {
		cancel()
		if started {
			<-running
		}
		srv.Close()
		internal.Close()
		g.Close()
	})
	waitfor.True(t, 10*time.Second, "every replica to know the frontend", func() bool {
		for _, r := range s.replicas {
			if !slices.Contains(r.cluster.Frontends(), clusterURL) {
				return false
			}
		}
		return true
	})
	return tf
}

func (tf *testFrontend) keys(t *testing.T) []string {
	t.Helper()
	es, err := tf.fe.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var ks []string
	for _, e := range es {
		ks = append(ks, e.Key)
	}
	return ks
}

func (tf *testFrontend) objects(t *testing.T) int {
	t.Helper()
	n := 0
	filepath.WalkDir(tf.blobDir, func(_ string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			n++
		}
		return nil
	})
	return n
}

func png(t *testing.T) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "frontend", "testdata", "red.png"))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func postAdmin(t *testing.T, url string) (int, map[string]any) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+testToken)
	resp, err := (&http.Client{Timeout: time.Minute}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	json.NewDecoder(resp.Body).Decode(&out)
	return resp.StatusCode, out
}

// TestDeleteAllOnAManagerAnswersOnlyWhenTheDataIsGone: delete_all sent to a
// follower answers 200 only when the frontend's rows and objects and the
// nodes' cached copies are gone, although the frontend's own watch is not
// running (its watched replica paused); an upload acknowledged after the
// answer survives when the watch later delivers the generation.
func TestDeleteAllOnAManagerAnswersOnlyWhenTheDataIsGone(t *testing.T) {
	s := startSystem(t, systemConfig{replicas: 3, nodes: 1, token: testToken})
	tf := startFrontend(t, s)
	img := png(t)
	for _, k := range []string{"a", "b", "c"} {
		if _, err := tf.fe.Put(context.Background(), k, img); err != nil {
			t.Fatal(err)
		}
	}
	if got := s.traffic("cached", 5, 0, 100); got != 5 {
		t.Fatalf("cache puts: got %d, want 5", got)
	}
	n := s.Nodes[0].Node()
	if n.Cache().Len() == 0 {
		t.Fatal("the node caches nothing before the delete")
	}

	code, ans := postAdmin(t, s.follower().url+"/api/delete_all")
	if code != http.StatusOK || ans["success"] != "true" {
		t.Fatalf("delete_all on a follower: got %d %v, want 200", code, ans)
	}
	if ks := tf.keys(t); len(ks) != 0 {
		t.Errorf("keys at the answer: got %v, want none", ks)
	}
	if o := tf.objects(t); o != 0 {
		t.Errorf("objects at the answer: got %d, want 0", o)
	}
	if l := n.Cache().Len(); l != 0 {
		t.Errorf("cached items at the answer: got %d, want 0", l)
	}

	// Acknowledged after the answer: never deleted by it, even when the
	// frontend's watch delivers the generation only now.
	if _, err := tf.fe.Put(context.Background(), "after", img); err != nil {
		t.Fatal(err)
	}
	tf.run()
	gen := uint64(ans["delete_gen"].(float64))
	waitfor.True(t, 10*time.Second, "the frontend's watch to deliver the delete generation", func() bool {
		return tf.fe.Pool().DeleteGen >= gen
	})
	// A repeat of the generation, as the watch's backstop runs it, is a no-op.
	if err := frontend.DeleteAll(context.Background(), s.ClientAs(pki.RoleManager), tf.clusterURL, gen); err != nil {
		t.Fatalf("repeating generation %d: %v", gen, err)
	}
	if ks := tf.keys(t); !slices.Equal(ks, []string{"after"}) {
		t.Errorf("keys after the generation was delivered again: got %v, want [after]", ks)
	}
}

// TestDeleteAllWithNoFrontendIsNotReportedDone: with no frontend to carry it
// out, delete_all answers 503 saying the generation is committed, not 200.
func TestDeleteAllWithNoFrontendIsNotReportedDone(t *testing.T) {
	s := startSystem(t, systemConfig{replicas: 1, nodes: 1, token: testToken})
	before := s.state().DeleteGen
	code, ans := postAdmin(t, s.replicas[0].url+"/api/delete_all")
	e, _ := ans["error"].(map[string]any)
	msg, _ := e["message"].(string)
	if code != http.StatusServiceUnavailable || !strings.Contains(msg, "is committed and will be carried out when a frontend sees it") {
		t.Errorf("delete_all with no frontend: got %d %v, want 503 saying the generation is committed", code, ans)
	}
	if got := s.state().DeleteGen; got != before+1 {
		t.Errorf("delete generation: got %d, want %d", got, before+1)
	}
}
