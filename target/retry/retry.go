// Package retry wraps a target's backend so that a request that failed
// for a reason that may pass (a server restarting, a connection reset, a
// timeout) is tried again with backoff where it failed, as restic's
// backend/retry does: a flaky upload late in a 1 TiB full costs a few
// seconds, not the whole backup. What no retry can mend (a missing object,
// a bad key, the caller's cancellation, a configuration error) is
// returned at once.
package retry

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/virtkeep/virtkeep/target"
)

// Config tunes the retries.
type Config struct {
	// MaxElapsed bounds the time one request is retried for (default 2
	// minutes: a server restart, not an outage).
	MaxElapsed time.Duration
	// Initial is the first wait (default 500 ms); it doubles up to 10 s.
	Initial time.Duration
	Log     *slog.Logger
}

// Wrap returns b retrying failed requests. It keeps b's TempSweeper.
func Wrap(b target.Backend, c Config) target.Backend {
	if c.MaxElapsed <= 0 {
		c.MaxElapsed = 2 * time.Minute
	}
	if c.Initial <= 0 {
		c.Initial = 500 * time.Millisecond
	}
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
	r := &backend{Backend: b, c: c}
	if ts, ok := b.(target.TempSweeper); ok {
		return &sweeping{r, ts}
	}
	return r
}

type backend struct {
	target.Backend
	c Config
}

var _ target.Backend = (*backend)(nil)

// sweeping is a backend whose inner backend sweeps temporary files.
type sweeping struct {
	*backend
	ts target.TempSweeper
}

func (s *sweeping) SweepTemp(ctx context.Context, cutoff time.Time) (int, error) {
	var n int
	err := s.retry(ctx, "sweep", "", func() (err error) { n, err = s.ts.SweepTemp(ctx, cutoff); return err })
	return n, err
}

// Permanent reports whether err is one no retry can mend.
func Permanent(err error) bool {
	return errors.Is(err, target.ErrNotFound) || errors.Is(err, target.ErrBadKey) || target.IsConfig(err) ||
		errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)
}

// retry runs fn until it succeeds, fails permanently, ctx ends or
// MaxElapsed has passed.
func (b *backend) retry(ctx context.Context, op, key string, fn func() error) error {
	start, wait := time.Now(), b.c.Initial
	for attempt := 1; ; attempt++ {
		err := fn()
		var caller *callerError
		if err == nil || Permanent(err) || errors.As(err, &caller) || ctx.Err() != nil || time.Since(start)+wait > b.c.MaxElapsed {
			if err != nil && attempt > 1 {
				b.c.Log.Warn("request failed, retries exhausted", "op", op, "key", key, "attempts", attempt, "err", err)
			}
			return err
		}
		b.c.Log.Warn("request failed: retrying", "op", op, "key", key, "attempt", attempt, "in", wait.String(), "err", err)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return err
		case <-t.C:
		}
		wait = min(2*wait, 10*time.Second)
	}
}

func (b *backend) Put(ctx context.Context, key string, data []byte) error {
	return b.retry(ctx, "put", key, func() error { return b.Backend.Put(ctx, key, data) })
}

func (b *backend) Get(ctx context.Context, key string, off, length int64) ([]byte, error) {
	var out []byte
	err := b.retry(ctx, "get", key, func() (err error) { out, err = b.Backend.Get(ctx, key, off, length); return err })
	return out, err
}

func (b *backend) Stat(ctx context.Context, key string) (target.ObjectInfo, error) {
	var fi target.ObjectInfo
	err := b.retry(ctx, "stat", key, func() (err error) { fi, err = b.Backend.Stat(ctx, key); return err })
	return fi, err
}

func (b *backend) Delete(ctx context.Context, key string) error {
	return b.retry(ctx, "delete", key, func() error { return b.Backend.Delete(ctx, key) })
}

func (b *backend) Sync(ctx context.Context) error {
	return b.retry(ctx, "sync", "", func() error { return b.Backend.Sync(ctx) })
}

// callerError carries an error of List's callback through the retries
// untouched: it is the caller's, not the backend's.
type callerError struct{ err error }

func (e *callerError) Error() string { return e.err.Error() }

// List lists again after a failure, calling fn only for objects it was
// not called for yet.
func (b *backend) List(ctx context.Context, prefix string, fn func(target.ObjectInfo) error) error {
	return b.list(ctx, prefix, fn, func(fn func(target.ObjectInfo) error) error { return b.Backend.List(ctx, prefix, fn) })
}

// ListAfter is List of the keys after prefix+after (target.ListAfter).
func (b *backend) ListAfter(ctx context.Context, prefix, after string, fn func(target.ObjectInfo) error) error {
	return b.list(ctx, prefix, fn, func(fn func(target.ObjectInfo) error) error {
		return target.ListAfter(ctx, b.Backend, prefix, after, fn)
	})
}

// list runs a listing, again from the start after a failure that may
// pass; keys seen already are not passed to fn again.
func (b *backend) list(ctx context.Context, prefix string, fn func(target.ObjectInfo) error, run func(func(target.ObjectInfo) error) error) error {
	seen := map[string]bool{}
	err := b.retry(ctx, "list", prefix, func() error {
		err := run(func(fi target.ObjectInfo) error {
			if seen[fi.Key] {
				return nil
			}
			seen[fi.Key] = true
			if err := fn(fi); err != nil {
				return &callerError{err}
			}
			return nil
		})
		return err
	})
	var ce *callerError
	if errors.As(err, &ce) {
		return ce.err
	}
	return err
}
