package catalog

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/virtkeep/virtkeep/hostd/api"
)

// SaveJob records j (insert or update). holder is the PID of the process
// that runs it; request is the job's request as JSON.
func (c *DB) SaveJob(ctx context.Context, j api.Job, holder int, request []byte) error {
	b, err := json.Marshal(j)
	if err != nil {
		return err
	}
	if request == nil {
		request = []byte("{}")
	}
	_, err = c.db.ExecContext(ctx, `INSERT INTO jobs(id, kind, domain, target, state, created_ns, started_ns, ended_ns, holder_pid, request, job, policy, parent)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT(id) DO UPDATE SET state = excluded.state, started_ns = excluded.started_ns, ended_ns = excluded.ended_ns,
			holder_pid = excluded.holder_pid, job = excluded.job`,
		j.ID, j.Kind, j.Domain, j.Target, string(j.State), ns(j.Created), ns(j.Started), ns(j.Ended), holder, string(request), string(b), j.Policy, j.Parent)
	return err
}

// Job returns the job with id.
func (c *DB) Job(ctx context.Context, id string) (api.Job, error) {
	var b string
	err := c.db.QueryRowContext(ctx, "SELECT job FROM jobs WHERE id = ?", id).Scan(&b)
	if errors.Is(err, sql.ErrNoRows) {
		return api.Job{}, fmt.Errorf("job %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return api.Job{}, err
	}
	var j api.Job
	return j, json.Unmarshal([]byte(b), &j)
}

// JobQuery selects jobs: those not ended and those ended after EndedAfter
// (zero: every job), created after CreatedAfter, of Domain and Policy (if
// set).
type JobQuery struct {
	EndedAfter   time.Time
	CreatedAfter time.Time
	Domain       string
	Policy       string
}

// Jobs returns the jobs q selects, oldest first.
func (c *DB) Jobs(ctx context.Context, q JobQuery) ([]api.Job, error) {
	rows, err := c.db.QueryContext(ctx, `SELECT job FROM jobs WHERE created_ns > ? AND (ended_ns = 0 OR ended_ns > ?) AND (? = '' OR domain = ?) AND (? = '' OR policy = ?)
		ORDER BY created_ns, id`, ns(q.CreatedAfter), ns(q.EndedAfter), q.Domain, q.Domain, q.Policy, q.Policy)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []api.Job{}
	for rows.Next() {
		var b string
		if err := rows.Scan(&b); err != nil {
			return nil, err
		}
		var j api.Job
		if err := json.Unmarshal([]byte(b), &j); err != nil {
			return nil, err
		}
		out = append(out, j)
	}
	return out, rows.Err()
}

// LastJob returns the newest job of policy of kind, or ErrNotFound.
func (c *DB) LastJob(ctx context.Context, policy, kind string) (api.Job, error) {
	var id string
	err := c.db.QueryRowContext(ctx, "SELECT id FROM jobs WHERE policy = ? AND kind = ? ORDER BY created_ns DESC, id DESC LIMIT 1", policy, kind).Scan(&id)
	if errors.Is(err, sql.ErrNoRows) {
		return api.Job{}, fmt.Errorf("policy %s: %w", policy, ErrNotFound)
	}
	if err != nil {
		return api.Job{}, err
	}
	return c.Job(ctx, id)
}

// Unfinished is a job recorded as queued or running, and who held it.
type Unfinished struct {
	Job     api.Job
	Holder  int
	Request []byte // the request it was submitted with (JSON)
}

// UnfinishedJobs returns the jobs not recorded as ended.
func (c *DB) UnfinishedJobs(ctx context.Context) ([]Unfinished, error) {
	rows, err := c.db.QueryContext(ctx, "SELECT job, holder_pid, request FROM jobs WHERE ended_ns = 0 ORDER BY created_ns")
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Unfinished
	for rows.Next() {
		var b, req string
		var u Unfinished
		if err := rows.Scan(&b, &u.Holder, &req); err != nil {
			return nil, err
		}
		u.Request = []byte(req)
		if err := json.Unmarshal([]byte(b), &u.Job); err != nil {
			return nil, err
		}
		out = append(out, u)
	}
	return out, rows.Err()
}

// ExpireJobs removes the jobs that ended before cutoff, with their log
// lines, and says how many went: the catalog must not grow for ever. A
// policy's newest job of each kind stays (its last result is shown).
func (c *DB) ExpireJobs(ctx context.Context, cutoff time.Time) (int64, error) {
	var n int64
	err := c.tx(ctx, func(tx *sql.Tx) error {
		const old = `SELECT id FROM jobs j WHERE ended_ns > 0 AND ended_ns < ? AND NOT (policy != '' AND created_ns =
			(SELECT max(created_ns) FROM jobs k WHERE k.policy = j.policy AND k.kind = j.kind))`
		if _, err := tx.ExecContext(ctx, `DELETE FROM job_logs WHERE job IN (`+old+`)`, ns(cutoff)); err != nil {
			return err
		}
		res, err := tx.ExecContext(ctx, `DELETE FROM jobs WHERE id IN (`+old+`)`, ns(cutoff))
		if err == nil {
			n, err = res.RowsAffected()
		}
		return err
	})
	return n, err
}

// AppendLog records one log line of a job.
func (c *DB) AppendLog(ctx context.Context, l api.LogLine) error {
	attrs, _ := json.Marshal(l.Attrs)
	_, err := c.db.ExecContext(ctx, "INSERT INTO job_logs(job, seq, time_ns, level, message, attrs) VALUES (?, ?, ?, ?, ?, ?)",
		l.Job, l.Seq, ns(l.Time), l.Level, l.Message, string(attrs))
	return err
}

// Logs returns the log lines of job after sequence number after.
func (c *DB) Logs(ctx context.Context, job string, after int64) ([]api.LogLine, error) {
	rows, err := c.db.QueryContext(ctx, "SELECT seq, time_ns, level, message, attrs FROM job_logs WHERE job = ? AND seq > ? ORDER BY seq", job, after)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []api.LogLine
	for rows.Next() {
		l := api.LogLine{Job: job}
		var t int64
		var attrs string
		if err := rows.Scan(&l.Seq, &t, &l.Level, &l.Message, &attrs); err != nil {
			return nil, err
		}
		l.Time = fromNS(t)
		_ = json.Unmarshal([]byte(attrs), &l.Attrs)
		out = append(out, l)
	}
	return out, rows.Err()
}

// SessionRow is a recorded session: what the API shows, who holds it, and
// what undoing it needs (State, opaque to the catalog).
type SessionRow struct {
	Session api.Session
	Holder  int
	State   []byte
}

// SaveSession records (or updates) a session.
func (c *DB) SaveSession(ctx context.Context, r SessionRow) error {
	b, err := json.Marshal(r.Session)
	if err != nil {
		return err
	}
	_, err = c.db.ExecContext(ctx, `INSERT OR REPLACE INTO sessions(id, kind, holder_pid, created_ns, session, state) VALUES (?, ?, ?, ?, ?, ?)`,
		r.Session.ID, r.Session.Kind, r.Holder, ns(r.Session.Created), string(b), string(r.State))
	return err
}

// DeleteSession forgets a session.
func (c *DB) DeleteSession(ctx context.Context, id string) error {
	_, err := c.db.ExecContext(ctx, "DELETE FROM sessions WHERE id = ?", id)
	return err
}

// Sessions returns every recorded session, oldest first.
func (c *DB) Sessions(ctx context.Context) ([]SessionRow, error) {
	rows, err := c.db.QueryContext(ctx, "SELECT session, holder_pid, state FROM sessions ORDER BY created_ns, id")
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []SessionRow
	for rows.Next() {
		var s, st string
		var r SessionRow
		if err := rows.Scan(&s, &r.Holder, &st); err != nil {
			return nil, err
		}
		if err := json.Unmarshal([]byte(s), &r.Session); err != nil {
			return nil, err
		}
		r.State = []byte(st)
		out = append(out, r)
	}
	return out, rows.Err()
}
