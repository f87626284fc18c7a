package catalog

import (
	"context"
	"database/sql"
	"errors"
	"strings"
	"time"

	"github.com/virtkeep/virtkeep/hostd/api"
)

// KeepTargets drops the points of targets that are no longer configured.
func (c *DB) KeepTargets(ctx context.Context, names []string) error {
	return c.tx(ctx, func(tx *sql.Tx) error {
		q := "DELETE FROM targets"
		args := make([]any, len(names))
		if len(names) > 0 {
			q += " WHERE name NOT IN (?" + strings.Repeat(",?", len(names)-1) + ")"
			for i, n := range names {
				args[i] = n
			}
		}
		_, err := tx.ExecContext(ctx, q, args...)
		return err
	})
}

// Synced returns when target's points were last compared with its
// repository (zero: never).
func (c *DB) Synced(ctx context.Context, target string) (time.Time, error) {
	var n int64
	err := c.db.QueryRowContext(ctx, "SELECT synced_ns FROM targets WHERE name = ?", target).Scan(&n)
	if errors.Is(err, sql.ErrNoRows) {
		return time.Time{}, nil
	}
	return fromNS(n), err
}

// PointIDs returns the IDs of target's points.
func (c *DB) PointIDs(ctx context.Context, target string) (map[string]bool, error) {
	rows, err := c.db.QueryContext(ctx, "SELECT id FROM points WHERE target = ?", target)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string]bool{}
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, err
		}
		out[id] = true
	}
	return out, rows.Err()
}

// Sync records a comparison of target with its repository: add are the
// points found that the catalog lacked, remove the IDs it held that are
// gone; with replace every point of target is dropped first (a rebuild).
// It all happens in one transaction, and marks target synced at now.
func (c *DB) Sync(ctx context.Context, target string, add []api.Point, remove []string, replace bool, now time.Time) error {
	return c.tx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `INSERT INTO targets(name, synced_ns) VALUES (?, ?)
			ON CONFLICT(name) DO UPDATE SET synced_ns = excluded.synced_ns`, target, ns(now)); err != nil {
			return err
		}
		if replace {
			if _, err := tx.ExecContext(ctx, "DELETE FROM points WHERE target = ?", target); err != nil {
				return err
			}
		}
		for _, id := range remove {
			if _, err := tx.ExecContext(ctx, "DELETE FROM points WHERE target = ? AND id = ?", target, id); err != nil {
				return err
			}
		}
		return insertPoints(ctx, tx, target, add)
	})
}

// AddPoint records one new point of target (a backup just made) without
// marking the target synced.
func (c *DB) AddPoint(ctx context.Context, p api.Point) error {
	return c.tx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, "INSERT INTO targets(name) VALUES (?) ON CONFLICT(name) DO NOTHING", p.Target); err != nil {
			return err
		}
		return insertPoints(ctx, tx, p.Target, []api.Point{p})
	})
}

func insertPoints(ctx context.Context, tx *sql.Tx, target string, ps []api.Point) error {
	dom, err := tx.PrepareContext(ctx, `INSERT INTO domains(uuid, name) VALUES (?, ?) ON CONFLICT(uuid) DO UPDATE SET name = excluded.name`)
	if err != nil {
		return err
	}
	defer dom.Close()
	pt, err := tx.PrepareContext(ctx, `INSERT OR REPLACE INTO points(target, id, domain_uuid, domain, time_ns, level, consistency, freeze_ms, checkpoint, parent)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`)
	if err != nil {
		return err
	}
	defer pt.Close()
	dk, err := tx.PrepareContext(ctx, `INSERT INTO point_disks(target, point, seq, name, format, virtual_size, bytes_read, bytes_stored, checkpoint)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`)
	if err != nil {
		return err
	}
	defer dk.Close()
	for _, p := range ps {
		if _, err := dom.ExecContext(ctx, p.DomainUUID, p.Domain); err != nil {
			return err
		}
		if _, err := pt.ExecContext(ctx, target, p.ID, p.DomainUUID, p.Domain, ns(p.Time), p.Level, p.Consistency, p.FreezeMS, p.Checkpoint, p.Parent); err != nil {
			return err
		}
		for i, d := range p.Disks {
			if _, err := dk.ExecContext(ctx, target, p.ID, i, d.Name, d.Format, d.VirtualSize, d.BytesRead, d.BytesStored, d.Checkpoint); err != nil {
				return err
			}
		}
	}
	return nil
}

// Query selects points; empty fields match everything. Before, when set,
// keeps points at or before it; Latest keeps only the newest.
type Query struct {
	Target string
	Domain string // name or UUID
	ID     string
	Before time.Time
	Latest bool
}

// Points returns the points q selects, oldest first, each with its disks.
func (c *DB) Points(ctx context.Context, q Query) ([]api.Point, error) {
	where, args := []string{"1=1"}, []any{}
	if q.Target != "" {
		where, args = append(where, "p.target = ?"), append(args, q.Target)
	}
	if q.Domain != "" {
		where, args = append(where, "(p.domain = ? OR p.domain_uuid = ?)"), append(args, q.Domain, q.Domain)
	}
	if q.ID != "" {
		where, args = append(where, "p.id = ?"), append(args, q.ID)
	}
	if !q.Before.IsZero() {
		where, args = append(where, "p.time_ns <= ?"), append(args, ns(q.Before))
	}
	sel := "SELECT p.target, p.id FROM points p WHERE " + strings.Join(where, " AND ")
	if q.Latest {
		sel += " ORDER BY p.time_ns DESC LIMIT 1"
	}
	rows, err := c.db.QueryContext(ctx, `SELECT p.target, p.id, p.domain_uuid, p.domain, p.time_ns, p.level, p.consistency, p.freeze_ms, p.checkpoint, p.parent,
			d.name, d.format, d.virtual_size, d.bytes_read, d.bytes_stored, d.checkpoint, coalesce(x.problem, '')
		FROM points p JOIN (`+sel+`) s ON s.target = p.target AND s.id = p.id
		LEFT JOIN point_disks d ON d.target = p.target AND d.point = p.id
		LEFT JOIN damaged x ON x.target = p.target AND x.point = p.id
		ORDER BY p.time_ns, p.target, p.id, d.seq`, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []api.Point{}
	for rows.Next() {
		var p api.Point
		var t int64
		var dn, df, dc sql.NullString
		var dv, dr, ds sql.NullInt64
		if err := rows.Scan(&p.Target, &p.ID, &p.DomainUUID, &p.Domain, &t, &p.Level, &p.Consistency, &p.FreezeMS, &p.Checkpoint, &p.Parent,
			&dn, &df, &dv, &dr, &ds, &dc, &p.Damaged); err != nil {
			return nil, err
		}
		p.Time = fromNS(t)
		if n := len(out); n == 0 || out[n-1].ID != p.ID || out[n-1].Target != p.Target {
			p.Disks = []api.PointDisk{}
			out = append(out, p)
		}
		if dn.Valid {
			last := &out[len(out)-1]
			last.Disks = append(last.Disks, api.PointDisk{Name: dn.String, Format: df.String, VirtualSize: dv.Int64, BytesRead: dr.Int64, BytesStored: ds.Int64, Checkpoint: dc.String})
		}
	}
	return out, rows.Err()
}
