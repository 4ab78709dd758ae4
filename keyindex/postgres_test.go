package keyindex

import (
	"os"
	"strings"
	"testing"

	"github.com/memcache/memcache/internal/pgtest"
)

// TestMain stops the PostgreSQL server that pgtest.DSN starts on first use.
func TestMain(m *testing.M) {
	code := m.Run()
	pgtest.StopServer()
	os.Exit(code)
}

// isPostgresDSN is used by tests that treat the two backends differently.
func isPostgresDSN(dsn string) bool { return strings.HasPrefix(dsn, "postgres") }
