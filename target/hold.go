package target

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// ErrHeld is wrapped by the error for deleting a point a session holds.
var ErrHeld = errors.New("point is held by a session")

// Hold keeps a point from prune and deletion, and so its data from GC, on
// every host, for as long as its holder lives: a mount, an NBD server or
// a VM booted from the point reads it for hours or days, while retention
// would drop it. It is an object under holds/ refreshed like a lock; one
// whose holder stopped is found dead (on its own machine) or ages out
// after the stale period (elsewhere).
type Hold struct{ l *Lock }

// holdWait is how long Hold waits for an exclusive lock (a prune or GC at
// work) to go before it gives up.
const holdWait = 2 * time.Minute

// Hold takes a hold on point id for what (a session, shown to others). It
// is placed under a shared lock, so no prune decides without seeing it,
// and only once the point is known to be there.
func (r *Repository) Hold(ctx context.Context, id, what string) (*Hold, error) {
	if err := checkPointID(id); err != nil {
		return nil, err
	}
	lock, err := r.lockWaiting(ctx)
	if err != nil {
		return nil, fmt.Errorf("hold %s: %w", id, err)
	}
	defer lock.Unlock(ctx)
	l, err := r.newLock(ctx, "holds/", lockInfo{Owner: r.owner, Time: r.now().UTC(), Point: id, What: what})
	if err != nil {
		return nil, fmt.Errorf("hold %s: %w", id, err)
	}
	if _, err := r.Point(ctx, id); err != nil {
		_ = r.b.Delete(context.WithoutCancel(ctx), l.key)
		return nil, fmt.Errorf("hold %s: %w", id, err)
	}
	l.start()
	return &Hold{l}, nil
}

// lockWaiting takes a shared lock, waiting up to holdWait while an
// exclusive one is held.
func (r *Repository) lockWaiting(ctx context.Context) (*Lock, error) {
	deadline := time.Now().Add(holdWait)
	for {
		l, err := r.Lock(ctx, false)
		if !errors.Is(err, ErrLocked) || time.Now().After(deadline) {
			return l, err
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// Release drops the hold. It runs on a context of its own.
func (h *Hold) Release(ctx context.Context) error {
	if h == nil {
		return nil
	}
	return h.l.Unlock(ctx)
}

// Err reports a hold that could not be refreshed (ErrLockLost): others may
// no longer see it.
func (h *Hold) Err() error { return h.l.Err() }

// holds returns the points held by live holds, each with who holds it, as
// seen by lock l (held exclusively: its backend time is the clock holds
// age by; without one, as a dry run looks, our own clock). Holds of our
// own dead processes are removed.
func (r *Repository) holds(ctx context.Context, l *Lock) (map[string]string, error) {
	age := func(mod time.Time) time.Duration { return r.now().Sub(mod) }
	if l != nil {
		age = l.backendAge
	}
	out := map[string]string{}
	err := r.b.List(ctx, "holds/", func(fi ObjectInfo) error {
		h, err := r.readLock(ctx, fi)
		if err != nil || h == nil || h.Point == "" {
			return err
		}
		if age(fi.ModTime) > r.lockStale {
			return nil
		}
		if h.deadHere(r.owner) && l != nil {
			r.log.Info("removing the hold of a process that no longer runs", "hold", fi.Key, "point", h.Point, "pid", h.PID)
			_ = r.b.Delete(ctx, fi.Key)
			return nil
		}
		out[h.Point] = fmt.Sprintf("held by %s (pid %d on %s)", h.What, h.PID, h.Host)
		return nil
	})
	return out, err
}
