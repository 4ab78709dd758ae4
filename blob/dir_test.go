package blob

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func mustNewDir(t *testing.T, dir string) *Dir {
	t.Helper()
	d, err := NewDir(dir)
	if err != nil {
		t.Fatalf("NewDir(%q): %v", dir, err)
	}
	return d
}

// listFiles returns every non-directory below dir, as slash paths.
func listFiles(t *testing.T, dir string) []string {
	t.Helper()
	var files []string
	err := filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !e.IsDir() {
			rel, _ := filepath.Rel(dir, p)
			files = append(files, filepath.ToSlash(rel))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(files)
	return files
}

func TestDir(t *testing.T) {
	parent := t.TempDir()
	s := mustNewDir(t, filepath.Join(parent, "blobs"))
	testStore(t, s)
	t.Run("DeleteAllScope", func(t *testing.T) {
		// A sibling whose name extends this one's must survive.
		testDeleteAllScope(t, s, mustNewDir(t, filepath.Join(parent, "blobs-other")))
	})
}

func TestDirKind(t *testing.T) {
	var s Store = mustNewDir(t, t.TempDir())
	if got := s.Kind(); got != "dir" {
		t.Fatalf("Kind: got %q, want %q", got, "dir")
	}
}

func TestNewDirCreatesDir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "a", "b", "c")
	d := mustNewDir(t, dir)
	if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
		t.Fatalf("NewDir did not create %s: %v", dir, err)
	}
	if d.Path() != dir {
		t.Fatalf("Path: got %q, want %q", d.Path(), dir)
	}
	if _, err := NewDir(""); !errors.Is(err, ErrConfig) {
		t.Fatalf("NewDir(\"\"): got %v, want ErrConfig", err)
	}
}

func TestDirPutLeavesNoTempFiles(t *testing.T) {
	dir := t.TempDir()
	s := mustNewDir(t, dir)
	mustPut(t, s, "top", []byte("1"))
	mustPut(t, s, "img/abc", []byte("2"))
	mustPut(t, s, "img/abc", []byte("3")) // overwrite
	mustPut(t, s, "img/empty", nil)
	got := listFiles(t, dir)
	want := []string{"img/abc", "img/empty", "top"}
	if !slices.Equal(got, want) {
		t.Fatalf("files after Put: got %q, want %q", got, want)
	}
}

func TestDirPutFailureLeavesNoTempFiles(t *testing.T) {
	dir := t.TempDir()
	s := mustNewDir(t, dir)
	// "img/x" is a non-empty directory, so the rename onto it fails after the
	// temporary file has been written; this fails even for root.
	if err := os.MkdirAll(filepath.Join(dir, "img", "x"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "img", "x", "inner"), []byte("keep"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := s.Put(context.Background(), "img/x", []byte("new"), ""); err == nil {
		t.Fatal("Put onto a directory: got nil error, want failure")
	}
	// "file" is a file, so no directory can be made below it.
	mustPut(t, s, "file", []byte("f"))
	if err := s.Put(context.Background(), "file/below", []byte("new"), ""); err == nil {
		t.Fatal("Put below a file: got nil error, want failure")
	}
	if _, err := s.Get(context.Background(), "file/below"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get below a file: got %v, want ErrNotFound", err)
	}
	got := listFiles(t, dir)
	want := []string{"file", "img/x/inner"}
	if !slices.Equal(got, want) {
		t.Fatalf("files after failed Puts: got %q, want %q", got, want)
	}
}

func TestDirPutReadOnly(t *testing.T) {
	dir := t.TempDir()
	s := mustNewDir(t, dir)
	mustPut(t, s, "old", []byte("old"))
	if err := os.Chmod(dir, 0o555); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.Chmod(dir, 0o755) })

	var errs []error
	probeErr := errors.New("not run")
	attempt := func() {
		probe := filepath.Join(dir, "probe")
		f, err := os.Create(probe)
		if err == nil {
			f.Close()
			os.Remove(probe)
		}
		probeErr = err
		for _, name := range []string{"new", "old", "sub/new"} {
			errs = append(errs, s.Put(context.Background(), name, []byte("data"), ""))
		}
	}
	// Root ignores directory permissions; drop the capabilities that allow
	// it on a thread of its own when we can.
	if os.Geteuid() != 0 {
		attempt()
	} else if !asUnprivileged(attempt) {
		t.Skip("running as root and cannot drop CAP_DAC_OVERRIDE: the directory is not read-only to us")
	}
	if probeErr == nil {
		t.Skip("directory permissions are not enforced for this user")
	}
	for i, name := range []string{"new", "old", "sub/new"} {
		if err := errs[i]; err == nil || errors.Is(err, ErrBadName) {
			t.Errorf("Put(%q) into a read-only dir: got %v, want an I/O error", name, err)
		} else if !errors.Is(err, fs.ErrPermission) {
			t.Errorf("Put(%q) into a read-only dir: got %v, want a permission error", name, err)
		}
	}
	if got := mustGet(t, s, "old"); string(got) != "old" {
		t.Fatalf("Get(old): got %q, want %q", got, "old")
	}
	if got, want := listFiles(t, dir), []string{"old"}; !slices.Equal(got, want) {
		t.Fatalf("files: got %q, want %q", got, want)
	}
}

func TestDirStaysInsideDir(t *testing.T) {
	dir := t.TempDir()
	outside := t.TempDir()
	if err := os.Symlink(outside, filepath.Join(dir, "link")); err != nil {
		t.Skipf("cannot make a symlink: %v", err)
	}
	s := mustNewDir(t, dir)
	if err := s.Put(context.Background(), "link/escaped", []byte("x"), ""); err == nil {
		t.Error("Put through a symlink to outside the dir: got nil error, want failure")
	}
	if files := listFiles(t, outside); len(files) != 0 {
		t.Fatalf("files written outside the store: %q", files)
	}
}

func TestDirDeleteAllKeepsDir(t *testing.T) {
	dir := t.TempDir()
	s := mustNewDir(t, dir)
	for _, n := range []string{"a", "b/c", "b/d/e", "f/g"} {
		mustPut(t, s, n, []byte(n))
	}
	n, err := s.DeleteAll(context.Background())
	if err != nil || n != 4 {
		t.Fatalf("DeleteAll: got %d, %v; want 4, nil", n, err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("dir gone after DeleteAll: %v", err)
	}
	if len(entries) != 0 {
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		t.Fatalf("left after DeleteAll: %s", strings.Join(names, ", "))
	}
	mustPut(t, s, "again/x", []byte("x")) // still usable
}
