package keyindex

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"reflect"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/memcache/memcache/internal/pgtest"
)

// forEachBackend runs fn as a subtest against a fresh SQLite file and a fresh
// PostgreSQL database.
func forEachBackend(t *testing.T, fn func(t *testing.T, dsn string)) {
	t.Helper()
	t.Run("sqlite", func(t *testing.T) {
		fn(t, "sqlite:"+filepath.Join(t.TempDir(), "index.db"))
	})
	t.Run("postgres", func(t *testing.T) {
		fn(t, pgtest.DSN(t))
	})
}

// mustOpen opens an Index and closes it when the test ends.
func mustOpen(t *testing.T, dsn string) *Index {
	t.Helper()
	ix, err := Open(context.Background(), dsn)
	if err != nil {
		t.Fatalf("Open(%q): %v", dsn, err)
	}
	t.Cleanup(func() {
		if err := ix.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return ix
}

// stepClock returns a clock that starts at start and advances by step on
// each call.
func stepClock(start time.Time, step time.Duration) func() time.Time {
	var mu sync.Mutex
	next := start
	return func() time.Time {
		mu.Lock()
		defer mu.Unlock()
		t := next
		next = next.Add(step)
		return t
	}
}

func entry(key, object string) Entry {
	return Entry{Key: key, Object: object, ContentType: "image/png", Size: int64(len(object)), SHA256: strings.Repeat("ab", 32)}
}

func mustPut(t *testing.T, ix *Index, e Entry) string {
	t.Helper()
	prev, _, err := ix.Put(context.Background(), e)
	if err != nil {
		t.Fatalf("Put(%q): %v", e.Key, err)
	}
	return prev
}

func mustGet(t *testing.T, ix *Index, key string) Entry {
	t.Helper()
	e, err := ix.Get(context.Background(), key)
	if err != nil {
		t.Fatalf("Get(%q): %v", key, err)
	}
	return e
}

func keysOf(es []Entry) []string {
	keys := make([]string, len(es))
	for i, e := range es {
		keys[i] = e.Key
	}
	return keys
}

func TestKind(t *testing.T) {
	forEachBackend(t, func(t *testing.T, dsn string) {
		ix := mustOpen(t, dsn)
		want := KindSQLite
		if isPostgresDSN(dsn) {
			want = KindPostgres
		}
		if got := ix.Kind(); got != want {
			t.Errorf("Kind() = %q, want %q", got, want)
		}
	})
}

func TestPutNewAndGet(t *testing.T) {
	forEachBackend(t, func(t *testing.T, dsn string) {
		ix := mustOpen(t, dsn)
		// A clock with nanoseconds and a non-UTC zone: stored times are UTC,
		// truncated to the microsecond, and round-trip exactly.
		at := time.Date(2024, 2, 29, 23, 59, 58, 123456789, time.FixedZone("X", 3600))
		ix.now = stepClock(at, time.Second)

		e := Entry{Key: "cat.png", Object: "obj-1", ContentType: "image/png", Size: 1234, SHA256: strings.Repeat("0f", 32)}
		if prev := mustPut(t, ix, e); prev != "" {
			t.Errorf("Put new key: previous = %q, want \"\"", prev)
		}
		got := mustGet(t, ix, "cat.png")
		want := e
		want.Created = at.UTC().Truncate(time.Microsecond)
		want.Updated = want.Created
		want.Version = 1
		if got != want {
			t.Errorf("Get = %+v, want %+v", got, want)
		}
		if got.Created.Location() != time.UTC || got.Updated.Location() != time.UTC {
			t.Errorf("Get times in %v/%v, want UTC", got.Created.Location(), got.Updated.Location())
		}
	})
}

func TestPutRealClock(t *testing.T) {
	forEachBackend(t, func(t *testing.T, dsn string) {
		ix := mustOpen(t, dsn)
		before := time.Now().UTC().Truncate(time.Microsecond)
		mustPut(t, ix, entry("k", "o1"))
		after := time.Now().UTC()
		got := mustGet(t, ix, "k")
		if got.Created.Before(before) || got.Created.After(after) {
			t.Errorf("Created = %v, want between %v and %v", got.Created, before, after)
		}
		mustPut(t, ix, entry("k", "o2"))
		got2 := mustGet(t, ix, "k")
		if !got2.Created.Equal(got.Created) {
			t.Errorf("Created after replace = %v, want %v", got2.Created, got.Created)
		}
		if got2.Updated.Before(got.Updated) {
			t.Errorf("Updated after replace = %v, want not before %v", got2.Updated, got.Updated)
		}
	})
}

func TestPutReplace(t *testing.T) {
	forEachBackend(t, func(t *testing.T, dsn string) {
		ix := mustOpen(t, dsn)
		t0 := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
		ix.now = stepClock(t0, 1500*time.Microsecond)

		mustPut(t, ix, entry("k", "old-object"))
		first := mustGet(t, ix, "k")
		repl := Entry{Key: "k", Object: "new-object", ContentType: "image/jpeg", Size: 99, SHA256: strings.Repeat("cd", 32)}
		if prev := mustPut(t, ix, repl); prev != "old-object" {
			t.Errorf("Put replace: previous = %q, want %q", prev, "old-object")
		}
		got := mustGet(t, ix, "k")
		want := repl
		want.Created = first.Created
		want.Updated = t0.Add(1500 * time.Microsecond)
		want.Version = 2
		if got != want {
			t.Errorf("Get after replace = %+v, want %+v", got, want)
		}
		if !got.Updated.After(first.Updated) {
			t.Errorf("Updated = %v, want after %v", got.Updated, first.Updated)
		}
		if n, err := ix.Count(context.Background()); err != nil || n != 1 {
			t.Errorf("Count = %d, %v; want 1, nil", n, err)
		}
	})
}

func TestGetMissing(t *testing.T) {
	forEachBackend(t, func(t *testing.T, dsn string) {
		ix := mustOpen(t, dsn)
		mustPut(t, ix, entry("present", "o"))
		for _, key := range []string{"absent", "", "PRESENT", strings.Repeat("x", MaxKeyLen+1), "bad\xff", "nul\x00"} {
			if _, err := ix.Get(context.Background(), key); !errors.Is(err, ErrNotFound) {
				t.Errorf("Get(%q) error = %v, want ErrNotFound", key, err)
			}
		}
	})
}

func TestListAndCount(t *testing.T) {
	forEachBackend(t, func(t *testing.T, dsn string) {
		ix := mustOpen(t, dsn)
		ctx := context.Background()
		if es, err := ix.List(ctx); err != nil || len(es) != 0 {
			t.Fatalf("List on empty index = %v, %v; want [], nil", es, err)
		}
		if n, err := ix.Count(ctx); err != nil || n != 0 {
			t.Fatalf("Count on empty index = %d, %v; want 0, nil", n, err)
		}
		// Bytewise order differs from most locales' ("B" < "a", "Z" < "b").
		keys := []string{"b", "a", "B", "Z", "a b", "a/b", "ä", "10", "9", "_x"}
		for i, k := range keys {
			mustPut(t, ix, entry(k, fmt.Sprintf("obj-%d", i)))
		}
		es, err := ix.List(ctx)
		if err != nil {
			t.Fatalf("List: %v", err)
		}
		want := append([]string(nil), keys...)
		sort.Strings(want)
		if got := keysOf(es); !reflect.DeepEqual(got, want) {
			t.Errorf("List keys = %q, want %q", got, want)
		}
		for _, e := range es {
			if e.Object == "" || e.Created.IsZero() {
				t.Errorf("List entry %+v has empty fields", e)
			}
		}
		if n, err := ix.Count(ctx); err != nil || n != len(keys) {
			t.Errorf("Count = %d, %v; want %d, nil", n, err, len(keys))
		}
	})
}

func TestDelete(t *testing.T) {
	forEachBackend(t, func(t *testing.T, dsn string) {
		ix := mustOpen(t, dsn)
		ctx := context.Background()
		mustPut(t, ix, entry("keep", "o-keep"))
		mustPut(t, ix, entry("gone", "o-gone"))
		want := mustGet(t, ix, "gone")
		got, err := ix.Delete(ctx, "gone")
		if err != nil {
			t.Fatalf("Delete: %v", err)
		}
		if got != want {
			t.Errorf("Delete returned %+v, want %+v", got, want)
		}
		if _, err := ix.Get(ctx, "gone"); !errors.Is(err, ErrNotFound) {
			t.Errorf("Get after Delete error = %v, want ErrNotFound", err)
		}
		if _, err := ix.Delete(ctx, "gone"); !errors.Is(err, ErrNotFound) {
			t.Errorf("second Delete error = %v, want ErrNotFound", err)
		}
		if _, err := ix.Delete(ctx, "never"); !errors.Is(err, ErrNotFound) {
			t.Errorf("Delete(never) error = %v, want ErrNotFound", err)
		}
		if n, _ := ix.Count(ctx); n != 1 {
			t.Errorf("Count = %d, want 1", n)
		}
		// A deleted key is new again.
		if prev := mustPut(t, ix, entry("gone", "o-again")); prev != "" {
			t.Errorf("Put after Delete: previous = %q, want \"\"", prev)
		}
	})
}

func TestDeleteAll(t *testing.T) {
	forEachBackend(t, func(t *testing.T, dsn string) {
		ix := mustOpen(t, dsn)
		ctx := context.Background()
		if objs, err := ix.DeleteAll(ctx); err != nil || len(objs) != 0 {
			t.Errorf("DeleteAll on empty index = %q, %v; want [], nil", objs, err)
		}
		var want []string
		for i := 0; i < 20; i++ {
			o := fmt.Sprintf("obj-%02d", i)
			want = append(want, o)
			mustPut(t, ix, entry(fmt.Sprintf("key-%d", i), o))
		}
		mustPut(t, ix, entry("key-0", "obj-replaced")) // obj-00 is no longer referenced
		want[0] = "obj-replaced"
		sort.Strings(want)
		got, err := ix.DeleteAll(ctx)
		if err != nil {
			t.Fatalf("DeleteAll: %v", err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("DeleteAll = %q, want %q", got, want)
		}
		if n, err := ix.Count(ctx); err != nil || n != 0 {
			t.Errorf("Count after DeleteAll = %d, %v; want 0, nil", n, err)
		}
	})
}

func TestAwkwardKeys(t *testing.T) {
	keys := []string{
		"a/b/c.png", "/leading", "trailing/", "..", "../../etc/passwd", "./.", " ", "with space", "  two  ",
		"it's", `"double"`, "`back`", `'; DROP TABLE images; --`, `Robert'); DROP TABLE images;--`,
		`" OR "1"="1`, "$1", "?", "%", "_", "%_like*", `back\slash`, "tab\there", "new\nline", "cr\rlf",
		"ünïcødé", "日本語のキー", "emoji 😀🎉", "RTL עברית", "zero\u200bwidth", "\u00a0nbsp",
		strings.Repeat("k", MaxKeyLen), strings.Repeat("é", MaxKeyLen/2), strings.Repeat("😀", MaxKeyLen/4),
	}
	forEachBackend(t, func(t *testing.T, dsn string) {
		ix := mustOpen(t, dsn)
		ctx := context.Background()
		for i, k := range keys {
			e := entry(k, fmt.Sprintf("obj-%d", i))
			e.ContentType = `image/png; name="'; DROP TABLE images; --"`
			if prev := mustPut(t, ix, e); prev != "" {
				t.Errorf("Put(%q): previous = %q, want \"\"", k, prev)
			}
			got := mustGet(t, ix, k)
			if got.Key != k || got.Object != e.Object || got.ContentType != e.ContentType {
				t.Errorf("Get(%q) = %+v, want key %q object %q", k, got, k, e.Object)
			}
		}
		es, err := ix.List(ctx)
		if err != nil {
			t.Fatalf("List: %v", err)
		}
		want := append([]string(nil), keys...)
		sort.Strings(want)
		if got := keysOf(es); !reflect.DeepEqual(got, want) {
			t.Errorf("List keys = %q, want %q", got, want)
		}
		// The table survived and nothing else changed.
		if n, err := ix.Count(ctx); err != nil || n != len(keys) {
			t.Errorf("Count = %d, %v; want %d, nil", n, err, len(keys))
		}
		for _, k := range keys {
			if _, err := ix.Delete(ctx, k); err != nil {
				t.Errorf("Delete(%q): %v", k, err)
			}
		}
		if n, _ := ix.Count(ctx); n != 0 {
			t.Errorf("Count after deleting all = %d, want 0", n)
		}
	})
}

func TestPutInvalid(t *testing.T) {
	forEachBackend(t, func(t *testing.T, dsn string) {
		ix := mustOpen(t, dsn)
		ctx := context.Background()
		for _, e := range []Entry{
			entry("", "o"),
			entry(strings.Repeat("x", MaxKeyLen+1), "o"),
			entry(strings.Repeat("é", MaxKeyLen/2)+"x", "o"), // 251 bytes
			entry("bad\xff\xfe", "o"),
			entry("nul\x00key", "o"),
			entry("k", ""),
			{Key: "k", Object: "o", Size: -1},
		} {
			if _, _, err := ix.Put(ctx, e); !errors.Is(err, ErrInvalidEntry) {
				t.Errorf("Put(%+q) error = %v, want ErrInvalidEntry", e.Key, err)
			}
		}
		if n, err := ix.Count(ctx); err != nil || n != 0 {
			t.Errorf("Count = %d, %v; want 0, nil", n, err)
		}
	})
}

// TestConcurrentPuts writes through two Indexes on the same database at once
// (for SQLite, two connection pools on one file, so writers also meet in
// SQLite's locking and not only in database/sql's pool).
func TestConcurrentPuts(t *testing.T) {
	forEachBackend(t, func(t *testing.T, dsn string) {
		ixs := []*Index{mustOpen(t, dsn), mustOpen(t, dsn)}
		ctx := context.Background()
		const n = 50
		// "hot" does not exist yet: one Put inserts it (and must be the only
		// one to see no previous object), the other 49 replace it.

		var wg sync.WaitGroup
		errs := make(chan error, 2*n)
		prevs := make(chan string, n)
		versions := make(chan [2]string, n) // version, object
		start := make(chan struct{})
		for i := 0; i < n; i++ {
			wg.Add(2)
			go func(ix *Index) {
				defer wg.Done()
				<-start
				key := fmt.Sprintf("distinct-%02d", i)
				prev, version, err := ix.Put(ctx, entry(key, "obj-"+key))
				if err == nil && (prev != "" || version != 1) {
					err = fmt.Errorf("Put(%q): previous = %q, version %d, want \"\", 1", key, prev, version)
				}
				if err != nil {
					errs <- err
				}
			}(ixs[i%2])
			go func(ix *Index) {
				defer wg.Done()
				<-start
				obj := fmt.Sprintf("hot-%02d", i)
				prev, version, err := ix.Put(ctx, entry("hot", obj))
				if err != nil {
					errs <- fmt.Errorf("Put(hot) #%d: %w", i, err)
					return
				}
				prevs <- prev
				versions <- [2]string{fmt.Sprint(version), obj}
			}(ixs[(i+1)%2])
		}
		close(start)
		wg.Wait()
		close(errs)
		close(prevs)
		close(versions)
		for err := range errs {
			t.Error(err)
		}
		if t.Failed() {
			return
		}

		// No lost update: every object written to "hot" except the final
		// one was replaced exactly once, so it is returned exactly once, and
		// exactly one Put found the key new.
		finalRow := mustGet(t, ixs[1], "hot")
		final := finalRow.Object
		// Versions are in commit order: the n Puts got 1..n once each, and
		// the row holds the object of the one that got n.
		byVersion := map[string]string{}
		for v := range versions {
			if o, dup := byVersion[v[0]]; dup {
				t.Errorf("version %s given to both %s and %s", v[0], o, v[1])
			}
			byVersion[v[0]] = v[1]
		}
		for v := 1; v <= n; v++ {
			if _, ok := byVersion[fmt.Sprint(v)]; !ok {
				t.Errorf("no Put got version %d", v)
			}
		}
		if finalRow.Version != n || byVersion[fmt.Sprint(n)] != final {
			t.Errorf("final row: version %d object %s; want %d and the object of the Put that got it (%s)", finalRow.Version, final, n, byVersion[fmt.Sprint(n)])
		}
		written := map[string]bool{}
		for i := 0; i < n; i++ {
			written[fmt.Sprintf("hot-%02d", i)] = true
		}
		if !written[final] {
			t.Errorf("final object of hot = %q, want one of the concurrent writes", final)
		}
		seen := map[string]int{}
		for p := range prevs {
			seen[p]++
		}
		if seen[""] != 1 {
			t.Errorf("%d Puts of hot found no previous object, want 1", seen[""])
		}
		for o := range written {
			want := 1
			if o == final {
				want = 0
			}
			if seen[o] != want {
				t.Errorf("%q returned as previous object %d times, want %d", o, seen[o], want)
			}
		}
		if len(seen) != n {
			t.Errorf("got %d distinct previous objects, want %d (seen %v)", len(seen), n, seen)
		}
		if c, err := ixs[0].Count(ctx); err != nil || c != n+1 {
			t.Errorf("Count = %d, %v; want %d, nil", c, err, n+1)
		}
	})
}

func TestSecondIndexSeesPut(t *testing.T) {
	forEachBackend(t, func(t *testing.T, dsn string) {
		a, b := mustOpen(t, dsn), mustOpen(t, dsn)
		mustPut(t, a, entry("shared", "obj-from-a"))
		if got := mustGet(t, b, "shared").Object; got != "obj-from-a" {
			t.Errorf("second Index Get object = %q, want %q", got, "obj-from-a")
		}
		if prev := mustPut(t, b, entry("shared", "obj-from-b")); prev != "obj-from-a" {
			t.Errorf("second Index Put previous = %q, want %q", prev, "obj-from-a")
		}
		if got := mustGet(t, a, "shared").Object; got != "obj-from-b" {
			t.Errorf("first Index Get object = %q, want %q", got, "obj-from-b")
		}
	})
}

func countMigrations(t *testing.T, ix *Index) []int {
	t.Helper()
	rows, err := ix.db.Query(`SELECT version FROM schema_migrations ORDER BY version`)
	if err != nil {
		t.Fatalf("read schema_migrations: %v", err)
	}
	defer rows.Close()
	var vs []int
	for rows.Next() {
		var v int
		if err := rows.Scan(&v); err != nil {
			t.Fatal(err)
		}
		vs = append(vs, v)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return vs
}

func TestMigrationsIdempotent(t *testing.T) {
	var want []int
	for i := range migrations {
		want = append(want, i+1)
	}
	forEachBackend(t, func(t *testing.T, dsn string) {
		first := mustOpen(t, dsn)
		mustPut(t, first, entry("k", "o"))
		if err := first.Close(); err != nil {
			t.Fatal(err)
		}
		again := mustOpen(t, dsn)
		if got := countMigrations(t, again); !reflect.DeepEqual(got, want) {
			t.Errorf("schema_migrations versions = %v, want %v", got, want)
		}
		if got := mustGet(t, again, "k").Object; got != "o" {
			t.Errorf("object after reopen = %q, want %q", got, "o")
		}
	})
}

// TestMigrationsConcurrentOpen opens several Indexes on a fresh database at
// once, as processes starting together would.
func TestMigrationsConcurrentOpen(t *testing.T) {
	forEachBackend(t, func(t *testing.T, dsn string) {
		const n = 6
		ixs := make([]*Index, n)
		errs := make([]error, n)
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i := range ixs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				ixs[i], errs[i] = Open(context.Background(), dsn)
			}()
		}
		close(start)
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Errorf("Open #%d: %v", i, err)
				continue
			}
			defer ixs[i].Close()
		}
		if t.Failed() {
			return
		}
		if got := countMigrations(t, ixs[0]); len(got) != len(migrations) {
			t.Errorf("schema_migrations has %d rows, want %d", len(got), len(migrations))
		}
	})
}

func TestOpenBadDSN(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, tc := range []struct {
		name, dsn string
		wantIn    []string // substrings of the error
		bad       bool     // wraps ErrBadDSN
	}{
		{"empty", "", []string{"empty"}, true},
		{"blank", "   ", []string{"empty"}, true},
		{"unknown scheme", "mysql://u:p@localhost/db", []string{`unsupported scheme "mysql"`}, true},
		{"sqlite without path", "sqlite:", []string{"without a file path"}, true},
		{"key=value postgres", "host=localhost dbname=x", []string{"postgres://"}, true},
		{"sqlite missing directory", "sqlite:" + filepath.Join(t.TempDir(), "no", "such", "dir", "x.db"), []string{"keyindex: connect to sqlite:"}, false},
		{"postgres refused", "postgres://u:hunter2@127.0.0.1:1/db?sslmode=disable&connect_timeout=5", []string{"keyindex: connect to postgres://u:xxxxx@127.0.0.1:1/db"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ix, err := Open(ctx, tc.dsn)
			if err == nil {
				ix.Close()
				t.Fatalf("Open(%q) succeeded, want an error", tc.dsn)
			}
			for _, s := range tc.wantIn {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("Open(%q) error = %q, want it to contain %q", tc.dsn, err, s)
				}
			}
			if strings.Contains(err.Error(), "hunter2") {
				t.Errorf("Open error %q reveals the password", err)
			}
			if got := errors.Is(err, ErrBadDSN); got != tc.bad {
				t.Errorf("errors.Is(err, ErrBadDSN) = %v, want %v (err %v)", got, tc.bad, err)
			}
		})
	}
}

func TestOpenSQLiteDSNForms(t *testing.T) {
	dir := t.TempDir()
	plain := filepath.Join(dir, "plain.db")
	for i, dsn := range []string{
		plain,
		"sqlite:" + plain, // same file as the plain path
		"sqlite://" + filepath.Join(dir, "url.db"),
		"sqlite:" + filepath.Join(dir, "q.db") + "?_pragma=cache_size(-2000)",
	} {
		t.Run(dsn, func(t *testing.T) {
			ix := mustOpen(t, dsn)
			if ix.Kind() != KindSQLite {
				t.Errorf("Kind() = %q, want %q", ix.Kind(), KindSQLite)
			}
			mustPut(t, ix, entry(fmt.Sprintf("k-%d", i), "o"))
			var mode string
			if err := ix.db.QueryRow(`PRAGMA journal_mode`).Scan(&mode); err != nil || mode != "wal" {
				t.Errorf("journal_mode = %q, %v; want wal, nil", mode, err)
			}
			var fk, busy int
			if err := ix.db.QueryRow(`PRAGMA foreign_keys`).Scan(&fk); err != nil || fk != 1 {
				t.Errorf("foreign_keys = %d, %v; want 1, nil", fk, err)
			}
			if err := ix.db.QueryRow(`PRAGMA busy_timeout`).Scan(&busy); err != nil || busy != 5000 {
				t.Errorf("busy_timeout = %d, %v; want 5000, nil", busy, err)
			}
		})
	}
	ix := mustOpen(t, plain)
	if n, err := ix.Count(context.Background()); err != nil || n != 2 {
		t.Errorf("Count on %s = %d, %v; want 2 (plain path and sqlite:path are one file), nil", plain, n, err)
	}
}

func TestDeleteAllAtRunsEachGenerationOnce(t *testing.T) {
	forEachBackend(t, func(t *testing.T, dsn string) {
		ctx := context.Background()
		ix := mustOpen(t, dsn)
		other := mustOpen(t, dsn) // a second frontend on the same database
		mustPut(t, ix, entry("a", "obj-a"))
		mustPut(t, ix, entry("b", "obj-b"))
		objects, done, err := ix.DeleteAllAt(ctx, 1)
		if err != nil || done || len(objects) != 2 || objects[0] != "obj-a" || objects[1] != "obj-b" {
			t.Fatalf("DeleteAllAt(1): %v, done %v, err %v; want [obj-a obj-b], false, nil", objects, done, err)
		}
		// A row written after generation 1 survives a repeat of generation 1,
		// from either index: the generation is recorded in the database.
		mustPut(t, ix, entry("c", "obj-c"))
		for _, x := range []*Index{ix, other} {
			if objects, done, err := x.DeleteAllAt(ctx, 1); err != nil || !done || len(objects) != 0 {
				t.Fatalf("repeat of generation 1: %v, done %v, err %v; want nothing, done", objects, done, err)
			}
		}
		if n, _ := ix.Count(ctx); n != 1 {
			t.Fatalf("count after a repeated generation = %d, want 1", n)
		}
		// An older generation is also done; a newer one deletes.
		if _, done, _ := other.DeleteAllAt(ctx, 0); !done {
			t.Error("generation 0 after 1: not done")
		}
		if objects, done, err := other.DeleteAllAt(ctx, 3); err != nil || done || len(objects) != 1 || objects[0] != "obj-c" {
			t.Fatalf("DeleteAllAt(3): %v, done %v, err %v; want [obj-c]", objects, done, err)
		}
		if n, _ := ix.Count(ctx); n != 0 {
			t.Fatalf("count after generation 3 = %d, want 0", n)
		}
	})
}

// TestDeleteAllAtRecordsOrphansUntilForgotten: the objects of the rows a
// delete-all removes are recorded in the same transaction and stay listed,
// for every index on the database, until each is forgotten.
func TestDeleteAllAtRecordsOrphansUntilForgotten(t *testing.T) {
	forEachBackend(t, func(t *testing.T, dsn string) {
		ctx := context.Background()
		ix := mustOpen(t, dsn)
		other := mustOpen(t, dsn)
		mustPut(t, ix, entry("a", "obj-a"))
		mustPut(t, ix, entry("b", "obj-b"))
		if o, err := ix.Orphans(ctx); err != nil || len(o) != 0 {
			t.Fatalf("orphans before any delete-all: %v, %v; want none", o, err)
		}
		if _, _, err := ix.DeleteAllAt(ctx, 1); err != nil {
			t.Fatal(err)
		}
		if o, err := other.Orphans(ctx); err != nil || !slices.Equal(o, []string{"obj-a", "obj-b"}) {
			t.Fatalf("orphans after the delete-all: %v, %v; want [obj-a obj-b]", o, err)
		}
		if err := other.ForgetOrphan(ctx, "obj-a"); err != nil {
			t.Fatal(err)
		}
		if _, done, _ := ix.DeleteAllAt(ctx, 1); !done {
			t.Fatal("repeat of generation 1 not done")
		}
		if o, err := ix.Orphans(ctx); err != nil || !slices.Equal(o, []string{"obj-b"}) {
			t.Fatalf("orphans after forgetting obj-a and a repeat: %v, %v; want [obj-b]", o, err)
		}
	})
}
