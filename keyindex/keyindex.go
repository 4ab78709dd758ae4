// Package keyindex maps image keys to their stored objects in PostgreSQL or SQLite.
//
// Both databases are reached through database/sql with one schema and the same
// parameterised statements ($1 placeholders work with lib/pq and with
// modernc.org/sqlite); the few differences (row locks, collation, advisory
// locks) are kept in a small dialect table. The schema is created and upgraded
// by Open from the ordered migrations in migrate.go.
//
// Design note for the next maintainer: Put must report the object it replaced
// exactly once, because the caller deletes that blob. On PostgreSQL two Puts of
// a key that does not exist yet could both see "no row" and the second would
// silently overwrite the first, so Put first takes a transaction-scoped
// advisory lock on the key's hash, then reads the old row with SELECT ... FOR
// UPDATE, then upserts. On SQLite every transaction begins IMMEDIATE (the
// write lock is taken at BEGIN), which serialises writers the same way.
package keyindex

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"sort"
	"strings"
	"time"
	"unicode/utf8"

	_ "github.com/lib/pq"  // registers driver "postgres"
	_ "modernc.org/sqlite" // registers driver "sqlite"
)

// MaxKeyLen is the longest key, in bytes, that Put accepts.
const MaxKeyLen = 250

// Kinds of database, as returned by Index.Kind.
const (
	KindPostgres = "postgres"
	KindSQLite   = "sqlite"
)

// Errors returned by this package. Driver errors are wrapped with %w and
// context; these sentinels are the ones callers are expected to test for.
var (
	// ErrNotFound is returned by Get and Delete when the key has no row.
	ErrNotFound = errors.New("keyindex: key not found")
	// ErrInvalidEntry is returned by Put for an entry that cannot be stored:
	// an empty, over-long (see MaxKeyLen) or non-UTF-8 key, a key containing
	// a NUL byte, an empty object name or a negative size.
	ErrInvalidEntry = errors.New("keyindex: invalid entry")
	// ErrBadDSN is returned by Open for a DSN it cannot interpret.
	ErrBadDSN = errors.New("keyindex: bad DSN")
)

// Entry is one row of the index: where the image stored under Key lives.
type Entry struct {
	Key         string
	Object      string // blob object name
	ContentType string
	Size        int64
	SHA256      string    // hex
	Created     time.Time // first upload of this key (UTC, microsecond precision)
	Updated     time.Time // last replacement (UTC, microsecond precision)
	// Version is 1 for a new key and goes up by one on every replacement;
	// versions of one key are in commit order (Put sets it).
	Version int64
}

// Index is the key index. It is safe for concurrent use by multiple
// goroutines, and several Indexes (in one or several processes) may share one
// database.
type Index struct {
	db   *sql.DB
	d    dialect
	now  func() time.Time // clock for Created/Updated; time.Now outside tests
	desc string           // DSN with the password removed, for error messages
}

// dialect holds what differs between the two databases.
type dialect struct {
	kind   string
	driver string
	// forUpdate is appended to the SELECT that reads the old row in Put.
	forUpdate string
	// orderByKey orders rows by key bytewise (PostgreSQL would otherwise
	// use the database's collation, which differs between installations).
	orderByKey string
	// lockKey, if not empty, is run first in Put's transaction with the key
	// as $1 to serialise Puts of the same key.
	lockKey string
	// lockMigrations, if not empty, is run first in the migration
	// transaction to serialise concurrent Opens.
	lockMigrations string
}

// Advisory lock identifiers. The one-bigint and two-int4 key spaces of
// PostgreSQL advisory locks do not overlap.
const (
	migrationLockID = 0x6b6579696e646578 // "keyindex"
	putLockClass    = 0x6b657969         // "keyi"; second key is hashtext(key)
)

var (
	postgresDialect = dialect{
		kind:           KindPostgres,
		driver:         "postgres",
		forUpdate:      " FOR UPDATE",
		orderByKey:     ` ORDER BY key COLLATE "C"`,
		lockKey:        fmt.Sprintf(`SELECT pg_advisory_xact_lock(%d, hashtext($1::text))`, putLockClass),
		lockMigrations: fmt.Sprintf(`SELECT pg_advisory_xact_lock(%d)`, int64(migrationLockID)),
	}
	sqliteDialect = dialect{
		kind:       KindSQLite,
		driver:     "sqlite",
		orderByKey: ` ORDER BY key`,
	}
)

// sqliteParams configure every SQLite connection: WAL so readers do not block
// the writer, a busy timeout so a writer in another connection or process is
// waited for instead of failing with SQLITE_BUSY, foreign keys on, IMMEDIATE
// transactions so a transaction that reads and then writes never has to
// upgrade its lock (the upgrade fails at once, whatever the busy timeout), and
// times written in SQLite's own format.
const sqliteParams = "_pragma=busy_timeout(5000)&_pragma=journal_mode(WAL)&_pragma=foreign_keys(1)&_txlock=immediate&_time_format=sqlite"

// Pool sizes. SQLite has one writer at a time; one connection per Index makes
// writers within a process queue in database/sql rather than in SQLite's
// busy handler. PostgreSQL is capped so that many Indexes or a burst of
// requests do not exhaust the server's max_connections.
const (
	sqliteMaxConns   = 1
	postgresMaxConns = 10
)

// Open connects to the database named by dsn, checks that it answers, and
// brings its schema up to date.
//
// A DSN beginning with postgres:// or postgresql:// selects PostgreSQL
// (lib/pq; add sslmode=disable for a server without TLS). "sqlite:PATH" or a
// plain file path selects SQLite; the file is created if missing, but its
// directory must exist. Any other scheme is an error wrapping ErrBadDSN.
func Open(ctx context.Context, dsn string) (*Index, error) {
	d, driverDSN, desc, err := parseDSN(dsn)
	if err != nil {
		return nil, err
	}
	db, err := sql.Open(d.driver, driverDSN)
	if err != nil {
		return nil, fmt.Errorf("keyindex: open %s: %w", desc, err)
	}
	switch d.kind {
	case KindSQLite:
		db.SetMaxOpenConns(sqliteMaxConns)
	case KindPostgres:
		db.SetMaxOpenConns(postgresMaxConns)
		db.SetMaxIdleConns(postgresMaxConns)
	}
	ix := &Index{db: db, d: d, now: time.Now, desc: desc}
	if err := ix.ping(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("keyindex: connect to %s: %w", desc, err)
	}
	if err := ix.migrate(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("keyindex: migrate %s: %w", desc, err)
	}
	return ix, nil
}

// parseDSN chooses the dialect and returns the DSN to hand to its driver and
// a description of the database that is safe to log.
func parseDSN(dsn string) (d dialect, driverDSN, desc string, err error) {
	s := strings.TrimSpace(dsn)
	lower := strings.ToLower(s)
	switch {
	case s == "":
		return dialect{}, "", "", fmt.Errorf("%w: empty; want postgres://..., sqlite:PATH or a file path", ErrBadDSN)
	case strings.HasPrefix(lower, "postgres://"), strings.HasPrefix(lower, "postgresql://"):
		return postgresDialect, s, redactURL(s), nil
	case strings.HasPrefix(lower, "sqlite://"):
		return sqliteDSN(s[len("sqlite://"):])
	case strings.HasPrefix(lower, "sqlite:"):
		return sqliteDSN(s[len("sqlite:"):])
	case strings.Contains(s, "://"):
		scheme, _, _ := strings.Cut(s, "://")
		return dialect{}, "", "", fmt.Errorf("%w: unsupported scheme %q; want postgres://, postgresql://, sqlite:PATH or a file path", ErrBadDSN, scheme)
	case strings.HasPrefix(lower, "host=") || strings.Contains(lower, " dbname=") || strings.HasPrefix(lower, "dbname="):
		return dialect{}, "", "", fmt.Errorf("%w: key=value PostgreSQL DSNs are not supported; use postgres://user:password@host:port/dbname?sslmode=...", ErrBadDSN)
	default:
		return sqliteDSN(s)
	}
}

func sqliteDSN(path string) (dialect, string, string, error) {
	if path == "" {
		return dialect{}, "", "", fmt.Errorf("%w: sqlite: without a file path", ErrBadDSN)
	}
	sep := "?"
	if strings.Contains(path, "?") {
		sep = "&"
	}
	name, _, _ := strings.Cut(path, "?")
	return sqliteDialect, path + sep + sqliteParams, "sqlite:" + name, nil
}

// redactURL returns the URL with any password replaced by "xxxxx".
func redactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return "postgres (unparsable URL)"
	}
	return u.Redacted()
}

// ping connects. On SQLite, switching a new database file to WAL needs a
// lock that SQLite does not wait for through its busy timeout, so a
// connection opened while another process does the same can fail with
// SQLITE_BUSY: that is retried for up to 5 s.
func (ix *Index) ping(ctx context.Context) error {
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := ix.db.PingContext(ctx)
		if err == nil || ix.d.kind != KindSQLite || !strings.Contains(err.Error(), "SQLITE_BUSY") || time.Now().After(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Kind returns "postgres" or "sqlite".
func (ix *Index) Kind() string { return ix.d.kind }

// Close closes the database connections.
func (ix *Index) Close() error { return ix.db.Close() }

// validKey reports whether key could be stored by Put.
func validKey(key string) error {
	switch {
	case key == "":
		return errors.New("empty key")
	case len(key) > MaxKeyLen:
		return fmt.Errorf("key is %d bytes, longer than %d", len(key), MaxKeyLen)
	case !utf8.ValidString(key):
		return errors.New("key is not valid UTF-8")
	case strings.IndexByte(key, 0) >= 0:
		return errors.New("key contains a NUL byte")
	}
	return nil
}

func validEntry(e Entry) error {
	if err := validKey(e.Key); err != nil {
		return err
	}
	for _, f := range []struct{ name, v string }{
		{"object", e.Object}, {"content type", e.ContentType}, {"sha256", e.SHA256},
	} {
		if !utf8.ValidString(f.v) || strings.IndexByte(f.v, 0) >= 0 {
			return fmt.Errorf("%s is not valid UTF-8 text", f.name)
		}
	}
	if e.Object == "" {
		return errors.New("empty object name")
	}
	if e.Size < 0 {
		return fmt.Errorf("negative size %d", e.Size)
	}
	return nil
}

const entryColumns = `key, object, content_type, size, sha256, created_at, updated_at, version`

// Put inserts or replaces the row for e.Key and returns the object name it
// replaced ("" if the key was new) and the row's new version. Created is
// set on first insert and kept on replace; Updated is set to the current
// time; Version is 1 on insert and one more than the replaced row's on
// replace; those fields of e are ignored. The read of the old row and the
// write happen in one transaction, so among concurrent Puts of one key
// every replaced object is returned to exactly one of them, and their
// versions are in commit order.
func (ix *Index) Put(ctx context.Context, e Entry) (previousObject string, version int64, err error) {
	if err := validEntry(e); err != nil {
		return "", 0, fmt.Errorf("%w: %v", ErrInvalidEntry, err)
	}
	now := ix.now().UTC().Truncate(time.Microsecond)

	tx, err := ix.db.BeginTx(ctx, nil)
	if err != nil {
		return "", 0, fmt.Errorf("keyindex: put %q: begin: %w", e.Key, err)
	}
	defer tx.Rollback() // no-op after Commit

	if ix.d.lockKey != "" {
		if _, err := tx.ExecContext(ctx, ix.d.lockKey, e.Key); err != nil {
			return "", 0, fmt.Errorf("keyindex: put %q: lock: %w", e.Key, err)
		}
	}
	var prev string
	err = tx.QueryRowContext(ctx, `SELECT object FROM images WHERE key = $1`+ix.d.forUpdate, e.Key).Scan(&prev)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return "", 0, fmt.Errorf("keyindex: put %q: read previous: %w", e.Key, err)
	}
	var created sqlTime
	err = tx.QueryRowContext(ctx, `INSERT INTO images (`+entryColumns+`)
		VALUES ($1, $2, $3, $4, $5, $6, $6, 1)
		ON CONFLICT (key) DO UPDATE SET
			object = excluded.object,
			content_type = excluded.content_type,
			size = excluded.size,
			sha256 = excluded.sha256,
			updated_at = excluded.updated_at,
			version = images.version + 1
		RETURNING created_at, version`,
		e.Key, e.Object, e.ContentType, e.Size, e.SHA256, now).Scan(&created, &version)
	if err != nil {
		return "", 0, fmt.Errorf("keyindex: put %q: write: %w", e.Key, err)
	}
	// Under the lock the old row read above is the one the upsert replaced;
	// a new row must carry this Put's timestamp.
	if prev == "" && !time.Time(created).Equal(now) {
		return "", 0, fmt.Errorf("keyindex: put %q: row appeared during the transaction", e.Key)
	}
	if err := tx.Commit(); err != nil {
		return "", 0, fmt.Errorf("keyindex: put %q: commit: %w", e.Key, err)
	}
	return prev, version, nil
}

// scanEntry reads one row of entryColumns.
func scanEntry(row interface{ Scan(...any) error }) (Entry, error) {
	var e Entry
	var created, updated sqlTime
	if err := row.Scan(&e.Key, &e.Object, &e.ContentType, &e.Size, &e.SHA256, &created, &updated, &e.Version); err != nil {
		return Entry{}, err
	}
	e.Created, e.Updated = time.Time(created), time.Time(updated)
	return e, nil
}

// Get returns the row for key, or ErrNotFound.
func (ix *Index) Get(ctx context.Context, key string) (Entry, error) {
	if validKey(key) != nil {
		return Entry{}, ErrNotFound // such a key is never stored
	}
	e, err := scanEntry(ix.db.QueryRowContext(ctx, `SELECT `+entryColumns+` FROM images WHERE key = $1`, key))
	if errors.Is(err, sql.ErrNoRows) {
		return Entry{}, ErrNotFound
	}
	if err != nil {
		return Entry{}, fmt.Errorf("keyindex: get %q: %w", key, err)
	}
	return e, nil
}

// List returns every row, ordered by key (bytewise, which for UTF-8 is code
// point order).
func (ix *Index) List(ctx context.Context) ([]Entry, error) {
	rows, err := ix.db.QueryContext(ctx, `SELECT `+entryColumns+` FROM images`+ix.d.orderByKey)
	if err != nil {
		return nil, fmt.Errorf("keyindex: list: %w", err)
	}
	defer rows.Close()
	var out []Entry
	for rows.Next() {
		e, err := scanEntry(rows)
		if err != nil {
			return nil, fmt.Errorf("keyindex: list: %w", err)
		}
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("keyindex: list: %w", err)
	}
	return out, nil
}

// Count returns the number of rows.
func (ix *Index) Count(ctx context.Context) (int, error) {
	var n int
	if err := ix.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM images`).Scan(&n); err != nil {
		return 0, fmt.Errorf("keyindex: count: %w", err)
	}
	return n, nil
}

// Delete removes the row for key and returns it, or returns ErrNotFound.
func (ix *Index) Delete(ctx context.Context, key string) (Entry, error) {
	if validKey(key) != nil {
		return Entry{}, ErrNotFound
	}
	e, err := scanEntry(ix.db.QueryRowContext(ctx, `DELETE FROM images WHERE key = $1 RETURNING `+entryColumns, key))
	if errors.Is(err, sql.ErrNoRows) {
		return Entry{}, ErrNotFound
	}
	if err != nil {
		return Entry{}, fmt.Errorf("keyindex: delete %q: %w", key, err)
	}
	return e, nil
}

// DeleteAll deletes every row in one statement and returns the object names
// they pointed to, sorted, so the caller can delete the blobs.
func (ix *Index) DeleteAll(ctx context.Context) ([]string, error) {
	return deleteAllRows(ctx, ix.db)
}

// DeleteAllAt carries out the pool's delete-all generation gen once: unless
// a generation >= gen is already recorded (then done is true and nothing
// changes), it deletes every row, records gen and records the deleted rows'
// objects as orphans (see Orphans), in one transaction, and returns those
// object names.
func (ix *Index) DeleteAllAt(ctx context.Context, gen uint64) (objects []string, done bool, err error) {
	tx, err := ix.db.BeginTx(ctx, nil)
	if err != nil {
		return nil, false, fmt.Errorf("keyindex: delete all: %w", err)
	}
	defer tx.Rollback()
	if ix.d.kind == "postgres" {
		// Serialise frontends that act on the same generation at once.
		if _, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock(6177326581)`); err != nil {
			return nil, false, fmt.Errorf("keyindex: delete all: %w", err)
		}
	}
	var recorded int64
	err = tx.QueryRowContext(ctx, `SELECT value FROM generations WHERE name = 'delete_all'`).Scan(&recorded)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return nil, false, fmt.Errorf("keyindex: delete all: %w", err)
	}
	if uint64(recorded) >= gen {
		return nil, true, nil
	}
	objects, err = deleteAllRows(ctx, tx)
	if err != nil {
		return nil, false, err
	}
	for _, o := range objects {
		if _, err := tx.ExecContext(ctx, `INSERT INTO orphans (object) VALUES ($1) ON CONFLICT (object) DO NOTHING`, o); err != nil {
			return nil, false, fmt.Errorf("keyindex: record orphan: %w", err)
		}
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO generations (name, value) VALUES ('delete_all', $1)
		ON CONFLICT (name) DO UPDATE SET value = excluded.value`, int64(gen)); err != nil {
		return nil, false, fmt.Errorf("keyindex: record delete-all generation: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return nil, false, fmt.Errorf("keyindex: delete all: %w", err)
	}
	return objects, false, nil
}

// Orphans returns the objects whose rows a delete-all removed and that
// ForgetOrphans has not yet been told are deleted from the blob store.
func (ix *Index) Orphans(ctx context.Context) ([]string, error) {
	rows, err := ix.db.QueryContext(ctx, `SELECT object FROM orphans ORDER BY object`)
	if err != nil {
		return nil, fmt.Errorf("keyindex: orphans: %w", err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var o string
		if err := rows.Scan(&o); err != nil {
			return nil, fmt.Errorf("keyindex: orphans: %w", err)
		}
		out = append(out, o)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("keyindex: orphans: %w", err)
	}
	return out, nil
}

// ForgetOrphan records that object is deleted from the blob store.
func (ix *Index) ForgetOrphan(ctx context.Context, object string) error {
	if _, err := ix.db.ExecContext(ctx, `DELETE FROM orphans WHERE object = $1`, object); err != nil {
		return fmt.Errorf("keyindex: forget orphan: %w", err)
	}
	return nil
}

// querier is what deleteAllRows needs of a *sql.DB or *sql.Tx.
type querier interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
}

func deleteAllRows(ctx context.Context, q querier) ([]string, error) {
	rows, err := q.QueryContext(ctx, `DELETE FROM images RETURNING object`)
	if err != nil {
		return nil, fmt.Errorf("keyindex: delete all: %w", err)
	}
	defer rows.Close()
	var objects []string
	for rows.Next() {
		var o string
		if err := rows.Scan(&o); err != nil {
			return nil, fmt.Errorf("keyindex: delete all: %w", err)
		}
		objects = append(objects, o)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("keyindex: delete all: %w", err)
	}
	sort.Strings(objects)
	return objects, nil
}

// sqlTime scans a timestamp column into a UTC time.Time whichever way the
// driver presents it: lib/pq gives a time.Time; modernc.org/sqlite gives a
// time.Time for columns declared TIMESTAMP and text where it cannot see the
// declared type.
type sqlTime time.Time

// timeLayouts are the text forms accepted by sqlTime.Scan; the first is the
// one written to SQLite (_time_format=sqlite).
var timeLayouts = []string{
	"2006-01-02 15:04:05.999999999-07:00",
	time.RFC3339Nano,
	"2006-01-02 15:04:05.999999999",
}

func (t *sqlTime) Scan(v any) error {
	switch x := v.(type) {
	case time.Time:
		*t = sqlTime(x.UTC())
		return nil
	case string:
		return t.parse(x)
	case []byte:
		return t.parse(string(x))
	}
	return fmt.Errorf("cannot scan %T into a timestamp", v)
}

func (t *sqlTime) parse(s string) error {
	for _, l := range timeLayouts {
		if p, err := time.Parse(l, s); err == nil {
			*t = sqlTime(p.UTC())
			return nil
		}
	}
	return fmt.Errorf("cannot parse timestamp %q", s)
}
