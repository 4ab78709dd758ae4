package blob

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"syscall"
)

// tempPrefix starts the name of a file that Put is still writing.
const tempPrefix = ".blob-tmp-"

// Dir is a Store that keeps each object as a file below a local directory.
// A name "img/abc" is the file <dir>/img/abc; subdirectories are created as
// needed. All access goes through an os.Root, so neither a name nor a
// symbolic link inside the directory can reach a file outside it.
//
// Put writes a temporary file beside the target, fsyncs it, renames it into
// place and fsyncs the directory, so a reader sees either the old object or
// the whole new one, and an acknowledged Put survives a crash.
//
// Dir does not keep content types; callers that need one record it themselves.
type Dir struct {
	dir string
}

// NewDir returns a Dir that stores objects below dir, creating dir (and its
// parents) if needed.
func NewDir(dir string) (*Dir, error) {
	if dir == "" {
		return nil, fmt.Errorf("%w: empty directory", ErrConfig)
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("blob: directory %q: %w", dir, err)
	}
	if err := os.MkdirAll(abs, 0o755); err != nil {
		return nil, fmt.Errorf("blob: creating directory: %w", err)
	}
	return &Dir{dir: abs}, nil
}

// Kind returns "dir".
func (d *Dir) Kind() string { return "dir" }

// Path returns the absolute directory the objects are kept in.
func (d *Dir) Path() string { return d.dir }

func (d *Dir) open() (*os.Root, error) {
	r, err := os.OpenRoot(d.dir)
	if err != nil {
		return nil, fmt.Errorf("blob: opening directory: %w", err)
	}
	return r, nil
}

// rootFor checks name and ctx and opens the directory for one operation.
func (d *Dir) rootFor(ctx context.Context, name string) (*os.Root, error) {
	if err := checkName(name); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return d.open()
}

// Put stores data under name atomically. contentType is ignored.
func (d *Dir) Put(ctx context.Context, name string, data []byte, contentType string) error {
	root, err := d.rootFor(ctx, name)
	if err != nil {
		return err
	}
	defer root.Close()

	parent := path.Dir(name)
	if parent != "." {
		if err := root.MkdirAll(filepath.FromSlash(parent), 0o755); err != nil {
			return fmt.Errorf("blob: put %q: %w", name, err)
		}
	}
	tmp, err := writeTemp(root, parent, data)
	if err != nil {
		return fmt.Errorf("blob: put %q: %w", name, err)
	}
	if err := root.Rename(tmp, filepath.FromSlash(name)); err != nil {
		_ = root.Remove(tmp)
		return fmt.Errorf("blob: put %q: %w", name, err)
	}
	if err := syncDir(root, parent); err != nil {
		return fmt.Errorf("blob: put %q: syncing directory: %w", name, err)
	}
	return nil
}

// writeTemp writes data to a new, fsynced temporary file in directory parent
// of root and returns its path relative to root. On error nothing is left.
func writeTemp(root *os.Root, parent string, data []byte) (string, error) {
	var (
		tmp string
		f   *os.File
		err error
	)
	for range 10 {
		var b [12]byte
		_, _ = rand.Read(b[:])
		tmp = filepath.Join(filepath.FromSlash(parent), tempPrefix+hex.EncodeToString(b[:]))
		f, err = root.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
		if !errors.Is(err, fs.ErrExist) {
			break
		}
	}
	if err != nil {
		return "", err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		_ = root.Remove(tmp)
		return "", err
	}
	return tmp, nil
}

// syncDir fsyncs directory dir of root so that a rename into it is durable.
func syncDir(root *os.Root, dir string) error {
	f, err := root.Open(filepath.FromSlash(dir))
	if err != nil {
		return err
	}
	err = f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	// Some platforms and file systems cannot fsync a directory.
	if errors.Is(err, syscall.EINVAL) || errors.Is(err, syscall.ENOTSUP) {
		return nil
	}
	return err
}

// absent reports whether err means a path (or one of its parents) is missing.
func absent(err error) bool {
	return errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR)
}

// Get returns the object's bytes, or ErrNotFound.
func (d *Dir) Get(ctx context.Context, name string) ([]byte, error) {
	root, err := d.rootFor(ctx, name)
	if err != nil {
		return nil, err
	}
	defer root.Close()

	p := filepath.FromSlash(name)
	fi, err := root.Stat(p)
	if absent(err) || (err == nil && !fi.Mode().IsRegular()) {
		return nil, fmt.Errorf("%w: %q", ErrNotFound, name)
	}
	if err != nil {
		return nil, fmt.Errorf("blob: get %q: %w", name, err)
	}
	data, err := root.ReadFile(p)
	if absent(err) {
		return nil, fmt.Errorf("%w: %q", ErrNotFound, name)
	}
	if err != nil {
		return nil, fmt.Errorf("blob: get %q: %w", name, err)
	}
	return data, nil
}

// Delete removes the object. An absent object, or a name that is a
// directory rather than an object, is not an error. Emptied subdirectories
// are left in place.
func (d *Dir) Delete(ctx context.Context, name string) error {
	root, err := d.rootFor(ctx, name)
	if err != nil {
		return err
	}
	defer root.Close()

	p := filepath.FromSlash(name)
	fi, err := root.Lstat(p)
	if absent(err) || (err == nil && fi.IsDir()) {
		return nil
	}
	if err == nil {
		err = root.Remove(p)
	}
	if err != nil && !absent(err) {
		return fmt.Errorf("blob: delete %q: %w", name, err)
	}
	return nil
}

// DeleteAll removes everything below the directory, keeping the directory
// itself, and returns how many objects (non-directories) it removed.
func (d *Dir) DeleteAll(ctx context.Context) (int, error) {
	root, err := d.open()
	if err != nil {
		return 0, err
	}
	defer root.Close()

	var files, dirs []string
	err = fs.WalkDir(root.FS(), ".", func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == "." {
			return nil
		}
		if e.IsDir() {
			dirs = append(dirs, p)
		} else {
			files = append(files, p)
		}
		return ctx.Err()
	})
	if err != nil {
		return 0, fmt.Errorf("blob: delete all: %w", err)
	}
	n := 0
	for _, f := range files {
		if err := ctx.Err(); err != nil {
			return n, err
		}
		err := root.Remove(filepath.FromSlash(f))
		switch {
		case err == nil:
			n++
		case !absent(err):
			return n, fmt.Errorf("blob: delete all: %w", err)
		}
	}
	// WalkDir lists a directory before its contents, so removing in reverse
	// order empties children before their parents.
	for i := len(dirs) - 1; i >= 0; i-- {
		if err := root.Remove(filepath.FromSlash(dirs[i])); err != nil && !absent(err) {
			return n, fmt.Errorf("blob: delete all: %w", err)
		}
	}
	return n, nil
}
