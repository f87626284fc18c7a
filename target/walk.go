package target

import "context"

// refWalk is one walk over what points reference, shared by check, GC's
// mark and copy's check of a point: blobs, then per disk its index root,
// its pages and the chunks they list. A page several points share is
// read once per walk: later points are told of it (and of its error)
// without reading it again, and, unless every use is asked for, without
// its chunks.
type refWalk struct {
	r     *Repository
	pages map[ID]error // pages read in this walk, and why one failed
	// everyUse visits the chunks of every point's pages, read again
	// (check naming each point a bad chunk damages).
	everyUse bool
}

func (r *Repository) newRefWalk(everyUse bool) *refWalk {
	return &refWalk{r: r, pages: map[ID]error{}, everyUse: everyUse}
}

// refVisit is what a walk tells of one point; a nil func is not told,
// and an error a func returns stops the walk.
type refVisit struct {
	blob func(name string, id ID) error
	// root is told of each disk's index root; err says it could not be
	// loaded (then the disk's pages are not walked).
	root func(d *DiskManifest, id ID, err error) error
	// page is told of each page the disk's root names; err says it could
	// not be read (then its chunks are not visited).
	page func(d *DiskManifest, p int64, id ID, err error) error
	// chunk is told of each chunk a page lists that is not zero, with its
	// index in the disk.
	chunk func(d *DiskManifest, idx int64, id ID) error
}

// point walks what m references.
func (w *refWalk) point(ctx context.Context, m *Manifest, v refVisit) error {
	for name, b := range m.Blobs {
		id, _ := ParseID(b) // checked when the manifest was read
		if v.blob != nil {
			if err := v.blob(name, id); err != nil {
				return err
			}
		}
	}
	for i := range m.Disks {
		if err := w.disk(ctx, &m.Disks[i], v); err != nil {
			return err
		}
	}
	return nil
}

func (w *refWalk) disk(ctx context.Context, d *DiskManifest, v refVisit) error {
	rt, err := w.r.diskRoot(ctx, d)
	if v.root != nil {
		rid, _ := ParseID(d.Root)
		if verr := v.root(d, rid, err); verr != nil {
			return verr
		}
	}
	if err != nil {
		return nil
	}
	return w.pagesOf(ctx, d, rt, v)
}

// pagesOf walks the pages of d, whose root is rt, and their chunks.
func (w *refWalk) pagesOf(ctx context.Context, d *DiskManifest, rt *root, v refVisit) error {
	for p, pid := range rt.pages {
		if pid.IsZero() {
			continue
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		perr, seen := w.pages[pid]
		var ids []ID
		if !seen || (w.everyUse && perr == nil) {
			ids, perr = w.r.loadPage(ctx, rt, int64(p))
			w.pages[pid] = perr
		}
		if v.page != nil {
			if err := v.page(d, int64(p), pid, perr); err != nil {
				return err
			}
		}
		if v.chunk == nil {
			continue
		}
		for i, cid := range ids {
			if cid.IsZero() {
				continue
			}
			if err := v.chunk(d, int64(p)*pageEntries+int64(i), cid); err != nil {
				return err
			}
		}
	}
	return nil
}
