package frontend

import (
	"context"
	"log/slog"
	"testing"

	"github.com/memcache/memcache/node"
)

// rowsWatcher is the real index, checking at the moment the rows go that
// no node still holds an image.
type rowsWatcher struct {
	Index
	n        *node.Node
	cachedAt int // entries the node held when the rows were deleted
}

func (w *rowsWatcher) DeleteAllAt(ctx context.Context, gen uint64) ([]string, bool, error) {
	w.cachedAt = w.n.Cache().Len()
	return w.Index.DeleteAllAt(ctx, gen)
}

// TestDeleteAllClearsCachesBeforeTheRowsGo is the long campaign's finding
// as a focused case (seed 8403260277349818361): a delete-all deleted the
// rows, then cleared the caches; in between, a node that had not yet seen
// the delete-all's generation served an image a read had just seen deleted.
// The caches are now cleared before the rows go (and again after).
func TestDeleteAllClearsCachesBeforeTheRowsGo(t *testing.T) {
	st := newStores(t)
	n, _, view := serveNode(t, node.Config{ID: "n1"}, nil)
	w := &rowsWatcher{Index: st.index, n: n}
	f := New(Config{MaxUpload: 64 << 10}, st.blobs, w, slog.New(slog.DiscardHandler))
	f.setPool(view)
	ctx := context.Background()
	if _, err := f.Put(ctx, "k", mustRead(t, "red.png")); err != nil {
		t.Fatal(err)
	}
	if n.Cache().Len() != 1 {
		t.Fatalf("the upload cached %d entries, want 1", n.Cache().Len())
	}
	if err := f.deleteAllAt(ctx, 1, false); err != nil {
		t.Fatal(err)
	}
	if w.cachedAt != 0 {
		t.Errorf("the node held %d entries when the rows were deleted, want 0 (caches cleared first)", w.cachedAt)
	}
	if _, err := f.Get(ctx, "k"); err == nil {
		t.Error("the key reads back after the delete-all")
	}
}
