package target

import (
	"container/list"
	"context"
	"fmt"
	"sync"
)

// DiskReader reads one disk of a point as a random-access byte range. It
// verifies every chunk it reads against its ID. It is safe for concurrent
// use, and satisfies nbd.Source (Size, ReadAt).
type DiskReader struct {
	r    *Repository
	m    *Manifest
	disk *DiskManifest
	rt   *root

	mu     sync.Mutex
	pages  map[int64][]ID
	chunks *lru
}

// OpenDisk opens disk of point.
func (r *Repository) OpenDisk(ctx context.Context, point, disk string) (*DiskReader, error) {
	m, err := r.Point(ctx, point)
	if err != nil {
		return nil, err
	}
	d, err := m.Disk(disk)
	if err != nil {
		return nil, err
	}
	rt, err := r.diskRoot(ctx, d)
	if err != nil {
		return nil, fmt.Errorf("point %s disk %s: %w", point, disk, err)
	}
	if r.packs.empty() {
		// Reads are grouped by where the index says chunks lie.
		if err := r.loadPacks(ctx); err != nil {
			return nil, fmt.Errorf("point %s disk %s: %w", point, disk, err)
		}
	}
	return &DiskReader{r: r, m: m, disk: d, rt: rt, pages: map[int64][]ID{}, chunks: newLRU(32)}, nil
}

// Manifest is the point's manifest.
func (d *DiskReader) Manifest() *Manifest { return d.m }

// Size is the disk's virtual size.
func (d *DiskReader) Size() int64 { return d.rt.size }

func (d *DiskReader) page(ctx context.Context, p int64) ([]ID, error) {
	d.mu.Lock()
	ids, ok := d.pages[p]
	d.mu.Unlock()
	if ok {
		return ids, nil
	}
	ids, err := d.r.loadPage(ctx, d.rt, p)
	if err != nil {
		return nil, fmt.Errorf("point %s disk %s: index page %d: %w", d.m.ID, d.disk.Name, p, err)
	}
	d.mu.Lock()
	if len(d.pages) >= 64 { // bounded: drop everything, pages are cheap to reload
		clear(d.pages)
	}
	d.pages[p] = ids
	d.mu.Unlock()
	return ids, nil
}

// ChunkID returns the ID of chunk idx (ZeroID for a zero chunk).
func (d *DiskReader) ChunkID(ctx context.Context, idx int64) (ID, error) {
	if idx < 0 || idx >= d.rt.chunks() {
		return ZeroID, fmt.Errorf("chunk %d outside the disk (%d chunks)", idx, d.rt.chunks())
	}
	ids, err := d.page(ctx, idx/pageEntries)
	if err != nil {
		return ZeroID, err
	}
	return ids[idx%pageEntries], nil
}

func (d *DiskReader) chunk(ctx context.Context, id ID) ([]byte, error) {
	if b, ok := d.chunks.get(id); ok {
		return b, nil
	}
	b, err := d.r.getObject(ctx, typeChunk, id)
	if err != nil {
		return nil, fmt.Errorf("point %s disk %s: %w", d.m.ID, d.disk.Name, err)
	}
	d.chunks.put(id, b)
	return b, nil
}

// ReadAt fills p with the disk's bytes at off. Chunks that lie side by
// side in one pack are read with one request (a run), and several runs
// are read at once: a restore from a remote target costs a request per
// few megabytes, not one per chunk.
func (d *DiskReader) ReadAt(ctx context.Context, p []byte, off int64) error {
	if off < 0 || off+int64(len(p)) > d.rt.size {
		return fmt.Errorf("read [%d, +%d) outside the disk of %d bytes", off, len(p), d.rt.size)
	}
	parts, err := d.parts(ctx, p, off)
	if err != nil {
		return err
	}
	runs := d.r.packRuns(parts)
	return inParallel(ctx, readRuns, len(runs), func(i int) error { return d.readRun(ctx, runs[i]) })
}

// readRuns is how many runs a ReadAt reads at once.
const readRuns = 8

// part is the piece of chunk idx (ID id) that fills dst, from byte from of
// the chunk.
type part struct {
	idx  int64
	id   ID
	dst  []byte
	from int64
}

// parts splits [off, off+len(p)) into the pieces of chunks to read: zero
// chunks and chunks in the reader's cache are filled at once.
func (d *DiskReader) parts(ctx context.Context, p []byte, off int64) ([]part, error) {
	cs := int64(d.rt.chunkSize)
	var parts []part
	for at := off; at < off+int64(len(p)); {
		idx := at / cs
		from := at - idx*cs
		n := min(cs-from, off+int64(len(p))-at)
		pt := part{idx: idx, dst: p[at-off : at-off+n], from: from}
		at += n
		id, err := d.ChunkID(ctx, idx)
		if err != nil {
			return nil, err
		}
		if id.IsZero() {
			clear(pt.dst)
			continue
		}
		pt.id = id
		if b, ok := d.chunks.get(id); ok {
			if err := d.fill(pt, b); err != nil {
				return nil, err
			}
			continue
		}
		parts = append(parts, pt)
	}
	return parts, nil
}

// fill copies pt's piece of its chunk b.
func (d *DiskReader) fill(pt part, b []byte) error {
	if int64(len(b)) < pt.from+int64(len(pt.dst)) {
		return fmt.Errorf("point %s disk %s: chunk %d: %w", d.m.ID, d.disk.Name, pt.idx, corrupt("%d bytes", len(b)))
	}
	copy(pt.dst, b[pt.from:])
	return nil
}

// readRun reads the chunks of run, which lie in one pack in this order
// (packRuns): with one ranged read when they are several, each then
// checked against its ID. When that read or a check fails, each chunk is
// read on its own, which looks for a pack repacked meanwhile and names
// what is damaged.
func (d *DiskReader) readRun(ctx context.Context, run []part) error {
	if len(run) > 1 && d.r.readPacked(ctx, run, func(i int, plain []byte) error {
		d.chunks.put(run[i].id, plain)
		return d.fill(run[i], plain)
	}) {
		return nil
	}
	for _, pt := range run {
		b, err := d.chunk(ctx, pt.id)
		if err == nil {
			err = d.fill(pt, b)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// Allocated walks [off, off+length) in runs of zero chunks and data chunks,
// calling fn in order: what a restore must write and an NBD server reports
// as holes.
func (d *DiskReader) Allocated(ctx context.Context, off, length int64, fn func(off, length int64, zero bool) error) error {
	if off < 0 || length < 0 || off+length > d.rt.size {
		return fmt.Errorf("map [%d, +%d) outside the disk of %d bytes", off, length, d.rt.size)
	}
	cs := int64(d.rt.chunkSize)
	end := off + length
	runOff, runZero := off, false
	for at := off; at < end; {
		idx := at / cs
		next := min((idx+1)*cs, end)
		var zero bool
		if p := idx / pageEntries; d.rt.pages[p].IsZero() {
			zero = true
			next = min((p+1)*pageEntries*cs, end)
		} else {
			id, err := d.ChunkID(ctx, idx)
			if err != nil {
				return err
			}
			zero = id.IsZero()
		}
		if at > runOff && zero != runZero {
			if err := fn(runOff, at-runOff, runZero); err != nil {
				return err
			}
			runOff = at
		}
		runZero = zero
		at = next
	}
	if end > runOff {
		return fn(runOff, end-runOff, runZero)
	}
	return nil
}

// lru is a small cache of chunk plaintexts.
type lru struct {
	mu  sync.Mutex
	max int
	ll  *list.List
	m   map[ID]*list.Element
}

type lruEntry struct {
	id ID
	b  []byte
}

func newLRU(n int) *lru { return &lru{max: n, ll: list.New(), m: map[ID]*list.Element{}} }

func (c *lru) get(id ID) ([]byte, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.m[id]; ok {
		c.ll.MoveToFront(e)
		return e.Value.(*lruEntry).b, true
	}
	return nil, false
}

func (c *lru) put(id ID, b []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.m[id]; ok {
		return
	}
	c.m[id] = c.ll.PushFront(&lruEntry{id, b})
	if c.ll.Len() > c.max {
		e := c.ll.Back()
		c.ll.Remove(e)
		delete(c.m, e.Value.(*lruEntry).id)
	}
}

// PageIDs returns the page IDs of the index root rootID (for tools and tests).
func PageIDs(ctx context.Context, r *Repository, rootID string) ([]ID, error) {
	rt, err := r.loadRoot(ctx, rootID)
	if err != nil {
		return nil, err
	}
	return rt.pages, nil
}

// Blob loads a blob saved with a point (manifest Blobs value).
func (r *Repository) Blob(ctx context.Context, hexID string) ([]byte, error) {
	id, err := ParseID(hexID)
	if err != nil {
		return nil, corrupt("%v", err)
	}
	return r.getObject(ctx, typeBlob, id)
}
