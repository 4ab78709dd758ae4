package blob

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
)

// Store is the contract every backend meets (the frontend declares the
// same methods as frontend.Blobs); the contract tests run against it.
type Store interface {
	// Put stores data under name, replacing any object of that name.
	// contentType is kept where the backend can keep it (S3); Dir ignores it.
	Put(ctx context.Context, name string, data []byte, contentType string) error
	// Get returns the whole object, or ErrNotFound if there is none.
	Get(ctx context.Context, name string) ([]byte, error)
	// Delete removes the object; an absent object is not an error.
	Delete(ctx context.Context, name string) error
	// DeleteAll removes every object under the store's directory or prefix,
	// and nothing outside it, and returns how many it removed.
	DeleteAll(ctx context.Context) (int, error)
	// Kind is "dir" or "s3", for logs and the UI.
	Kind() string
}

// deleteAllCount is how many objects the contract's DeleteAll test stores:
// more than two S3 DeleteObjects batches of 1000.
const deleteAllCount = 2500

// testStore is the contract every Store meets. s must be empty at the start
// and is left empty.
func testStore(t *testing.T, s Store) {
	ctx := context.Background()

	t.Run("PutGet", func(t *testing.T) {
		big := make([]byte, 5<<20)
		_, _ = rand.Read(big)
		allBytes := make([]byte, 256)
		for i := range allBytes {
			allBytes[i] = byte(i)
		}
		for _, tc := range []struct {
			name string
			data []byte
		}{
			{"small", []byte("hello, world")},
			{"every-byte", allBytes},
			{"big-5MB", big},
			{"empty", nil},
		} {
			t.Run(tc.name, func(t *testing.T) {
				name := "pg/" + tc.name
				mustPut(t, s, name, tc.data)
				got, err := s.Get(ctx, name)
				if err != nil {
					t.Fatalf("Get(%q): %v", name, err)
				}
				if !bytes.Equal(got, tc.data) {
					t.Fatalf("Get(%q): got %d bytes, want %d identical bytes", name, len(got), len(tc.data))
				}
				mustDelete(t, s, name)
			})
		}
	})

	t.Run("Overwrite", func(t *testing.T) {
		mustPut(t, s, "ow", []byte("first version, longer"))
		mustPut(t, s, "ow", []byte("second"))
		if got := mustGet(t, s, "ow"); string(got) != "second" {
			t.Fatalf("Get after overwrite: got %q, want %q", got, "second")
		}
		mustDelete(t, s, "ow")
	})

	t.Run("GetMissing", func(t *testing.T) {
		for _, name := range []string{"missing", "no/such/dir/missing"} {
			if _, err := s.Get(ctx, name); !errors.Is(err, ErrNotFound) {
				t.Errorf("Get(%q): got error %v, want ErrNotFound", name, err)
			}
		}
	})

	t.Run("Delete", func(t *testing.T) {
		if err := s.Delete(ctx, "never-existed"); err != nil {
			t.Fatalf("Delete(missing): got %v, want nil", err)
		}
		if err := s.Delete(ctx, "no/such/dir/x"); err != nil {
			t.Fatalf("Delete(missing in missing dir): got %v, want nil", err)
		}
		mustPut(t, s, "del", []byte("x"))
		mustDelete(t, s, "del")
		if _, err := s.Get(ctx, "del"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("Get after Delete: got %v, want ErrNotFound", err)
		}
		mustDelete(t, s, "del") // twice is fine
	})

	t.Run("Subdirectories", func(t *testing.T) {
		names := []string{"img/abc", "img/abd", "a/b/c/d/e", "img2/x.y-z_0"}
		for _, n := range names {
			mustPut(t, s, n, []byte("data of "+n))
		}
		for _, n := range names {
			if got := mustGet(t, s, n); string(got) != "data of "+n {
				t.Errorf("Get(%q): got %q, want %q", n, got, "data of "+n)
			}
		}
		// A "directory" is not an object.
		if _, err := s.Get(ctx, "img"); !errors.Is(err, ErrNotFound) {
			t.Errorf("Get(%q): got %v, want ErrNotFound", "img", err)
		}
		for _, n := range names {
			mustDelete(t, s, n)
		}
	})

	t.Run("BadNames", func(t *testing.T) {
		if _, err := s.DeleteAll(ctx); err != nil {
			t.Fatal(err)
		}
		for _, name := range badNames {
			if err := s.Put(ctx, name, []byte("x"), "text/plain"); !errors.Is(err, ErrBadName) {
				t.Errorf("Put(%q): got %v, want ErrBadName", name, err)
			}
			if _, err := s.Get(ctx, name); !errors.Is(err, ErrBadName) {
				t.Errorf("Get(%q): got %v, want ErrBadName", name, err)
			}
			if err := s.Delete(ctx, name); !errors.Is(err, ErrBadName) {
				t.Errorf("Delete(%q): got %v, want ErrBadName", name, err)
			}
		}
		if n, err := s.DeleteAll(ctx); err != nil || n != 0 {
			t.Fatalf("DeleteAll after bad names: got %d, %v; want 0, nil (nothing written)", n, err)
		}
	})

	t.Run("DeleteAll", func(t *testing.T) {
		names := make([]string, deleteAllCount)
		for i := range names {
			names[i] = fmt.Sprintf("many/%03d/obj-%05d", i%7, i)
		}
		names = append(names, "top-level")
		putMany(t, s, names)
		n, err := s.DeleteAll(ctx)
		if err != nil {
			t.Fatalf("DeleteAll: %v", err)
		}
		if n != len(names) {
			t.Fatalf("DeleteAll: got %d, want %d", n, len(names))
		}
		for _, name := range []string{names[0], names[len(names)/2], "top-level"} {
			if _, err := s.Get(ctx, name); !errors.Is(err, ErrNotFound) {
				t.Errorf("Get(%q) after DeleteAll: got %v, want ErrNotFound", name, err)
			}
		}
		if n, err := s.DeleteAll(ctx); err != nil || n != 0 {
			t.Fatalf("second DeleteAll: got %d, %v; want 0, nil", n, err)
		}
	})
}

// testDeleteAllScope checks that DeleteAll on s leaves alone an object kept by
// other, a store over a neighbouring directory or prefix.
func testDeleteAllScope(t *testing.T, s, other Store) {
	ctx := context.Background()
	mustPut(t, other, "keep/me", []byte("survivor"))
	for _, n := range []string{"a", "b/c", "keep/me"} {
		mustPut(t, s, n, []byte(n))
	}
	if n, err := s.DeleteAll(ctx); err != nil || n != 3 {
		t.Fatalf("DeleteAll: got %d, %v; want 3, nil", n, err)
	}
	if got := mustGet(t, other, "keep/me"); string(got) != "survivor" {
		t.Fatalf("object outside the store after DeleteAll: got %q, want %q", got, "survivor")
	}
	if n, err := other.DeleteAll(ctx); err != nil || n != 1 {
		t.Fatalf("DeleteAll of the other store: got %d, %v; want 1, nil", n, err)
	}
}

var badNames = []string{
	"",
	"/abs",
	"/",
	"..",
	"../up",
	"a/../b",
	"a/..",
	"a..b",
	`a\b`,
	`..\x`,
	"nul\x00byte",
	"new\nline",
	"tab\t",
	"del\x7f",
	"c1\u0085",
	"bad-utf8-\xff",
	"trailing/",
	"a//b",
	"./a",
	"a/./b",
	".",
	strings.Repeat("x", MaxNameLen+1),
}

func TestCheckName(t *testing.T) {
	for _, name := range badNames {
		if err := checkName(name); !errors.Is(err, ErrBadName) {
			t.Errorf("checkName(%q): got %v, want ErrBadName", name, err)
		}
	}
	for _, name := range []string{
		"a", "img/0b6c1f8e-9f0e-4c3e-8d7a-1f2e3d4c5b6a", "a/b/c", ".hidden", "a.b", "x y", "ünïcödé/名前",
		strings.Repeat("x", MaxNameLen),
	} {
		if err := checkName(name); err != nil {
			t.Errorf("checkName(%q): got %v, want nil", name, err)
		}
	}
}

func mustPut(t *testing.T, s Store, name string, data []byte) {
	t.Helper()
	if err := s.Put(context.Background(), name, data, "application/octet-stream"); err != nil {
		t.Fatalf("Put(%q): %v", name, err)
	}
}

func mustGet(t *testing.T, s Store, name string) []byte {
	t.Helper()
	data, err := s.Get(context.Background(), name)
	if err != nil {
		t.Fatalf("Get(%q): %v", name, err)
	}
	return data
}

func mustDelete(t *testing.T, s Store, name string) {
	t.Helper()
	if err := s.Delete(context.Background(), name); err != nil {
		t.Fatalf("Delete(%q): %v", name, err)
	}
}

// putMany stores a small object under each name, 16 at a time.
func putMany(t *testing.T, s Store, names []string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	work := make(chan string)
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		first error
	)
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := range work {
				if err := s.Put(ctx, n, []byte(n), "text/plain"); err != nil {
					mu.Lock()
					if first == nil {
						first = fmt.Errorf("Put(%q): %w", n, err)
						cancel()
					}
					mu.Unlock()
				}
			}
		}()
	}
	for _, n := range names {
		select {
		case work <- n:
		case <-ctx.Done():
		}
	}
	close(work)
	wg.Wait()
	if first != nil {
		t.Fatal(first)
	}
}
