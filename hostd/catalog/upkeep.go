package catalog

import (
	"context"
	"database/sql"
	"errors"
	"time"
)

// MarkDamaged records the points of target a verification found damaged,
// with the problem. With whole set (every chunk was read), the target's
// other points are cleared of earlier findings.
func (c *DB) MarkDamaged(ctx context.Context, target string, damaged map[string]string, whole bool, now time.Time) error {
	return c.tx(ctx, func(tx *sql.Tx) error {
		if whole {
			if _, err := tx.ExecContext(ctx, "DELETE FROM damaged WHERE target = ?", target); err != nil {
				return err
			}
		}
		for id, problem := range damaged {
			if _, err := tx.ExecContext(ctx, `INSERT INTO damaged(target, point, found_ns, problem) VALUES (?, ?, ?, ?)
				ON CONFLICT(target, point) DO UPDATE SET problem = excluded.problem`, target, id, ns(now), problem); err != nil {
				return err
			}
		}
		return nil
	})
}

// Damaged returns the points of target recorded damaged, with the problem.
func (c *DB) Damaged(ctx context.Context, target string) (map[string]string, error) {
	rows, err := c.db.QueryContext(ctx, "SELECT point, problem FROM damaged WHERE target = ?", target)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string]string{}
	for rows.Next() {
		var id, p string
		if err := rows.Scan(&id, &p); err != nil {
			return nil, err
		}
		out[id] = p
	}
	return out, rows.Err()
}

// SetLastRun records when a scheduler entry last ran.
func (c *DB) SetLastRun(ctx context.Context, entry string, t time.Time) error {
	_, err := c.db.ExecContext(ctx, `INSERT INTO schedule(entry, last_ns) VALUES (?, ?)
		ON CONFLICT(entry) DO UPDATE SET last_ns = excluded.last_ns`, entry, ns(t))
	return err
}

// LastRun returns when entry last ran (zero: never).
func (c *DB) LastRun(ctx context.Context, entry string) (time.Time, error) {
	var t int64
	err := c.db.QueryRowContext(ctx, "SELECT last_ns FROM schedule WHERE entry = ?", entry).Scan(&t)
	if errors.Is(err, sql.ErrNoRows) {
		return time.Time{}, nil
	}
	if err != nil {
		return time.Time{}, err
	}
	return fromNS(t), nil
}

// LastRuns returns when each scheduler entry last ran.
func (c *DB) LastRuns(ctx context.Context) (map[string]time.Time, error) {
	rows, err := c.db.QueryContext(ctx, "SELECT entry, last_ns FROM schedule")
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string]time.Time{}
	for rows.Next() {
		var e string
		var t int64
		if err := rows.Scan(&e, &t); err != nil {
			return nil, err
		}
		out[e] = fromNS(t)
	}
	return out, rows.Err()
}

// PointStat sums up one domain's points in one target.
type PointStat struct {
	Target, Domain string
	Points         int
	Damaged        int
	Last           time.Time // the newest point's time
}

// PointStats sums up the points per target and domain.
func (c *DB) PointStats(ctx context.Context) ([]PointStat, error) {
	rows, err := c.db.QueryContext(ctx, `SELECT p.target, p.domain, count(*), max(p.time_ns), count(x.point)
		FROM points p LEFT JOIN damaged x ON x.target = p.target AND x.point = p.id
		GROUP BY p.target, p.domain ORDER BY p.target, p.domain`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []PointStat
	for rows.Next() {
		var s PointStat
		var last int64
		if err := rows.Scan(&s.Target, &s.Domain, &s.Points, &last, &s.Damaged); err != nil {
			return nil, err
		}
		s.Last = fromNS(last)
		out = append(out, s)
	}
	return out, rows.Err()
}
