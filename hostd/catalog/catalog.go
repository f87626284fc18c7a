// Package catalog is the host's SQLite catalog (state_dir/catalog.db, WAL):
// a cache of the points every target holds, the jobs and their log lines,
// the sessions (mounts, NBD servers, booted domains), the points
// verification found damaged, and the scheduler's last runs. The repositories
// stay the truth: ReplaceTarget and AddPoints rebuild the points from them.
// The schema and its numbered migrations are in docs/CATALOG.md.
package catalog

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/mattn/go-sqlite3"
	_ "github.com/mattn/go-sqlite3" // the database/sql driver "sqlite3"
)

// ErrNotFound is returned for a job or session the catalog does not hold.
var ErrNotFound = errors.New("not in the catalog")

// migrations are applied in order; PRAGMA user_version counts those done.
// Never edit one that has shipped: add a new one.
var migrations = []string{
	// 1: targets, domains, points and their disks, jobs, logs, sessions.
	`CREATE TABLE targets (
		name TEXT PRIMARY KEY,
		synced_ns INTEGER NOT NULL DEFAULT 0
	);
	CREATE TABLE domains (
		uuid TEXT PRIMARY KEY,
		name TEXT NOT NULL
	);
	CREATE TABLE points (
		target TEXT NOT NULL REFERENCES targets(name) ON DELETE CASCADE,
		id TEXT NOT NULL,
		domain_uuid TEXT NOT NULL REFERENCES domains(uuid),
		domain TEXT NOT NULL,
		time_ns INTEGER NOT NULL,
		level TEXT NOT NULL,
		consistency TEXT NOT NULL,
		freeze_ms INTEGER NOT NULL,
		checkpoint TEXT NOT NULL,
		parent TEXT NOT NULL,
		PRIMARY KEY (target, id)
	);
	CREATE INDEX points_time ON points(time_ns);
	CREATE INDEX points_domain ON points(domain, time_ns);
	CREATE INDEX points_domain_uuid ON points(domain_uuid, time_ns);
	CREATE TABLE point_disks (
		target TEXT NOT NULL,
		point TEXT NOT NULL,
		seq INTEGER NOT NULL,
		name TEXT NOT NULL,
		format TEXT NOT NULL,
		virtual_size INTEGER NOT NULL,
		bytes_read INTEGER NOT NULL,
		bytes_stored INTEGER NOT NULL,
		checkpoint TEXT NOT NULL,
		PRIMARY KEY (target, point, seq),
		FOREIGN KEY (target, point) REFERENCES points(target, id) ON DELETE CASCADE
	);
	CREATE TABLE jobs (
		id TEXT PRIMARY KEY,
		kind TEXT NOT NULL,
		domain TEXT NOT NULL,
		target TEXT NOT NULL,
		state TEXT NOT NULL,
		created_ns INTEGER NOT NULL,
		started_ns INTEGER NOT NULL,
		ended_ns INTEGER NOT NULL,
		holder_pid INTEGER NOT NULL,
		request TEXT NOT NULL,
		job TEXT NOT NULL
	);
	CREATE INDEX jobs_created ON jobs(created_ns);
	CREATE TABLE job_logs (
		job TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
		seq INTEGER NOT NULL,
		time_ns INTEGER NOT NULL,
		level TEXT NOT NULL,
		message TEXT NOT NULL,
		attrs TEXT NOT NULL,
		PRIMARY KEY (job, seq)
	);
	CREATE TABLE sessions (
		id TEXT PRIMARY KEY,
		kind TEXT NOT NULL,
		holder_pid INTEGER NOT NULL,
		created_ns INTEGER NOT NULL,
		session TEXT NOT NULL,
		state TEXT NOT NULL
	);`,
	// 2: points verification found damaged (kept across rebuilds), the
	// scheduler's last runs, and jobs' policy and parent.
	`CREATE TABLE damaged (
		target TEXT NOT NULL,
		point TEXT NOT NULL,
		found_ns INTEGER NOT NULL,
		problem TEXT NOT NULL,
		PRIMARY KEY (target, point)
	);
	CREATE TABLE schedule (
		entry TEXT PRIMARY KEY,
		last_ns INTEGER NOT NULL
	);
	ALTER TABLE jobs ADD COLUMN policy TEXT NOT NULL DEFAULT '';
	ALTER TABLE jobs ADD COLUMN parent TEXT NOT NULL DEFAULT '';
	CREATE INDEX jobs_policy ON jobs(policy, created_ns);`,
}

// DB is an open catalog.
type DB struct {
	db *sql.DB
	// Replaced says why a damaged catalog was moved aside and this one
	// made by Open ("" when none was).
	Replaced string
}

// OpenOrReplace is Open, but a catalog SQLite finds damaged (not a
// database, or corrupt) is moved aside (path.damaged-<time>) and a new one
// made: the catalog is a cache of the targets, rebuilt from them on first
// use; only job history is lost. Only the holder of the host lock may.
func OpenOrReplace(ctx context.Context, path string) (*DB, error) {
	c, err := Open(ctx, path)
	var se sqlite3.Error
	if errors.As(err, &se) && (se.Code == sqlite3.ErrNotADB || se.Code == sqlite3.ErrCorrupt) {
		aside := fmt.Sprintf("%s.damaged-%s", path, time.Now().UTC().Format("20060102T150405Z"))
		if rerr := os.Rename(path, aside); rerr != nil {
			return nil, fmt.Errorf("%w (moving it aside: %v)", err, rerr)
		}
		os.Remove(path + "-wal")
		os.Remove(path + "-shm")
		c, err = Open(ctx, path)
		if err == nil {
			c.Replaced = fmt.Sprintf("the catalog was damaged (%v): moved to %s, a new one is rebuilt from the targets", se, aside)
		}
	}
	return c, err
}

// Open opens (creating it 0600 if needed) and migrates the catalog at path.
func Open(ctx context.Context, path string) (*DB, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o711); err != nil {
		return nil, fmt.Errorf("catalog: %w", err)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("catalog: %w", err)
	}
	f.Close()
	dsn := "file:" + path + "?_journal_mode=WAL&_busy_timeout=10000&_foreign_keys=on&_synchronous=NORMAL&_txlock=immediate"
	db, err := sql.Open("sqlite3", dsn)
	if err != nil {
		return nil, fmt.Errorf("catalog %s: %w", path, err)
	}
	c := &DB{db: db}
	if err := c.migrate(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("catalog %s: %w", path, err)
	}
	return c, nil
}

// Close closes the database.
func (c *DB) Close() error { return c.db.Close() }

// SchemaVersion is the number of migrations this build knows.
func SchemaVersion() int { return len(migrations) }

func (c *DB) migrate(ctx context.Context) error {
	var v int
	if err := c.db.QueryRowContext(ctx, "PRAGMA user_version").Scan(&v); err != nil {
		return err
	}
	if v > len(migrations) {
		return fmt.Errorf("schema version %d is newer than this virtkeep's (%d)", v, len(migrations))
	}
	for i := v; i < len(migrations); i++ {
		err := c.tx(ctx, func(tx *sql.Tx) error {
			if _, err := tx.ExecContext(ctx, migrations[i]); err != nil {
				return fmt.Errorf("migration %d: %w", i+1, err)
			}
			_, err := tx.ExecContext(ctx, fmt.Sprintf("PRAGMA user_version = %d", i+1))
			return err
		})
		if err != nil {
			return err
		}
	}
	return nil
}

func (c *DB) tx(ctx context.Context, fn func(*sql.Tx) error) error {
	tx, err := c.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	if err := fn(tx); err != nil {
		tx.Rollback()
		return err
	}
	return tx.Commit()
}

func ns(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func fromNS(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n).UTC()
}
