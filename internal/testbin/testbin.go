// Package testbin builds the memcache binary once per test process, for
// the tests that need real `memcache` processes (the local provisioner's
// nodes, `memcache up`).
//
// It holds the one piece of package state in the module: a test process
// builds the binary at most once, on first use, and its TestMain removes it
// with Remove after m.Run.
package testbin

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
)

// build is the binary of this test process, built on first use.
var build struct {
	once sync.Once
	dir  string // temporary directory holding the binary
	path string
	err  error
}

// Path returns the path of a memcache binary built from this module,
// building it the first time it is called in this test process. It fails
// the test if the build fails.
func Path(t testing.TB) string {
	t.Helper()
	build.once.Do(func() { build.dir, build.path, build.err = compile() })
	if build.err != nil {
		t.Fatalf("building memcache: %v", build.err)
	}
	return build.path
}

func compile() (dir, path string, err error) {
	goCmd, err := exec.LookPath("go")
	if err != nil {
		goCmd = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	dir, err = os.MkdirTemp("", "memcache-testbin-")
	if err != nil {
		return "", "", err
	}
	path = filepath.Join(dir, "memcache")
	out, err := exec.Command(goCmd, "build", "-o", path, "github.com/memcache/memcache").CombinedOutput()
	if err != nil {
		os.RemoveAll(dir)
		return "", "", fmt.Errorf("%v\n%s", err, out)
	}
	return dir, path, nil
}

// Remove deletes the binary, if one was built. Call it from TestMain after
// m.Run.
func Remove() {
	if build.dir != "" {
		os.RemoveAll(build.dir)
	}
}
