package keyindex

import (
	"context"
	"fmt"
	"time"
)

// migrations are applied in order; migration i (0-based) is version i+1 in
// schema_migrations. Append new ones; never edit or reorder applied ones.
// Each must run on both PostgreSQL and SQLite.
var migrations = []string{
	// 1: the index. Times are UTC; SQLite stores them as text in its own
	// "YYYY-MM-DD HH:MM:SS.ffffff+00:00" form, PostgreSQL as timestamp.
	`CREATE TABLE images (
		key          TEXT PRIMARY KEY,
		object       TEXT NOT NULL,
		content_type TEXT NOT NULL,
		size         BIGINT NOT NULL,
		sha256       TEXT NOT NULL,
		created_at   TIMESTAMP NOT NULL,
		updated_at   TIMESTAMP NOT NULL
	)`,
	// 2: the last delete-all generation carried out, so that a frontend
	// (or another frontend sharing the database) does not repeat it.
	`CREATE TABLE generations (
		name  TEXT PRIMARY KEY,
		value BIGINT NOT NULL
	)`,
	// 3: objects whose rows a delete-all removed and that are not yet
	// deleted from the blob store, recorded in the same transaction, so a
	// failed or interrupted deletion is finished by the next run.
	`CREATE TABLE orphans (
		object TEXT PRIMARY KEY
	)`,
	// 4: a per-key version, raised by one on every replacement under the
	// row's lock, so versions of one key are in commit order: cache nodes
	// keep the newest and refuse fills older than a replacement.
	`ALTER TABLE images ADD COLUMN version BIGINT NOT NULL DEFAULT 1`,
}

// migrate applies the pending migrations in one transaction. On PostgreSQL
// the transaction first takes an advisory lock, so processes that start at
// the same time apply each migration once; on SQLite the IMMEDIATE
// transaction holds the write lock from its start, to the same effect.
func (ix *Index) migrate(ctx context.Context) error {
	tx, err := ix.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if ix.d.lockMigrations != "" {
		if _, err := tx.ExecContext(ctx, ix.d.lockMigrations); err != nil {
			return fmt.Errorf("lock: %w", err)
		}
	}
	if _, err := tx.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
		version    INTEGER PRIMARY KEY,
		applied_at TIMESTAMP NOT NULL
	)`); err != nil {
		return fmt.Errorf("create schema_migrations: %w", err)
	}
	var current int
	if err := tx.QueryRowContext(ctx, `SELECT COALESCE(MAX(version), 0) FROM schema_migrations`).Scan(&current); err != nil {
		return fmt.Errorf("read schema version: %w", err)
	}
	if current > len(migrations) {
		return fmt.Errorf("database schema version %d is newer than this program's %d", current, len(migrations))
	}
	now := time.Now().UTC().Truncate(time.Microsecond)
	for v := current + 1; v <= len(migrations); v++ {
		if _, err := tx.ExecContext(ctx, migrations[v-1]); err != nil {
			return fmt.Errorf("migration %d: %w", v, err)
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)`, v, now); err != nil {
			return fmt.Errorf("record migration %d: %w", v, err)
		}
	}
	return tx.Commit()
}
