package frontend

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/memcache/memcache/internal/waitfor"
)

// TestFlightsNeverShareALoadThatBeganBeforeTheRead is the campaign's
// third finding as a focused case: a read that began after an upload was
// acknowledged joined a load that had read the row before the upload, and
// answered the replaced image. Reads arriving while a load runs must share
// the next load instead; reads that arrive before a load begins share it.
func TestFlightsNeverShareALoadThatBeganBeforeTheRead(t *testing.T) {
	var fs flights
	var loads atomic.Int32
	release := make(chan string, 4) // the row each load reads, in order
	load := func() (Image, error) {
		loads.Add(1)
		return Image{ETag: <-release}, nil
	}
	first := make(chan Image, 1)
	go func() { img, _ := fs.do("k", load); first <- img }()
	waitfor.True(t, 10*time.Second, "the first load to start", func() bool { return loads.Load() == 1 })

	// The row is replaced now; then three reads begin while load 1 runs.
	var wg sync.WaitGroup
	later := make(chan Image, 3)
	for range 3 {
		wg.Go(func() { img, _ := fs.do("k", load); later <- img })
	}
	// All three, not just the first: one that came after load 2 began
	// would wait for a third load, which nothing releases.
	waitfor.True(t, 10*time.Second, "the later reads to wait for a second load", func() bool {
		fs.mu.Lock()
		defer fs.mu.Unlock()
		f := fs.m["k"]
		return f != nil && !f.started && f.prev != nil && f.joined == 2
	})
	release <- "old"
	if img := <-first; img.ETag != "old" {
		t.Fatalf("first read: %q", img.ETag)
	}
	release <- "new"
	wg.Wait()
	close(later)
	for img := range later {
		if img.ETag != "new" {
			t.Errorf("a read that began during load 1 answered %q, want the row read after it began", img.ETag)
		}
	}
	if n := loads.Load(); n != 2 {
		t.Errorf("%d loads, want 2 (the three later reads share one)", n)
	}
	fs.mu.Lock()
	left := len(fs.m)
	fs.mu.Unlock()
	if left != 0 {
		t.Errorf("%d flights left after every read ended", left)
	}
}
