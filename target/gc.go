package target

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"
)

// GCOptions tune garbage collection.
type GCOptions struct {
	// Grace spares unreferenced objects younger than this: they may belong
	// to a backup still being written. Zero means 24 h; negative means none
	// (only safe when no writer can be running).
	Grace  time.Duration
	DryRun bool
}

// GCStats says what GC found and did.
type GCStats struct {
	Referenced int   `json:"referenced"`
	Deleted    int   `json:"deleted"`
	BytesFreed int64 `json:"bytes_freed"`
	KeptYoung  int   `json:"kept_young"`
	// BytesKept is the size of the chunks, index objects and blobs kept:
	// the repository's size, but for manifests and locks.
	BytesKept int64 `json:"bytes_kept"`
	// TempRemoved counts temporary files of unfinished puts removed.
	TempRemoved int `json:"temp_removed"`
}

// TempSweeper is implemented by backends whose puts write a temporary
// file first (local, SFTP): SweepTemp removes those last modified before
// cutoff, left by writers killed in the middle of a put, and says how many.
type TempSweeper interface {
	SweepTemp(ctx context.Context, cutoff time.Time) (int, error)
}

// GC removes objects no point references: mark from every manifest, then
// sweep chunks, index objects and blobs older than the grace period. It
// takes the exclusive lock and sweeps nothing unless every manifest and
// index was read: an unreadable one could reference anything.
func (r *Repository) GC(ctx context.Context, o GCOptions) (GCStats, error) {
	var st GCStats
	grace := o.Grace
	if grace == 0 {
		grace = 24 * time.Hour
	}
	lock, err := r.Lock(ctx, true)
	if err != nil {
		return st, fmt.Errorf("gc: %w", err)
	}
	defer lock.Unlock(ctx)

	live := map[string]bool{}
	var markErr error
	points, err := r.Points(ctx, func(id string, err error) {
		if errors.Is(err, ErrStray) {
			r.log.Warn("gc: ignoring an object that is no point", "err", err)
			return
		}
		if markErr == nil {
			markErr = fmt.Errorf("gc: point %s unreadable, nothing swept: %w", id, err)
		}
	})
	if err != nil {
		return st, err
	}
	if markErr != nil {
		return st, markErr
	}
	for _, m := range points {
		for _, b := range m.Blobs {
			id, _ := ParseID(b)
			live[objectKey(typeBlob, id)] = true
		}
		for _, d := range m.Disks {
			rt, err := r.diskRoot(ctx, &d)
			if err != nil {
				return st, fmt.Errorf("gc: point %s disk %s, nothing swept: %w", m.ID, d.Name, err)
			}
			rid, _ := ParseID(d.Root)
			live[objectKey(typeRoot, rid)] = true
			for p, pid := range rt.pages {
				if pid.IsZero() || live[objectKey(typePage, pid)] {
					continue
				}
				live[objectKey(typePage, pid)] = true
				ids, err := r.loadPage(ctx, rt, int64(p))
				if err != nil {
					return st, fmt.Errorf("gc: point %s disk %s page %d, nothing swept: %w", m.ID, d.Name, p, err)
				}
				for _, c := range ids {
					if !c.IsZero() {
						live[objectKey(typeChunk, c)] = true
					}
				}
			}
		}
	}
	st.Referenced = len(live)
	cutoff := r.now().Add(-grace)
	for _, prefix := range []string{"chunks/", "index/", "blobs/"} {
		var dead []ObjectInfo
		err := r.b.List(ctx, prefix, func(fi ObjectInfo) error {
			if live[fi.Key] || strings.Contains(fi.Key, "/"+TempPrefix) {
				st.BytesKept += fi.Size
				return nil
			}
			if grace > 0 && fi.ModTime.After(cutoff) {
				st.KeptYoung++
				st.BytesKept += fi.Size
				return nil
			}
			dead = append(dead, fi)
			return nil
		})
		if err != nil {
			return st, fmt.Errorf("gc: list %s: %w", prefix, err)
		}
		for _, fi := range dead {
			if !o.DryRun {
				if err := r.b.Delete(ctx, fi.Key); err != nil {
					return st, fmt.Errorf("gc: %w", err)
				}
			}
			st.Deleted++
			st.BytesFreed += fi.Size
		}
	}
	// Temporary files of puts that a killed writer never finished: a put
	// takes seconds, so anything older than the grace period is dead.
	if ts, ok := r.b.(TempSweeper); ok && !o.DryRun && grace > 0 {
		n, err := ts.SweepTemp(ctx, cutoff)
		if err != nil {
			return st, fmt.Errorf("gc: %w", err)
		}
		st.TempRemoved = n
	}
	if !o.DryRun {
		if err := r.b.Sync(ctx); err != nil {
			return st, err
		}
	}
	r.log.Info("garbage collected", "temp_removed", st.TempRemoved, "deleted", st.Deleted, "bytes", st.BytesFreed, "kept_young", st.KeptYoung)
	return st, nil
}
