// Package pgtest starts throwaway PostgreSQL servers for tests.
//
// DSN hands each test a fresh, empty database on a server shared by the whole
// test binary: the one named by MEMCACHE_TEST_POSTGRES, or else a throwaway
// cluster started on first use from the PostgreSQL binaries on PATH or in
// /usr/lib/postgresql/*/bin. A package whose tests call DSN should stop that
// cluster from its TestMain:
//
//	func TestMain(m *testing.M) {
//		code := m.Run()
//		pgtest.StopServer()
//		os.Exit(code)
//	}
//
// InitCluster instead hands a test a cluster of its own, initialized but not
// started, for a test that runs the server itself (in another network
// namespace, on an address of its choosing).
//
// Without PostgreSQL, DSN and InitCluster skip the test, or fail it when
// MEMCACHE_TEST_REQUIRE_POSTGRES=1.
package pgtest

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/lib/pq"
)

// errNoPostgres means neither MEMCACHE_TEST_POSTGRES nor PostgreSQL server
// binaries are available.
var errNoPostgres = errors.New("PostgreSQL not installed")

// errStopped is the state after StopServer: the test binary is finishing.
var errStopped = errors.New("StopServer already called")

// shared is the only package-level mutable state: the server shared by the
// test binary's tests. mu guards all of it; the first DSN call starts the
// server while holding mu (so concurrent first calls wait for it), and
// StopServer stops it for good.
var shared struct {
	mu      sync.Mutex
	started bool  // start has been attempted (or StopServer called)
	err     error // result of start, or errStopped
	h       *harness
}

// harness owns the shared server (or the external one named by
// MEMCACHE_TEST_POSTGRES) and an admin connection to it.
type harness struct {
	admin   *sql.DB
	base    *url.URL // admin DSN; per-test DSNs replace its path
	desc    string   // where the server is, for the logs
	version string   // SELECT version()

	// Set only for a server this harness started.
	cmd    *exec.Cmd
	exited chan struct{}
	dir    string
}

// server returns the shared server, starting it on first use.
func server() (*harness, error) {
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if !shared.started {
		shared.started = true
		h := &harness{}
		if shared.err = h.start(); shared.err == nil {
			shared.h = h
		} else {
			h.stop() // a failed start may leave a directory behind
		}
	}
	return shared.h, shared.err
}

// DSN returns the DSN (a postgres:// URL) of a fresh, empty database on the
// shared PostgreSQL server, dropped when the test ends. Without PostgreSQL it
// skips the test, or fails it if MEMCACHE_TEST_REQUIRE_POSTGRES=1.
func DSN(t testing.TB) string {
	t.Helper()
	h, err := server()
	if errors.Is(err, errNoPostgres) {
		unavailable(t, err, " or set MEMCACHE_TEST_POSTGRES")
	}
	if err != nil {
		t.Fatalf("PostgreSQL test server: %v", err)
	}

	name := "test_" + randomHex(t, 8)
	ctx := context.Background()
	// Identifiers cannot be parameters; name is generated above and quoted.
	if _, err := h.admin.ExecContext(ctx, "CREATE DATABASE "+pq.QuoteIdentifier(name)); err != nil {
		t.Fatalf("create database %s: %v", name, err)
	}
	t.Cleanup(func() {
		if _, err := h.admin.ExecContext(ctx, "DROP DATABASE IF EXISTS "+pq.QuoteIdentifier(name)+" WITH (FORCE)"); err != nil {
			t.Errorf("drop database %s: %v", name, err)
		}
	})
	u := *h.base
	u.Path = "/" + name
	t.Logf("PostgreSQL server: %s (%s); database %s", h.version, h.desc, name)
	return u.String()
}

// unavailable skips t for a missing PostgreSQL, or fails it if
// MEMCACHE_TEST_REQUIRE_POSTGRES=1; hint adds to the advice.
func unavailable(t testing.TB, err error, hint string) {
	t.Helper()
	if os.Getenv("MEMCACHE_TEST_REQUIRE_POSTGRES") == "1" {
		t.Fatalf("PostgreSQL not installed; run .ci/install-postgres.sh (%v)", err)
	}
	t.Skipf("skipping PostgreSQL: %v; run .ci/install-postgres.sh%s", err, hint)
}

// Cluster is a PostgreSQL cluster made by InitCluster: initialized, not
// running.
type Cluster struct {
	// Bin is the directory of the server binaries (initdb, postgres).
	Bin string
	// Dir holds Data and Sock. It is outside the test's t.TempDir, whose
	// parents the server's user may not be able to traverse.
	Dir string
	// Data is the data directory, owned by the server's user: superuser
	// "postgres", trust authentication for every connection initdb
	// configures (local socket and loopback), UTF-8 and the C locale.
	Data string
	// Sock is an empty directory, owned by the server's user, for its Unix
	// socket (postgres -k).
	Sock string
	// Cred is the user the server must run as: the postgres OS user when
	// this process is root (PostgreSQL refuses to run as root), else nil,
	// this process's own.
	Cred *syscall.Credential
}

// InitCluster creates a throwaway cluster with initdb, from the PostgreSQL
// binaries on PATH or in /usr/lib/postgresql/*/bin, for the test to start
// (it ignores MEMCACHE_TEST_POSTGRES). Its directory is removed when the
// test ends: stop the server first, in a cleanup registered after this
// call. Without PostgreSQL it skips the test, or fails it if
// MEMCACHE_TEST_REQUIRE_POSTGRES=1.
func InitCluster(t testing.TB) Cluster {
	t.Helper()
	c, err := initCluster()
	if errors.Is(err, errNoPostgres) {
		unavailable(t, err, "")
	}
	if err != nil {
		t.Fatalf("PostgreSQL cluster: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(c.Dir) })
	return c
}

// StopServer stops the shared throwaway server, if one was started, and
// closes the admin connection. Call it from TestMain after m.Run; it is safe
// to call when no server was started. DSN fails the test after StopServer.
func StopServer() {
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if shared.h != nil {
		shared.h.stop()
		shared.h = nil
	}
	shared.started, shared.err = true, errStopped
}

func randomHex(t testing.TB, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

func (h *harness) start() error {
	if dsn := os.Getenv("MEMCACHE_TEST_POSTGRES"); dsn != "" {
		u, err := url.Parse(dsn)
		if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
			return fmt.Errorf("MEMCACHE_TEST_POSTGRES must be a postgres:// URL, got %q", dsn)
		}
		h.desc = "MEMCACHE_TEST_POSTGRES " + u.Redacted()
		return h.connect(u, 30*time.Second)
	}
	return h.startCluster()
}

// findPostgresBin returns the directory holding initdb and postgres: the one
// of initdb on PATH, else the newest /usr/lib/postgresql/*/bin.
func findPostgresBin() (string, error) {
	var candidates []string
	if p, err := exec.LookPath("initdb"); err == nil {
		if r, err := filepath.EvalSymlinks(p); err == nil {
			p = r
		}
		candidates = append(candidates, filepath.Dir(p))
	}
	found, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(found, func(i, j int) bool { // newest major version first
		vi, _ := strconv.Atoi(filepath.Base(filepath.Dir(found[i])))
		vj, _ := strconv.Atoi(filepath.Base(filepath.Dir(found[j])))
		return vi > vj
	})
	candidates = append(candidates, found...)
	for _, dir := range candidates {
		if isFile(filepath.Join(dir, "initdb")) && isFile(filepath.Join(dir, "postgres")) {
			return dir, nil
		}
	}
	return "", fmt.Errorf("%w: no initdb and postgres in PATH or /usr/lib/postgresql/*/bin, and MEMCACHE_TEST_POSTGRES unset", errNoPostgres)
}

func isFile(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular()
}

// startCluster creates a throwaway cluster and starts its server on a free
// port.
func (h *harness) startCluster() error {
	c, err := initCluster()
	if err != nil {
		return err
	}
	h.dir = c.Dir
	// The free port can be taken between choosing and binding it; try again.
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		port, err := freePort()
		if err != nil {
			return err
		}
		if lastErr = h.runServer(c.Bin, c.Data, c.Sock, port, c.Cred); lastErr == nil {
			return nil
		}
	}
	return lastErr
}

// initCluster finds the binaries and runs initdb into a new directory,
// which it removes again if it fails. PostgreSQL refuses to run as root, so
// under root initdb (and the server, later) runs as the postgres OS user,
// in a directory outside t.TempDir (whose parents that user may not be able
// to traverse).
func initCluster() (c Cluster, err error) {
	if c.Bin, err = findPostgresBin(); err != nil {
		return Cluster{}, err
	}
	var uid, gid = -1, -1
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			return Cluster{}, fmt.Errorf("%w: running as root and there is no postgres user to run the server as: %v", errNoPostgres, err)
		}
		uid, _ = strconv.Atoi(u.Uid)
		gid, _ = strconv.Atoi(u.Gid)
		c.Cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	}
	if c.Dir, err = os.MkdirTemp("", "pgtest-"); err != nil {
		return Cluster{}, err
	}
	defer func() {
		if err != nil {
			os.RemoveAll(c.Dir)
			c = Cluster{}
		}
	}()
	c.Data, c.Sock = filepath.Join(c.Dir, "data"), filepath.Join(c.Dir, "sock")
	if err := os.Chmod(c.Dir, 0o755); err != nil {
		return c, err
	}
	for _, d := range []string{c.Data, c.Sock} {
		if err := os.Mkdir(d, 0o700); err != nil {
			return c, err
		}
		if uid >= 0 {
			if err := os.Chown(d, uid, gid); err != nil {
				return c, err
			}
		}
	}
	initdb := exec.Command(filepath.Join(c.Bin, "initdb"), "-D", c.Data, "-A", "trust", "-U", "postgres",
		"--encoding=UTF8", "--locale=C", "--no-sync")
	initdb.Dir = c.Dir
	initdb.SysProcAttr = &syscall.SysProcAttr{Credential: c.Cred}
	if out, err := initdb.CombinedOutput(); err != nil {
		return c, fmt.Errorf("initdb: %v\n%s", err, out)
	}
	return c, nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func (h *harness) runServer(bin, data, sock string, port int, cred *syscall.Credential) error {
	logPath := filepath.Join(h.dir, "postgres.log")
	logf, err := os.Create(logPath)
	if err != nil {
		return err
	}
	defer logf.Close() // the child has its own descriptor
	cmd := exec.Command(filepath.Join(bin, "postgres"), "-D", data, "-p", strconv.Itoa(port), "-k", sock,
		"-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "synchronous_commit=off",
		"-c", "full_page_writes=off", "-c", "max_connections=200")
	cmd.Dir = h.dir
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start postgres: %w", err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	h.cmd, h.exited = cmd, exited

	u := &url.URL{Scheme: "postgres", User: url.User("postgres"), Host: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)),
		Path: "/postgres", RawQuery: "sslmode=disable"}
	h.desc = fmt.Sprintf("throwaway cluster %s, %s", data, u.Host)
	if err := h.connect(u, 60*time.Second); err != nil {
		h.stopServer()
		log, _ := os.ReadFile(logPath)
		return fmt.Errorf("%v\npostgres log:\n%s", err, log)
	}
	return nil
}

// connect polls until the server at u accepts connections, then records its
// version and keeps the admin connection.
func (h *harness) connect(u *url.URL, timeout time.Duration) error {
	db, err := sql.Open("postgres", u.String())
	if err != nil {
		return err
	}
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		err = db.QueryRowContext(ctx, "SELECT version()").Scan(&h.version)
		cancel()
		if err == nil {
			h.admin, h.base = db, u
			return nil
		}
		if time.Now().After(deadline) {
			db.Close()
			return fmt.Errorf("PostgreSQL at %s not accepting connections after %v: %v", u.Redacted(), timeout, err)
		}
		select {
		case <-h.exited: // nil channel (external server) never fires
			db.Close()
			return fmt.Errorf("postgres exited before accepting connections: %v", err)
		case <-tick.C:
		}
	}
}

// stopServer asks the server for a fast shutdown (SIGINT) and waits for it.
func (h *harness) stopServer() {
	if h.cmd == nil {
		return
	}
	h.cmd.Process.Signal(os.Interrupt)
	select {
	case <-h.exited:
	case <-time.After(30 * time.Second):
		h.cmd.Process.Kill()
		<-h.exited
	}
	h.cmd = nil
}

func (h *harness) stop() {
	if h.admin != nil {
		h.admin.Close()
	}
	h.stopServer()
	if h.dir != "" {
		os.RemoveAll(h.dir)
	}
}
