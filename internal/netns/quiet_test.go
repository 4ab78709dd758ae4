package netns

import (
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/memcache/memcache/internal/waitfor"
)

// tryQuiet reports whether quietLock can be taken in mode now, through a
// file of its own (flock locks belong to the open file, so this conflicts
// with the locks this process already holds).
func tryQuiet(t *testing.T, mode int) bool {
	t.Helper()
	f, err := os.OpenFile(quietLock, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	return syscall.Flock(int(f.Fd()), mode|syscall.LOCK_NB) == nil
}

// TestQuietAndNetworksExcludeEachOther: while a test keeps the network
// still no Network can be built, and while a Network exists nothing can
// keep the network still; each lets go when its test ends. (Other test
// binaries may hold the lock too, so "lets go" waits.)
func TestQuietAndNetworksExcludeEachOther(t *testing.T) {
	Require(t)
	t.Run("quiet", func(t *testing.T) {
		Quiet(t)
		if tryQuiet(t, syscall.LOCK_SH) {
			t.Error("a network could be built while a test keeps the network still")
		}
	})
	waitfor.True(t, 10*time.Minute, "networks to be allowed once the quiet test ended", func() bool {
		return tryQuiet(t, syscall.LOCK_SH)
	})
	t.Run("network", func(t *testing.T) {
		New(t, 1)
		if tryQuiet(t, syscall.LOCK_EX) {
			t.Error("the network could be kept still while a Network exists")
		}
	})
	waitfor.True(t, 10*time.Minute, "the network to be kept still once the Network is gone", func() bool {
		return tryQuiet(t, syscall.LOCK_EX)
	})
}
