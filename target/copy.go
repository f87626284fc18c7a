package target

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
)

// CopyOptions tune Copy.
type CopyOptions struct {
	// Progress, if set, is told after each chunk how many bytes of a disk
	// have been handled.
	Progress func(disk string, done, total int64)
}

// CopyStats says what a copy moved.
type CopyStats struct {
	Chunks      int64 `json:"chunks"`       // chunks the point references
	ChunksRead  int64 `json:"chunks_read"`  // read from the source
	ChunksNew   int64 `json:"chunks_new"`   // stored in the destination
	BytesStored int64 `json:"bytes_stored"` // bytes of new objects in the destination
	// Existed is set when the destination already held the point.
	Existed bool `json:"existed"`
}

// ErrChunkSize is wrapped by Copy's error when the two repositories cut
// disks into chunks of different sizes.
var ErrChunkSize = errors.New("repositories have different chunk sizes")

// Copy copies point id from src to dst, keeping its identity: ID, time,
// host, domain, level, parent and checkpoints. Only what dst lacks is
// stored: when both repositories name objects alike (neither is
// encrypted), chunks dst holds are not even read from src; otherwise every
// chunk is read, decrypted and sealed for dst, and stored only if dst does
// not hold it. An interrupted copy leaves its stored chunks in dst (GC
// spares them for its grace period), so running it again moves only the
// rest.
//
// Everything Copy relies on in dst is looked at under dst's lock, so no
// prune or GC there can remove it before the commit: the point's absence,
// and the chunks it reuses (listed, and of the sealed length the source's
// envelope has when both seal alike). The copied point is checked in dst
// before its manifest is written: every index page loads and every chunk
// it names is there. A point dst holds already is checked the same way:
// Existed is only reported for one that checks out. Damage or a missing
// object is an error for which IsIntegrity is true.
func Copy(ctx context.Context, src, dst *Repository, id string, o CopyOptions) (*Manifest, CopyStats, error) {
	var st CopyStats
	if src.cfg.ChunkSize != dst.cfg.ChunkSize {
		return nil, st, fmt.Errorf("copy %s: %w (%d and %d bytes)", id, ErrChunkSize, src.cfg.ChunkSize, dst.cfg.ChunkSize)
	}
	// The source's points stay whole while we read them: no prune or GC.
	lock, err := src.Lock(ctx, false)
	if err != nil {
		return nil, st, fmt.Errorf("copy %s: source: %w", id, err)
	}
	defer lock.Unlock(context.WithoutCancel(ctx))
	m, err := src.Point(ctx, id)
	if err != nil {
		return nil, st, fmt.Errorf("copy %s: %w", id, err)
	}
	pw, err := dst.NewPoint(ctx, PointSpec{ID: m.ID, Host: m.Host, MachineID: m.MachineID, Time: m.Time, Domain: m.Domain, DomainUUID: m.DomainUUID,
		Level: m.Level, Consistency: m.Consistency, FreezeMS: m.FreezeMS, Parent: m.Parent,
		DomainXML: m.DomainXML, DomainXMLInactive: m.DomainXMLInactive, Tags: m.Tags})
	if err != nil {
		return nil, st, fmt.Errorf("copy %s: %w", id, err)
	}
	if had, err := copyExisting(ctx, dst, pw, id); had != nil || err != nil {
		st.Existed = had != nil
		return had, st, err
	}
	have, err := reusable(ctx, src, dst)
	if err == nil {
		err = copyContent(ctx, src, pw, m, have, o, &st)
	}
	if err != nil {
		pw.Abort(context.WithoutCancel(ctx))
		st.addStored(pw)
		return nil, st, fmt.Errorf("copy %s: %w", id, err)
	}
	pw.verify = func(ctx context.Context, m *Manifest) error {
		if err := dst.checkPoint(ctx, m); err != nil {
			return fmt.Errorf("the copy does not check out in the destination: %w", err)
		}
		return nil
	}
	out, err := pw.Commit(ctx)
	st.addStored(pw)
	if err != nil {
		return nil, st, fmt.Errorf("copy %s: %w", id, err)
	}
	return out, st, nil
}

// copyExisting looks, under pw's lock, for point id in dst. When it is
// there, pw is given up and the point is returned once it checks out.
func copyExisting(ctx context.Context, dst *Repository, pw *PointWriter, id string) (*Manifest, error) {
	m, err := dst.Point(ctx, id)
	if errors.Is(err, ErrNoPoint) || errors.Is(err, ErrNotFound) {
		return nil, nil
	}
	defer pw.Abort(context.WithoutCancel(ctx))
	if err != nil {
		return nil, fmt.Errorf("copy %s: destination: %w", id, err)
	}
	if err := dst.checkPoint(ctx, m); err != nil {
		return nil, fmt.Errorf("copy %s: the destination holds the point, damaged: %w", id, err)
	}
	return m, nil
}

// reusable lists the chunks dst holds that a copy from src may take as
// stored instead of reading them: only when both name objects alike, and
// only chunks whose stored envelope could be whole: of exactly the
// source's length when both seal alike, else longer than a header.
func reusable(ctx context.Context, src, dst *Repository) (map[ID]bool, error) {
	if !src.sameIDs(dst) {
		return nil, nil
	}
	sizes, err := dst.chunkSizes(ctx)
	if err != nil {
		return nil, fmt.Errorf("destination: %w", err)
	}
	var want map[ID]int64
	if src.sealsAlike(dst) {
		if want, err = src.chunkSizes(ctx); err != nil {
			return nil, err
		}
	}
	have := map[ID]bool{}
	for id, n := range sizes {
		have[id] = n > headerLen && (want == nil || want[id] == n)
	}
	return have, nil
}

// addStored counts what pw's disks stored, once its workers have stopped
// (after Commit or Abort: a chunk still in flight is counted too).
func (st *CopyStats) addStored(pw *PointWriter) {
	pw.mu.Lock()
	defer pw.mu.Unlock()
	for _, dw := range pw.disks {
		s := dw.Stats()
		st.ChunksNew += s.ChunksNew
		st.BytesStored += s.BytesStored
	}
}

// sameIDs reports whether r and o name every object alike.
func (r *Repository) sameIDs(o *Repository) bool {
	return r.codec.idKey == nil && o.codec.idKey == nil
}

func copyContent(ctx context.Context, src *Repository, pw *PointWriter, m *Manifest, have map[ID]bool, o CopyOptions, st *CopyStats) error {
	for _, name := range slices.Sorted(maps.Keys(m.Blobs)) {
		b, err := src.Blob(ctx, m.Blobs[name])
		if err != nil {
			return fmt.Errorf("blob %s: %w", name, err)
		}
		if err := pw.AddBlob(ctx, name, b); err != nil {
			return err
		}
	}
	for i := range m.Disks {
		if err := copyDisk(ctx, src, pw, &m.Disks[i], have, o, st); err != nil {
			return err
		}
	}
	return nil
}

// copyWindow is how many chunks a copy reads ahead, side by side: a
// remote source answers one request at a time slowly, many quickly.
const copyWindow = 16

// fetched is one chunk read from the source for the destination.
type fetched struct {
	idx    int64
	id     ID
	stored bool   // the destination holds it (same IDs): nothing read
	raw    bool   // the destination seals alike: read the envelope
	sealed []byte // the source's envelope, checked, to store as it is
	plain  []byte // the data, to seal for the destination
	err    error
	done   chan struct{}
}

func copyDisk(ctx context.Context, src *Repository, pw *PointWriter, d *DiskManifest, have map[ID]bool, o CopyOptions, st *CopyStats) error {
	rt, err := src.diskRoot(ctx, d)
	if err != nil {
		return fmt.Errorf("disk %s: %w", d.Name, err)
	}
	dw, err := pw.AddDisk(ctx, DiskSpec{Name: d.Name, Format: d.Format, VirtualSize: d.VirtualSize, Checkpoint: d.Checkpoint,
		ParentCheckpoint: d.ParentCheckpoint, FormatDetails: d.FormatDetails})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var fetchers sync.WaitGroup
	defer fetchers.Wait()
	queue := make(chan *fetched, copyWindow)
	raw := src.sealsAlike(pw.r)
	var walkErr error
	go func() {
		defer close(queue)
		walkErr = src.walkChunks(ctx, d, rt, func(idx int64, id ID) error {
			f := &fetched{idx: idx, id: id, stored: have[id], raw: raw, done: make(chan struct{})}
			select {
			case queue <- f:
			case <-ctx.Done():
				return ctx.Err()
			}
			fetchers.Add(1)
			go func() {
				defer fetchers.Done()
				defer close(f.done)
				src.fetch(ctx, f)
			}()
			return nil
		})
	}()
	cs := int64(rt.chunkSize)
	for f := range queue {
		<-f.done
		if f.err == nil {
			f.err = f.store(ctx, dw, st)
		}
		if f.err != nil {
			cancel()
			for range queue {
			}
			return fmt.Errorf("disk %s: chunk %d: %w", d.Name, f.idx, f.err)
		}
		if o.Progress != nil {
			o.Progress(d.Name, min((f.idx+1)*cs, rt.size), rt.size)
		}
	}
	if walkErr != nil {
		return fmt.Errorf("disk %s: %w", d.Name, walkErr)
	}
	return dw.Close(ctx)
}

// walkChunks calls fn with each chunk of d (root rt) that is not zero,
// in order.
func (r *Repository) walkChunks(ctx context.Context, d *DiskManifest, rt *root, fn func(idx int64, id ID) error) error {
	return r.newRefWalk(true).pagesOf(ctx, d, rt, refVisit{
		page: func(_ *DiskManifest, p int64, _ ID, err error) error {
			if err != nil {
				return fmt.Errorf("index page %d: %w", p, err)
			}
			return nil
		},
		chunk: func(_ *DiskManifest, idx int64, id ID) error { return fn(idx, id) },
	})
}

// sealsAlike reports whether o stores the same envelope for the same data.
func (r *Repository) sealsAlike(o *Repository) bool {
	return r.sameIDs(o) && r.codec.aead == nil && o.codec.aead == nil && r.codec.compress == o.codec.compress
}

// fetch reads f's chunk: nothing when the destination holds it, the
// envelope (checked as getObject does) when it seals alike, else the data.
func (r *Repository) fetch(ctx context.Context, f *fetched) {
	switch {
	case f.stored:
	case f.raw:
		obj, err := r.chunkEnvelope(ctx, f.id)
		if err == nil {
			_, err = r.openChecked(typeChunk, f.id, obj)
		}
		f.sealed, f.err = obj, err
	default:
		f.plain, f.err = r.getObject(ctx, typeChunk, f.id)
	}
}

// store hands the fetched chunk to the destination's writer.
func (f *fetched) store(ctx context.Context, dw *DiskWriter, st *CopyStats) error {
	st.Chunks++
	switch {
	case f.stored:
		return dw.Stored(ctx, f.idx, f.id)
	case f.sealed != nil:
		st.ChunksRead++
		return dw.writeSealed(ctx, f.idx, f.id, f.sealed)
	default:
		st.ChunksRead++
		return dw.WriteChunk(ctx, f.idx, f.plain)
	}
}

// checkPoint checks point m in r on its own: its blobs and index load,
// and every chunk it references is listed.
func (r *Repository) checkPoint(ctx context.Context, m *Manifest) error {
	have, err := r.chunkSet(ctx)
	if err != nil {
		return err
	}
	return r.newRefWalk(false).point(ctx, m, refVisit{
		blob: func(name string, id ID) error {
			if _, err := r.getObject(ctx, typeBlob, id); err != nil {
				return fmt.Errorf("blob %s: %w", name, err)
			}
			return nil
		},
		root: func(d *DiskManifest, _ ID, err error) error {
			if err != nil {
				return fmt.Errorf("disk %s: %w", d.Name, err)
			}
			return nil
		},
		page: func(d *DiskManifest, p int64, _ ID, err error) error {
			if err != nil {
				return fmt.Errorf("disk %s: index page %d: %w", d.Name, p, err)
			}
			return nil
		},
		chunk: func(d *DiskManifest, _ int64, id ID) error {
			if !have[id] {
				return fmt.Errorf("disk %s: chunk %s: %w", d.Name, id, ErrMissing)
			}
			return nil
		},
	})
}
