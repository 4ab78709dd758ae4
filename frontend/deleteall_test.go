package frontend

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/memcache/memcache/auth"
	"github.com/memcache/memcache/internal/pool"
	"github.com/memcache/memcache/internal/waitfor"
	"github.com/memcache/memcache/node"
)

// blockingBlobs holds every Delete until release is closed.
type blockingBlobs struct {
	Blobs
	deleting chan struct{} // receives once per Delete that starts
	release  chan struct{}
}

func (b *blockingBlobs) Delete(ctx context.Context, name string) error {
	select {
	case b.deleting <- struct{}{}:
	default:
	}
	select {
	case <-b.release:
	case <-ctx.Done():
		return ctx.Err()
	}
	return b.Blobs.Delete(ctx, name)
}

// TestWatchDeliveredDeleteAllRunsOffTheWatchLoop: a delete-all generation
// delivered by the pool-state watch is handed to the delete worker; the
// watch's callback returns at once even while the deletion is stuck, and
// the generations delivered meanwhile are coalesced into the newest.
func TestWatchDeliveredDeleteAllRunsOffTheWatchLoop(t *testing.T) {
	s := newStores(t)
	blk := &blockingBlobs{Blobs: s.blobs, deleting: make(chan struct{}, 1), release: make(chan struct{})}
	f := New(Config{}, blk, s.index, slog.New(slog.DiscardHandler))
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan struct{})
	go func() {
		defer close(ran)
		f.Run(ctx)
	}()
	defer func() {
		cancel()
		<-ran // Run waits for its delete worker
	}()
	if _, err := f.Put(ctx, "a", mustRead(t, "red.png")); err != nil {
		t.Fatal(err)
	}

	for gen := uint64(1); gen <= 3; gen++ {
		st := pool.View{Members: []pool.Member{}, Cache: pool.CacheConfig{CapacityMB: 64, Policy: pool.LRU}, DeleteGen: gen}
		var returned atomic.Bool
		go func() { f.setPool(st); returned.Store(true) }()
		waitfor.True(t, 5*time.Second, "the watch callback to return while the deletion is stuck", returned.Load)
		if gen == 1 {
			select {
			case <-blk.deleting:
			case <-time.After(10 * time.Second):
				t.Fatal("the delete worker did not start generation 1")
			}
		}
	}
	close(blk.release)
	waitfor.True(t, 10*time.Second, "generation 3 recorded (2 and 3 coalesced)", func() bool {
		_, done, err := s.index.DeleteAllAt(ctx, 3)
		return err == nil && done
	})
	if n, _ := s.index.Count(ctx); n != 0 {
		t.Errorf("rows after the delete-all: got %d, want 0", n)
	}
}

// TestDeleteAllEndpointAnswersWhenDone: POST /internal/v1/delete_all needs
// the cluster secret and a generation; it answers 200 only once the rows,
// the objects and every member's cache are gone, the member's floor raised
// to the generation; a repeat of a generation deletes nothing uploaded
// since, and still clears the caches. The member is a real node that
// requires the secret.
func TestDeleteAllEndpointAnswersWhenDone(t *testing.T) {
	n, nodeSrv, st := serveNode(t, node.Config{ID: "n1", Secret: "sec"}, nil)
	s := newStores(t)
	f := New(Config{Secret: "sec"}, s.blobs, s.index, slog.New(slog.DiscardHandler))
	st.DeleteGen = 1 // generation 1 is committed (not yet carried out); 2 is not
	f.setPool(st)
	srv := httptest.NewServer(f.InternalHandler())
	defer srv.Close()
	ctx := context.Background()
	img := mustRead(t, "red.png")
	for _, k := range []string{"a", "b"} {
		if _, err := f.Put(ctx, k, img); err != nil {
			t.Fatal(err)
		}
	}
	if items := n.Cache().Len(); items != 2 {
		t.Fatalf("node holds %d items after the uploads, want 2", items)
	}
	secret := &http.Client{Transport: &auth.Transport{Secret: "sec"}}

	for _, tt := range []struct {
		name, body string
		client     *http.Client
		want       int
	}{
		{"no secret", `{"generation":1}`, http.DefaultClient, http.StatusUnauthorized},
		{"not JSON", `generation=1`, secret, http.StatusBadRequest},
		{"unknown field", `{"generation":1,"all":true}`, secret, http.StatusBadRequest},
		{"generation 0", `{"generation":0}`, secret, http.StatusBadRequest},
		{"negative", `{"generation":-1}`, secret, http.StatusBadRequest},
		{"not committed", `{"generation":2}`, secret, http.StatusConflict},
	} {
		resp, err := tt.client.Post(srv.URL+DeleteAllPath, "application/json", strings.NewReader(tt.body))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tt.want {
			t.Errorf("%s: got %d, want %d", tt.name, resp.StatusCode, tt.want)
		}
	}
	if rows, _ := s.index.Count(ctx); rows != 2 || n.Cache().Len() != 2 || n.Floor() != 0 {
		t.Fatalf("refused calls changed something: %d rows, %d cached, floor %d; want 2, 2, 0", rows, n.Cache().Len(), n.Floor())
	}

	if err := DeleteAll(ctx, secret, srv.URL, 1); err != nil {
		t.Fatalf("DeleteAll(1): %v", err)
	}
	if rows, _ := s.index.Count(ctx); rows != 0 || countFiles(t, s.dir) != 0 || n.Cache().Len() != 0 || n.Floor() != 1 {
		t.Errorf("after DeleteAll(1): %d rows, %d objects, %d cached, floor %d; want 0, 0, 0, 1",
			rows, countFiles(t, s.dir), n.Cache().Len(), n.Floor())
	}
	// Something cached since, which a repeat must clear.
	if err := n.Cache().Put("x", node.Item{Value: img}); err != nil {
		t.Fatal(err)
	}
	// An upload after the delete-all fills the cache at generation 1: this
	// frontend has seen it carried out.
	if _, err := f.Put(ctx, "after", img); err != nil {
		t.Fatal(err)
	}
	if items := n.Cache().Len(); items != 2 {
		t.Fatalf("node holds %d items before the repeat, want 2 (x and the later upload)", items)
	}
	if err := DeleteAll(ctx, secret, srv.URL, 1); err != nil {
		t.Fatalf("repeated DeleteAll(1): %v", err)
	}
	if rows, _ := s.index.Count(ctx); rows != 1 || n.Cache().Len() != 0 || n.Floor() != 1 {
		t.Errorf("after a repeat of generation 1: %d rows, %d cached, floor %d; want 1 (the later upload), 0, 1", rows, n.Cache().Len(), n.Floor())
	}
	nodeSrv.Close()               // the member can no longer be cleared
	st.Index, st.DeleteGen = 3, 2 // generation 2 committed
	f.setPool(st)
	if err := DeleteAll(ctx, secret, srv.URL, 2); err == nil || !strings.Contains(err.Error(), "500") {
		t.Errorf("DeleteAll(2) with a node that cannot clear: got %v, want a 500 error", err)
	}
	if n.Floor() != 1 {
		t.Errorf("floor of the unreachable node: got %d, want 1", n.Floor())
	}
}

// slowReads holds every Get, after it has read the bytes, until release.
type slowReads struct {
	Blobs
	reading chan struct{} // receives once per Get that has read its bytes
	release chan struct{}
}

func (b *slowReads) Get(ctx context.Context, name string) ([]byte, error) {
	data, err := b.Blobs.Get(ctx, name)
	b.reading <- struct{}{}
	<-b.release
	return data, err
}

// TestAReadBeforeTheRowsAreGoneCannotRefillAfterTheDeleteAll: the view has
// announced delete-all 1 but its rows are not gone yet when a read loads
// an image; the delete-all runs (rows, caches cleared, objects); the read's
// fill then arrives. The node must refuse it, or the deleted image would be
// served from the cache after the delete-all answered.
func TestAReadBeforeTheRowsAreGoneCannotRefillAfterTheDeleteAll(t *testing.T) {
	n, v := newNode(t)
	s := newStores(t)
	slow := &slowReads{Blobs: s.blobs, reading: make(chan struct{}, 1), release: make(chan struct{})}
	f := New(Config{}, slow, s.index, slog.New(slog.DiscardHandler))
	ctx := context.Background()

	empty := v
	empty.Members, empty.Regions = []pool.Member{}, [16]string{}
	f.setPool(empty) // the upload stores a row, nothing in a cache
	if _, err := f.Put(ctx, "k", mustRead(t, "red.png")); err != nil {
		t.Fatal(err)
	}
	announced := v
	announced.Index, announced.DeleteGen = 2, 1
	f.setPool(announced) // no delete worker runs in this test

	read := make(chan error, 1)
	go func() {
		_, err := f.Get(ctx, "k")
		read <- err
	}()
	<-slow.reading // the read has the image's bytes; its fill is still to come
	if err := f.deleteAllAt(ctx, 1, false); err != nil {
		t.Fatal(err)
	}
	close(slow.release)
	if err := <-read; err != nil {
		t.Fatalf("the concurrent read: %v, want the image (it began before the delete-all)", err)
	}
	if items := n.Cache().Len(); items != 0 {
		t.Errorf("node holds %d items after the delete-all, want 0: a late fill was accepted", items)
	}
	if _, err := f.Get(ctx, "k"); !errors.Is(err, ErrNotFound) {
		t.Errorf("a read after the delete-all: got %v, want ErrNotFound", err)
	}
}

// TestDeleteAllEndpointIsOffWithoutASecret: a frontend with no cluster
// secret must not let whoever reaches its public port delete everything.
func TestDeleteAllEndpointIsOffWithoutASecret(t *testing.T) {
	s := newStores(t)
	f := New(Config{}, s.blobs, s.index, slog.New(slog.DiscardHandler))
	if _, err := f.Put(context.Background(), "a", mustRead(t, "red.png")); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(f.InternalHandler())
	defer srv.Close()
	resp, err := http.Post(srv.URL+DeleteAllPath, "application/json", strings.NewReader(`{"generation":1}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if n, _ := s.index.Count(context.Background()); resp.StatusCode != http.StatusForbidden || n != 1 {
		t.Errorf("delete-all on a frontend without a secret: got %d and %d rows, want 403 and 1", resp.StatusCode, n)
	}
}

// TestThePublicHandlerHasNoInternalRoute: the public listener does not
// serve the delete-all executor, whatever the caller carries.
func TestThePublicHandlerHasNoInternalRoute(t *testing.T) {
	s := newStores(t)
	f := New(Config{Secret: "s"}, s.blobs, s.index, slog.New(slog.DiscardHandler))
	if _, err := f.Put(context.Background(), "a", mustRead(t, "red.png")); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(f.Handler())
	defer srv.Close()
	req, _ := http.NewRequest(http.MethodPost, srv.URL+DeleteAllPath, strings.NewReader(`{"generation":1}`))
	req.Header.Set(auth.Header, "s")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if n, _ := s.index.Count(context.Background()); resp.StatusCode != http.StatusNotFound || n != 1 {
		t.Errorf("delete-all on the public handler: got %d and %d rows, want 404 and 1", resp.StatusCode, n)
	}
	// The view it routes by is on the internal handler only.
	if resp, err := http.Get(srv.URL + "/internal/v1/view"); err != nil || resp.StatusCode != http.StatusNotFound {
		t.Errorf("GET /internal/v1/view on the public handler: %v %v, want 404", resp.StatusCode, err)
	}
	internal := httptest.NewServer(f.InternalHandler())
	defer internal.Close()
	for secret, want := range map[string]int{"": http.StatusUnauthorized, "s": http.StatusOK} {
		req, _ := http.NewRequest(http.MethodGet, internal.URL+"/internal/v1/view", nil)
		req.Header.Set(auth.Header, secret)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var v pool.View
		json.NewDecoder(resp.Body).Decode(&v)
		resp.Body.Close()
		if resp.StatusCode != want || (want == http.StatusOK && v.Members == nil) {
			t.Errorf("GET /internal/v1/view with secret %q: %d %+v, want %d and the view", secret, resp.StatusCode, v, want)
		}
	}
}

// failingDeletes fails every Delete while failing is set.
type failingDeletes struct {
	Blobs
	failing atomic.Bool
}

func (b *failingDeletes) Delete(ctx context.Context, name string) error {
	if b.failing.Load() {
		return errors.New("blob store unavailable")
	}
	return b.Blobs.Delete(ctx, name)
}

// TestADeleteAllThatCouldNotDeleteObjectsIsNotDoneUntilTheyAreGone: the
// rows go and the generation is recorded, but the blob store fails; the
// answer is an error, and a repeat of the same generation — which deletes
// no row — still removes the objects before it answers success.
func TestADeleteAllThatCouldNotDeleteObjectsIsNotDoneUntilTheyAreGone(t *testing.T) {
	s := newStores(t)
	fail := &failingDeletes{Blobs: s.blobs}
	f := New(Config{}, fail, s.index, slog.New(slog.DiscardHandler))
	ctx := context.Background()
	f.setPool(pool.View{Members: []pool.Member{}, DeleteGen: 1})
	for _, k := range []string{"a", "b"} {
		if _, err := f.Put(ctx, k, mustRead(t, "red.png")); err != nil {
			t.Fatal(err)
		}
	}
	fail.failing.Store(true)
	if err := f.deleteAllAt(ctx, 1, true); err == nil {
		t.Fatal("delete-all with a failing blob store: got success")
	}
	if rows, _ := s.index.Count(ctx); rows != 0 || countFiles(t, s.dir) != 2 {
		t.Fatalf("after the failed run: %d rows, %d objects; want 0, 2", rows, countFiles(t, s.dir))
	}
	fail.failing.Store(false)
	if err := f.deleteAllAt(ctx, 1, true); err != nil {
		t.Fatalf("repeat of generation 1: %v", err)
	}
	if n := countFiles(t, s.dir); n != 0 {
		t.Errorf("objects after the repeat answered success: %d, want 0", n)
	}
	if o, _ := s.index.Orphans(ctx); len(o) != 0 {
		t.Errorf("orphans left: %v", o)
	}
}
