package target

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
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
	// Repacked counts packs whose live chunks were written into new
	// packs, so that the old ones (mostly unreferenced) could go.
	Repacked int `json:"repacked"`
	// DamagedIndexes counts packs kept whole because their index is
	// damaged (verify --read-data moves such an index aside).
	DamagedIndexes int `json:"damaged_indexes,omitempty"`
	// MergedIndexes counts the merged pack indexes written, which replace
	// the ones before them.
	MergedIndexes int `json:"merged_indexes,omitempty"`
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

	live, err := r.mark(ctx)
	if err != nil {
		return st, err
	}
	st.Referenced = len(live)
	// Ages are the backend's: its clock wrote the modification times, so
	// "now" is our lock's modification time there, not our clock (hosts'
	// and servers' clocks differ).
	cutoff := lock.backendNow().Add(-grace)
	// Marking may have stalled past the stale period (a hung mount, a
	// stopped process): then another host may have taken the lock as
	// stale and committed points that use what we would sweep. gcPacks
	// confirms the lock once it has listed the packs, before any delete.
	del := r.guardedDelete(lock, o.DryRun)
	if err := r.gcPacks(ctx, live, cutoff, grace > 0, del, &st); err != nil {
		return st, fmt.Errorf("gc: %w", err)
	}
	if err := r.sweepObjects(ctx, live, cutoff, grace > 0, del, &st); err != nil {
		return st, err
	}
	// Merged pack indexes anew, of the packs that stay: a host that knows
	// none reads a few objects, not one per pack.
	if r.cfg.PackSize > 0 && !o.DryRun {
		found, err := r.scanPacks(ctx, nil, false)
		if err != nil {
			return st, fmt.Errorf("gc: %w", err)
		}
		if st.MergedIndexes, err = r.consolidateMerged(ctx, found, del); err != nil {
			return st, fmt.Errorf("gc: merged pack indexes: %w", err)
		}
		r.saveFoundPacks(found)
	}
	// Temporary files of puts that a killed writer never finished: a put
	// takes seconds, so anything older than the grace period is dead.
	if ts, ok := r.b.(TempSweeper); ok && !o.DryRun && grace > 0 {
		if err := del.check(ctx); err != nil {
			return st, fmt.Errorf("gc: %w", err)
		}
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

// mark is every key a point references: each point's blobs, roots,
// pages and chunks. A point that cannot be read, or whose index cannot,
// fails it: nothing may be swept on a partial mark.
func (r *Repository) mark(ctx context.Context) (map[string]bool, error) {
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
		return nil, err
	}
	if markErr != nil {
		return nil, markErr
	}
	live := map[string]bool{}
	w := r.newRefWalk(false)
	for _, m := range points {
		err := w.point(ctx, m, refVisit{
			blob: func(_ string, id ID) error { live[objectKey(typeBlob, id)] = true; return nil },
			root: func(d *DiskManifest, id ID, err error) error {
				if err != nil {
					return fmt.Errorf("gc: point %s disk %s, nothing swept: %w", m.ID, d.Name, err)
				}
				live[objectKey(typeRoot, id)] = true
				return nil
			},
			page: func(d *DiskManifest, p int64, id ID, err error) error {
				if err != nil {
					return fmt.Errorf("gc: point %s disk %s page %d, nothing swept: %w", m.ID, d.Name, p, err)
				}
				live[objectKey(typePage, id)] = true
				return nil
			},
			chunk: func(_ *DiskManifest, _ int64, id ID) error { live[objectKey(typeChunk, id)] = true; return nil },
		})
		if err != nil {
			return nil, err
		}
	}
	return live, nil
}

// sweepObjects deletes the objects of their own (format-1 chunks, index
// roots and pages, blobs) that live does not name, older than cutoff
// when young counts, confirming the lock before each prefix's deletes.
func (r *Repository) sweepObjects(ctx context.Context, live map[string]bool, cutoff time.Time, young bool, del *deleter, st *GCStats) error {
	for _, prefix := range []string{"chunks/", "index/", "blobs/"} {
		var dead []ObjectInfo
		err := r.b.List(ctx, prefix, func(fi ObjectInfo) error {
			if live[fi.Key] || strings.Contains(fi.Key, "/"+TempPrefix) {
				st.BytesKept += fi.Size
				return nil
			}
			if young && fi.ModTime.After(cutoff) {
				st.KeptYoung++
				st.BytesKept += fi.Size
				return nil
			}
			dead = append(dead, fi)
			return nil
		})
		if err != nil {
			return fmt.Errorf("gc: list %s: %w", prefix, err)
		}
		if len(dead) > 0 {
			if err := del.check(ctx); err != nil {
				return fmt.Errorf("gc: %w", err)
			}
		}
		for _, fi := range dead {
			if err := del.delete(ctx, fi.Key); err != nil {
				return fmt.Errorf("gc: %w", err)
			}
			st.Deleted++
			st.BytesFreed += fi.Size
		}
	}
	return nil
}

// repackShare: a pack of which more than this share of bytes is
// unreferenced has its live chunks written into new packs and is deleted.
const repackShare = 0.5

// gcPacks sweeps packs: one no point references is deleted (index first,
// so no writer takes its chunks as stored once the pack is going); one
// mostly unreferenced is repacked; packs without an index and indexes
// without a pack are removed. Only packs older than cutoff are touched
// (when young counts), as a writer may rely on young ones' chunks. A
// chunk held by two packs lives in the first by key order.
func (r *Repository) gcPacks(ctx context.Context, live map[string]bool, cutoff time.Time, young bool, del *deleter, st *GCStats) error {
	packs, err := r.scanPacks(ctx, nil, false)
	if err != nil {
		return err
	}
	defer r.packs.reset() // reloaded from the backend next time
	held := map[ref]ID{}  // object -> the pack it lives in
	var drop, repack []*packInfo
	for _, id := range slices.SortedFunc(maps.Keys(packs), compareIDs) {
		p := packs[id]
		if p.indexErr != nil {
			// Which chunks it holds is unknown: keep it whole, sweep the
			// rest. verify --read-data (check --quarantine) moves the
			// index aside; the next backup then stores its chunks again.
			r.log.Warn("gc: pack index damaged: its pack is kept; verify --read-data moves the index aside", "index", packIndexKey(id), "err", p.indexErr)
			st.DamagedIndexes++
			st.BytesKept += max(p.size, 0) + p.idxSize
			continue
		}
		var liveBytes int64
		for _, e := range p.entries {
			if _, dup := held[e.ref]; !dup && live[objectKey(e.typ, e.id)] {
				held[e.ref] = id
				liveBytes += int64(e.n)
			}
		}
		old := !young || (p.modTime.Before(cutoff) && (!p.indexed || p.idxMod.Before(cutoff)))
		dead := liveBytes == 0 || p.size < 0 || !p.indexed
		sparse := float64(p.size-liveBytes) > repackShare*float64(p.size)
		switch {
		case !dead && !sparse:
			st.BytesKept += p.size + p.idxSize
		case !old:
			st.KeptYoung++
			st.BytesKept += max(p.size, 0) + p.idxSize
		case dead:
			drop = append(drop, p)
		default:
			repack = append(repack, p)
		}
	}
	if err := del.check(ctx); err != nil {
		return err
	}
	if len(repack) > 0 && !del.dryRun {
		if err := r.repack(ctx, repack, held, st); err != nil {
			return err
		}
		if err := del.check(ctx); err != nil {
			return err
		}
	}
	for _, p := range append(drop, repack...) {
		for _, key := range []string{packIndexKey(p.id), packKey(p.id)} {
			if err := del.delete(ctx, key); err != nil && !errors.Is(err, ErrNotFound) {
				return err
			}
		}
		st.Deleted++
		st.BytesFreed += max(p.size, 0) + p.idxSize
	}
	return nil
}

// repack writes the live chunks of ps into new packs and makes them
// durable, before the caller deletes ps.
func (r *Repository) repack(ctx context.Context, ps []*packInfo, held map[ref]ID, st *GCStats) error {
	pk := r.newPacker(func(n int64, _ int) { st.BytesKept += n })
	r.packs.reset()
	for _, p := range ps {
		if p.size > maxPackSize+maxObject(typeChunk, r.cfg.ChunkSize) {
			return fmt.Errorf("repack %s: %w", packKey(p.id), corrupt("pack of %d bytes", p.size))
		}
		data, err := r.b.Get(ctx, packKey(p.id), 0, p.size)
		if err != nil {
			return fmt.Errorf("repack %s: %w", packKey(p.id), err)
		}
		for _, e := range p.entries {
			if held[e.ref] != p.id || int64(e.off)+int64(e.n) > int64(len(data)) {
				continue
			}
			obj := data[e.off : e.off+e.n]
			if _, err := r.openChecked(e.typ, e.id, obj); err != nil {
				return fmt.Errorf("repack %s: %w", packKey(p.id), err)
			}
			if _, _, err := pk.add(ctx, e.ref, sealed(obj)); err != nil {
				return fmt.Errorf("repack: %w", err)
			}
		}
		st.Repacked++
	}
	if err := pk.flush(ctx); err != nil {
		return fmt.Errorf("repack: %w", err)
	}
	return r.b.Sync(ctx)
}

func compareIDs(a, b ID) int { return bytes.Compare(a[:], b[:]) }

// deleteBatch is how many objects a deleter removes between two checks of
// its lock.
const deleteBatch = 64

// deleter removes objects under an exclusive lock. Its user confirms the
// lock still holds (check) after deciding and before each run of deletes,
// and the deleter again every deleteBatch deletes: a holder that stalled
// past the stale period must not delete what others committed meanwhile.
// A dry run deletes nothing.
type deleter struct {
	r      *Repository
	lock   *Lock
	dryRun bool
	n      int // deletes since the last check
}

func (r *Repository) guardedDelete(lock *Lock, dryRun bool) *deleter {
	return &deleter{r: r, lock: lock, dryRun: dryRun, n: deleteBatch}
}

// check confirms the lock holds, now.
func (d *deleter) check(ctx context.Context) error {
	d.n = 0
	if d.dryRun {
		return nil
	}
	return d.lock.Check(ctx)
}

func (d *deleter) delete(ctx context.Context, key string) error {
	if d.dryRun {
		return nil
	}
	if d.n >= deleteBatch {
		if err := d.check(ctx); err != nil {
			return err
		}
	}
	d.n++
	return d.r.b.Delete(ctx, key)
}
