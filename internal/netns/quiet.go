package netns

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// quietLock is the file that keeps the root namespace's interfaces still
// for a test that needs it: every Network holds it shared from before it
// creates anything until its cleanup has removed everything, and Quiet
// holds it exclusive. flock locks are the kernel's: they hold across test
// binaries (go test runs packages in parallel) and go when a process dies.
var quietLock = filepath.Join(lockDir, "quiet.lock")

// Quiet waits until no Network of this package exists on the machine, in
// any process, and keeps any from being built until t ends.
//
// A headless Chromium needs it: it aborts every request in flight
// (net::ERR_NETWORK_CHANGED) when an address or link of the root namespace
// changes, as bridges and veths come and go, and a form submitted at that
// moment lands on an error page. Where the lock cannot be taken (not root:
// no Network can be built here either), Quiet returns at once.
func Quiet(t testing.TB) {
	t.Helper()
	f, err := lockQuiet(syscall.LOCK_EX, t, "a network-namespace test to remove its network")
	if err != nil {
		t.Logf("netns: not keeping the network still: %v", err)
		return
	}
	t.Cleanup(func() { f.Close() })
}

// lockQuiet takes quietLock in mode, waiting for it as long as it takes
// (the holders are tests, bounded by their own timeouts), and says so in t's
// log if it has to wait for what.
func lockQuiet(mode int, t testing.TB, what string) (*os.File, error) {
	t.Helper()
	if err := os.MkdirAll(lockDir, 0o755); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(quietLock, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), mode|syscall.LOCK_NB); err == nil {
		return f, nil
	}
	t.Logf("netns: waiting for %s", what)
	start := time.Now()
	for {
		err := syscall.Flock(int(f.Fd()), mode)
		if err == nil {
			break
		}
		if err != syscall.EINTR {
			f.Close()
			return nil, err
		}
	}
	t.Logf("netns: waited %s for %s", time.Since(start).Round(time.Millisecond), what)
	return f, nil
}
