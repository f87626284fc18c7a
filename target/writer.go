package target

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"path"
	"slices"
	"sync"
	"time"
)

// PointSpec describes a point about to be written.
type PointSpec struct {
	Domain, DomainUUID string
	Level              string // LevelFull, LevelInc, LevelDiff, LevelCopy
	Consistency        string // crash, fs, app
	FreezeMS           int64
	Parent             string    // point this one is incremental to, if any
	Time               time.Time // default now
	// ID, Host and MachineID, when set, are the point's identity
	// elsewhere: a copy from another repository keeps them. Default: a
	// new ID, this host.
	ID, Host, MachineID string
	DomainXML           string
	DomainXMLInactive   string
	Tags                map[string]string
}

// DiskSpec describes a disk of a point.
type DiskSpec struct {
	Name             string
	Format           string
	VirtualSize      int64
	Checkpoint       string
	ParentCheckpoint string
	FormatDetails    map[string]any
	// Base is the point whose copy of this disk supplies every chunk the
	// writer is not given (an incremental). Empty: such chunks are zero.
	Base string
	// BaseDisk is the disk's name in Base (default Name).
	BaseDisk string
}

// DiskStats counts what writing a disk did.
type DiskStats struct {
	BytesRead   int64 // data handed to WriteChunk
	BytesStored int64 // bytes of new objects written
	ChunksNew   int64 // chunks stored
	ChunksDedup int64 // chunks found already stored
	ChunksZero  int64 // all-zero chunks (never stored)
	// Time spent, summed over the workers: hashing chunks, sealing them
	// (compression, encryption), and storing them (puts, waits for packs).
	Hash, Seal, Store time.Duration
}

// PointWriter writes one point: disks, then Commit. It holds a shared lock
// from NewPoint until Commit or Abort. Disks may be written concurrently.
type PointWriter struct {
	r    *Repository
	m    Manifest
	lock *Lock
	jobs chan job
	wg   sync.WaitGroup
	// verify, if set, checks the point's content in the repository once
	// it is durable and before the manifest names it (a copy).
	verify func(ctx context.Context, m *Manifest) error

	mu     sync.Mutex
	disks  []*DiskWriter
	closed bool
	// reused holds, per directory, a key of an object the point uses
	// that was stored before it (by anyone): made durable before the
	// manifest (Backend.SyncObjects).
	reused map[string]string
	sendMu sync.RWMutex // held shared while sending jobs, exclusively to close them
}

type job struct {
	dw  *DiskWriter
	idx int64
	buf *[]byte
	n   int
	// sealed, when set, is the chunk's envelope as it is to be stored,
	// under id (a copy between repositories that seal alike).
	sealed []byte
	id     ID
}

// NewPoint starts a point. The caller must Commit or Abort it.
func (r *Repository) NewPoint(ctx context.Context, s PointSpec) (*PointWriter, error) {
	switch s.Level {
	case LevelFull, LevelInc, LevelDiff, LevelCopy:
	default:
		return nil, fmt.Errorf("new point: level %q: want full, inc, diff or copy", s.Level)
	}
	if s.Domain == "" {
		return nil, errors.New("new point: no domain name")
	}
	if s.Time.IsZero() {
		s.Time = r.now()
	}
	if s.ID == "" {
		s.ID = NewPointID(s.Time)
	} else if err := checkPointID(s.ID); err != nil {
		return nil, fmt.Errorf("new point: %w", err)
	}
	host, machine := r.owner.Host, r.owner.MachineID
	if s.Host != "" {
		host, machine = s.Host, s.MachineID
	}
	lock, err := r.Lock(ctx, false)
	if err != nil {
		return nil, fmt.Errorf("new point: %w", err)
	}
	// Under the lock no GC runs: the packs known now, or confirmed before
	// they are relied on (stored), stay until Commit.
	if err := r.loadPacksCached(ctx); err != nil {
		lock.Unlock(context.WithoutCancel(ctx))
		return nil, fmt.Errorf("new point: %w", err)
	}
	r.flushMerged(ctx)
	pw := &PointWriter{
		r:    r,
		lock: lock,
		jobs: make(chan job, 2*r.worker),
		m: Manifest{Version: manifestVersion, ID: s.ID, Domain: s.Domain, DomainUUID: s.DomainUUID,
			Host: host, MachineID: machine, Time: s.Time.UTC(), Level: s.Level, Consistency: s.Consistency, FreezeMS: s.FreezeMS,
			Parent: s.Parent, DomainXML: s.DomainXML, DomainXMLInactive: s.DomainXMLInactive, Tags: s.Tags},
	}
	for i := 0; i < r.worker; i++ {
		pw.wg.Add(1)
		go pw.work()
	}
	return pw, nil
}

// reuseIf records key as reused when putting it stored nothing (n == 0:
// it was there).
func (pw *PointWriter) reuseIf(n int64, key string) {
	if n != 0 {
		return
	}
	pw.mu.Lock()
	defer pw.mu.Unlock()
	if pw.reused == nil {
		pw.reused = map[string]string{}
	}
	pw.reused[path.Dir(key)] = key
}

// reusePacked records the pack holding o (or o's own object) as reused.
func (pw *PointWriter) reusePacked(o ref) {
	if pack, _, ok := pw.r.packs.lookup(o); ok {
		pw.reuseIf(0, packKey(pack))
		pw.reuseIf(0, packIndexKey(pack))
		return
	}
	pw.reuseIf(0, objectKey(o.typ, o.id))
}

// ID is the ID the point will have.
func (pw *PointWriter) ID() string { return pw.m.ID }

var chunkBufs sync.Map // chunk size -> *sync.Pool

func bufPool(size int) *sync.Pool {
	if p, ok := chunkBufs.Load(size); ok {
		return p.(*sync.Pool)
	}
	p, _ := chunkBufs.LoadOrStore(size, &sync.Pool{New: func() any { b := make([]byte, size); return &b }})
	return p.(*sync.Pool)
}

func (pw *PointWriter) work() {
	defer pw.wg.Done()
	pool := bufPool(pw.r.cfg.ChunkSize)
	for j := range pw.jobs {
		var n int64
		var err error
		if j.sealed != nil {
			if err = pw.lock.Err(); err == nil && j.dw.failed() == nil {
				n, err = j.dw.storeChunk(j.id, nil, j.sealed)
			}
			j.dw.chunkDone(j.idx, j.id, n, err)
			continue
		}
		data := (*j.buf)[:j.n]
		t0 := time.Now()
		id := pw.r.codec.id(data)
		j.dw.spent(&j.dw.stats.Hash, t0)
		if err = pw.lock.Err(); err == nil && j.dw.failed() == nil {
			n, err = j.dw.storeChunk(id, data, nil)
		}
		pool.Put(j.buf)
		j.dw.chunkDone(j.idx, id, n, err)
	}
}

// AddBlob stores a small file with the point (firmware variables, TPM state).
func (pw *PointWriter) AddBlob(ctx context.Context, name string, data []byte) error {
	id, n, err := pw.r.putObject(ctx, typeBlob, data)
	if err != nil {
		return fmt.Errorf("point %s: blob %s: %w", pw.m.ID, name, err)
	}
	pw.reuseIf(n, objectKey(typeBlob, id))
	pw.mu.Lock()
	defer pw.mu.Unlock()
	if pw.m.Blobs == nil {
		pw.m.Blobs = map[string]string{}
	}
	pw.m.Blobs[name] = id.String()
	return nil
}

// AddDisk starts writing a disk of the point.
func (pw *PointWriter) AddDisk(ctx context.Context, s DiskSpec) (*DiskWriter, error) {
	if s.Name == "" || s.VirtualSize <= 0 {
		return nil, fmt.Errorf("point %s: disk %q of %d bytes: need a name and a size", pw.m.ID, s.Name, s.VirtualSize)
	}
	pw.mu.Lock()
	for _, d := range pw.disks {
		if d.spec.Name == s.Name {
			pw.mu.Unlock()
			return nil, fmt.Errorf("point %s: disk %s added twice", pw.m.ID, s.Name)
		}
	}
	pw.mu.Unlock()
	cs := int64(pw.r.cfg.ChunkSize)
	rt := &root{size: s.VirtualSize, chunkSize: int(cs)}
	rt.pages = make([]ID, numPages(rt.chunks()))
	dw := &DiskWriter{pw: pw, spec: s, rt: rt, ctx: ctx, open: map[int64]*openPage{}}
	if pw.r.cfg.PackSize > 0 {
		dw.pk = pw.r.newPacker(func(n int64, k int) {
			dw.mu.Lock()
			dw.stats.BytesStored += n
			dw.stats.ChunksNew += int64(k)
			dw.mu.Unlock()
		})
	}
	if s.Base != "" {
		bm, err := pw.r.Point(ctx, s.Base)
		if err != nil {
			return nil, fmt.Errorf("disk %s: base: %w", s.Name, err)
		}
		name := s.BaseDisk
		if name == "" {
			name = s.Name
		}
		bd, err := bm.Disk(name)
		if err != nil {
			return nil, fmt.Errorf("disk %s: base: %w", s.Name, err)
		}
		if dw.base, err = pw.r.diskRoot(ctx, bd); err != nil {
			return nil, fmt.Errorf("disk %s: base point %s: %w", s.Name, s.Base, err)
		}
		dw.basePage = -1
	}
	pw.mu.Lock()
	pw.disks = append(pw.disks, dw)
	pw.mu.Unlock()
	return dw, nil
}

// diskRoot loads the index root of a point's disk and checks it against
// the manifest: a root that claims another size than the disk would make
// readers and writers walk pages that are not there.
func (r *Repository) diskRoot(ctx context.Context, d *DiskManifest) (*root, error) {
	rt, err := r.loadRoot(ctx, d.Root)
	if err != nil {
		return nil, err
	}
	if rt.size != d.VirtualSize {
		return nil, corrupt("index says %d bytes, manifest %d", rt.size, d.VirtualSize)
	}
	return rt, nil
}

func (r *Repository) loadRoot(ctx context.Context, hexID string) (*root, error) {
	id, err := ParseID(hexID)
	if err != nil {
		return nil, corrupt("%v", err)
	}
	b, err := r.getObject(ctx, typeRoot, id)
	if err != nil {
		return nil, err
	}
	return decodeRoot(b, r.cfg.ChunkSize)
}

func (r *Repository) loadPage(ctx context.Context, rt *root, p int64) ([]ID, error) {
	n := pageLen(p, rt.chunks())
	if rt.pages[p].IsZero() {
		return make([]ID, n), nil
	}
	b, err := r.getObject(ctx, typePage, rt.pages[p])
	if err != nil {
		return nil, err
	}
	return decodePage(b, n)
}

// Commit makes the point durable and visible: it waits for every disk (each
// must be Closed), syncs the backend, writes the manifest and the journal
// entry, and releases the lock. It returns the manifest.
func (pw *PointWriter) Commit(ctx context.Context) (*Manifest, error) {
	pw.shutdown()
	defer pw.lock.Unlock(ctx)
	pw.mu.Lock()
	disks := pw.disks
	pw.mu.Unlock()
	if len(disks) == 0 {
		return nil, fmt.Errorf("point %s: no disks", pw.m.ID)
	}
	for _, d := range disks {
		if !d.closed {
			return nil, fmt.Errorf("point %s: disk %s was not closed", pw.m.ID, d.spec.Name)
		}
		if d.err != nil {
			return nil, d.err
		}
		pw.m.Disks = append(pw.m.Disks, d.manifest)
	}
	// Data and index durable before the manifest names them: what this
	// process wrote, and what the point reuses that others wrote.
	if err := pw.r.b.Sync(ctx); err != nil {
		return nil, fmt.Errorf("point %s: sync: %w", pw.m.ID, err)
	}
	pw.mu.Lock()
	reused := slices.Collect(maps.Values(pw.reused))
	pw.mu.Unlock()
	if err := pw.r.b.SyncObjects(ctx, reused); err != nil {
		return nil, fmt.Errorf("point %s: sync what it reuses: %w", pw.m.ID, err)
	}
	if pw.verify != nil {
		if err := pw.verify(ctx, &pw.m); err != nil {
			return nil, fmt.Errorf("point %s: %w", pw.m.ID, err)
		}
	}
	// A GC may only have overlapped this point if our lock lapsed: then
	// chunks it reuses may be gone, and it must not become visible.
	if err := pw.lock.Check(ctx); err != nil {
		return nil, fmt.Errorf("point %s: %w", pw.m.ID, err)
	}
	if err := pw.r.putManifest(ctx, &pw.m); err != nil {
		return nil, err
	}
	pw.r.flushMerged(ctx)
	pw.r.savePackSet()
	m := pw.m
	return &m, nil
}

// Abort gives the point up: nothing becomes visible; objects already
// written are left for GC. It runs on a context of its own.
func (pw *PointWriter) Abort(ctx context.Context) {
	pw.shutdown()
	_ = pw.lock.Unlock(ctx)
}

func (pw *PointWriter) shutdown() {
	pw.sendMu.Lock()
	if !pw.closed {
		pw.closed = true
		close(pw.jobs)
	}
	pw.sendMu.Unlock()
	pw.wg.Wait()
	pw.mu.Lock()
	disks := pw.disks
	pw.mu.Unlock()
	for _, d := range disks {
		if d.pk != nil {
			d.pk.discard()
		}
	}
}

// storeChunk stores chunk id, sealing data unless its envelope obj is
// given. It returns the bytes written, or -1 when the chunk went into a
// pack, whose store counts them.
func (dw *DiskWriter) storeChunk(id ID, data, obj []byte) (int64, error) {
	r := dw.pw.r
	if dw.pk == nil {
		if obj == nil {
			t0 := time.Now()
			obj = r.codec.seal(typeChunk, data)
			dw.spent(&dw.stats.Seal, t0)
		}
		defer dw.spent(&dw.stats.Store, time.Now())
		n, err := r.putSealed(dw.ctx, objectKey(typeChunk, id), obj)
		if err == nil {
			dw.pw.reuseIf(n, objectKey(typeChunk, id))
		}
		return n, err
	}
	var env *[]byte // a pooled buffer sealed into, given back once packed
	queued, err := dw.pack(ref{typeChunk, id}, func() func([]byte) []byte {
		switch {
		case obj != nil:
			return sealed(obj)
		case r.codec.sealsInPlace():
			// The envelope made straight in the pack: one copy less.
			return func(pack []byte) []byte { return r.codec.appendPlain(pack, typeChunk, data) }
		}
		t0 := time.Now()
		env = envelopes.Get().(*[]byte)
		*env = r.codec.sealTo((*env)[:0], typeChunk, data)
		dw.spent(&dw.stats.Seal, t0)
		return sealed(*env)
	})
	if env != nil {
		envelopes.Put(env)
	}
	if queued {
		return -1, err
	}
	return 0, err
}

// pack puts object o into the disk's packs unless the repository holds it
// or it is being packed (then Close waits for that pack). envelope, called
// only when o is to be packed, says how its envelope is appended. queued
// says o went into a pack of this disk.
func (dw *DiskWriter) pack(o ref, envelope func() func([]byte) []byte) (queued bool, err error) {
	known, up, err := dw.pw.r.stored(dw.ctx, o)
	if err != nil {
		return false, err
	}
	if known {
		if up == nil {
			dw.pw.reusePacked(o)
		}
		dw.await(up)
		return false, nil
	}
	put := envelope()
	t0 := time.Now()
	queued, up, err = dw.pk.add(dw.ctx, o, put)
	dw.spent(&dw.stats.Store, t0)
	dw.await(up)
	return queued, err
}

// envelopes holds the buffers chunks are sealed into before they are
// packed.
var envelopes = sync.Pool{New: func() any { return new([]byte) }}

// spent adds the time since t0 to the counter d of the disk's stats.
func (dw *DiskWriter) spent(d *time.Duration, t0 time.Time) {
	t := time.Since(t0)
	dw.mu.Lock()
	*d += t
	dw.mu.Unlock()
}

// await makes Close wait for up, the pack of a chunk this disk shares.
func (dw *DiskWriter) await(up *packUpload) {
	if up == nil || up.pk == dw.pk {
		return
	}
	dw.mu.Lock()
	if dw.waits == nil {
		dw.waits = map[*packUpload]bool{}
	}
	dw.waits[up] = true
	dw.mu.Unlock()
}

// finishPacks stores the disk's last pack and waits for every pack holding
// its chunks.
func (dw *DiskWriter) finishPacks(ctx context.Context) error {
	if dw.pk == nil {
		return nil
	}
	defer dw.spent(&dw.stats.Store, time.Now())
	err := dw.pk.flush(ctx)
	dw.mu.Lock()
	waits := dw.waits
	dw.mu.Unlock()
	for up := range waits {
		if e := up.wait(ctx); e != nil && err == nil {
			err = fmt.Errorf("a chunk shared with another disk: %w", e)
		}
	}
	return err
}

// DiskWriter writes one disk of a point, chunk by chunk in increasing
// order. A chunk it is not given is kept from the base point (an
// incremental), or is zero when there is no base.
type DiskWriter struct {
	pw   *PointWriter
	spec DiskSpec
	rt   *root
	ctx  context.Context

	base     *root
	basePage int64
	baseIDs  []ID

	pk    *packer              // nil: one object per chunk
	waits map[*packUpload]bool // other disks' packs holding chunks of this one

	next     int64 // next chunk index expected
	inflight sync.WaitGroup

	mu       sync.Mutex
	open     map[int64]*openPage
	stats    DiskStats
	err      error
	closed   bool
	manifest DiskManifest
}

type openPage struct {
	ids     []ID
	pending int
	sealed  bool // no more chunks will be added
	done    bool
}

func (dw *DiskWriter) failed() error {
	dw.mu.Lock()
	defer dw.mu.Unlock()
	return dw.err
}

func (dw *DiskWriter) fail(err error) {
	dw.mu.Lock()
	if dw.err == nil {
		dw.err = fmt.Errorf("disk %s: %w", dw.spec.Name, err)
	}
	dw.mu.Unlock()
}

// Chunks is the number of chunks of the disk.
func (dw *DiskWriter) Chunks() int64 { return dw.rt.chunks() }

// ChunkSize is the repository's chunk size.
func (dw *DiskWriter) ChunkSize() int { return dw.rt.chunkSize }

func (dw *DiskWriter) chunkLen(idx int64) int {
	return int(min(int64(dw.rt.chunkSize), dw.rt.size-idx*int64(dw.rt.chunkSize)))
}

// advance moves to chunk idx, filling the gap with the default, and checks
// order.
func (dw *DiskWriter) advance(ctx context.Context, idx int64) error {
	if err := dw.failed(); err != nil {
		return err
	}
	if dw.closed {
		return fmt.Errorf("disk %s: closed", dw.spec.Name)
	}
	if idx < dw.next || idx > dw.rt.chunks() {
		return fmt.Errorf("disk %s: chunk %d out of order (next is %d of %d)", dw.spec.Name, idx, dw.next, dw.rt.chunks())
	}
	if gap := idx - dw.next; gap > 0 {
		if dw.base != nil {
			return dw.keep(ctx, gap)
		}
		return dw.zero(gap)
	}
	return nil
}

// WriteChunk stores chunk idx. data must be the chunk's full length (the
// chunk size, or what remains of the disk for the last chunk); it is copied.
func (dw *DiskWriter) WriteChunk(ctx context.Context, idx int64, data []byte) error {
	buf := dw.ChunkBuffer()
	if len(data) > len(*buf) {
		bufPool(len(*buf)).Put(buf)
		return fmt.Errorf("disk %s: chunk %d of %d bytes, want %d", dw.spec.Name, idx, len(data), dw.chunkLen(max(0, min(idx, dw.rt.chunks()-1))))
	}
	copy(*buf, data)
	return dw.WriteChunkBuffer(ctx, idx, buf, len(data))
}

// ChunkBuffer is a buffer of the chunk size for WriteChunkBuffer.
func (dw *DiskWriter) ChunkBuffer() *[]byte {
	return bufPool(dw.pw.r.cfg.ChunkSize).Get().(*[]byte)
}

// WriteChunkBuffer is WriteChunk of (*buf)[:n] without the copy: buf, from
// ChunkBuffer, belongs to the writer from the call on.
func (dw *DiskWriter) WriteChunkBuffer(ctx context.Context, idx int64, buf *[]byte, n int) error {
	pool := bufPool(dw.pw.r.cfg.ChunkSize)
	if err := dw.advance(ctx, idx); err != nil {
		pool.Put(buf)
		return err
	}
	if idx >= dw.rt.chunks() || n != dw.chunkLen(idx) || n > len(*buf) {
		pool.Put(buf)
		return fmt.Errorf("disk %s: chunk %d of %d bytes, want %d", dw.spec.Name, idx, n, dw.chunkLen(max(0, min(idx, dw.rt.chunks()-1))))
	}
	data := (*buf)[:n]
	dw.mu.Lock()
	dw.stats.BytesRead += int64(len(data))
	dw.mu.Unlock()
	dw.next = idx + 1
	if IsZero(data) {
		pool.Put(buf)
		dw.mu.Lock()
		dw.stats.ChunksZero++
		dw.mu.Unlock()
		dw.set(idx, ZeroID)
		return nil
	}
	return dw.send(ctx, job{dw: dw, idx: idx, buf: buf, n: n}, func() { pool.Put(buf) })
}

// writeSealed stores chunk idx as obj, an envelope this repository's codec
// would make of the chunk's data, which hashes to id: a copy from a
// repository that seals alike stores the source's object as it is.
func (dw *DiskWriter) writeSealed(ctx context.Context, idx int64, id ID, obj []byte) error {
	if err := dw.advance(ctx, idx); err != nil {
		return err
	}
	if idx >= dw.rt.chunks() {
		return fmt.Errorf("disk %s: chunk %d past the end (%d)", dw.spec.Name, idx, dw.rt.chunks())
	}
	dw.mu.Lock()
	dw.stats.BytesRead += int64(dw.chunkLen(idx))
	dw.mu.Unlock()
	dw.next = idx + 1
	return dw.send(ctx, job{dw: dw, idx: idx, sealed: obj, id: id}, func() {})
}

// send hands a chunk to the workers; drop releases its buffer when it
// cannot be sent.
func (dw *DiskWriter) send(ctx context.Context, j job, drop func()) error {
	idx := j.idx
	dw.mu.Lock()
	op := dw.page(idx / pageEntries)
	op.pending++
	dw.mu.Unlock()
	dw.inflight.Add(1)
	dw.pw.sendMu.RLock()
	if dw.pw.closed {
		dw.pw.sendMu.RUnlock()
		drop()
		err := fmt.Errorf("point %s was committed or aborted", dw.pw.m.ID)
		dw.chunkDone(idx, ZeroID, 0, err)
		return err
	}
	select {
	case dw.pw.jobs <- j:
	case <-ctx.Done():
		dw.pw.sendMu.RUnlock()
		drop()
		dw.chunkDone(idx, ZeroID, 0, ctx.Err())
		return ctx.Err()
	}
	dw.pw.sendMu.RUnlock()
	return dw.sealBefore(idx / pageEntries)
}

// Stored records chunk idx as the chunk object id, which the caller knows
// to be stored already (a copy between repositories that share IDs).
func (dw *DiskWriter) Stored(ctx context.Context, idx int64, id ID) error {
	if err := dw.advance(ctx, idx); err != nil {
		return err
	}
	if idx >= dw.rt.chunks() {
		return fmt.Errorf("disk %s: chunk %d past the end (%d)", dw.spec.Name, idx, dw.rt.chunks())
	}
	dw.mu.Lock()
	dw.stats.ChunksDedup++
	dw.mu.Unlock()
	dw.pw.reusePacked(ref{typeChunk, id})
	dw.next = idx + 1
	dw.set(idx, id)
	return dw.sealBefore(idx / pageEntries)
}

// Zero records n all-zero chunks from idx.
func (dw *DiskWriter) Zero(ctx context.Context, idx, n int64) error {
	if err := dw.advance(ctx, idx); err != nil {
		return err
	}
	return dw.zero(n)
}

// Keep takes n chunks from idx from the base point unchanged.
func (dw *DiskWriter) Keep(ctx context.Context, idx, n int64) error {
	if dw.base == nil {
		return fmt.Errorf("disk %s: keep without a base point", dw.spec.Name)
	}
	if err := dw.advance(ctx, idx); err != nil {
		return err
	}
	return dw.keep(ctx, n)
}

func (dw *DiskWriter) zero(n int64) error {
	if dw.next+n > dw.rt.chunks() {
		return fmt.Errorf("disk %s: zero chunks [%d, +%d) past the end (%d)", dw.spec.Name, dw.next, n, dw.rt.chunks())
	}
	for end := dw.next + n; dw.next < end; {
		p := dw.next / pageEntries
		pl := int64(pageLen(p, dw.rt.chunks()))
		if dw.next%pageEntries == 0 && end-dw.next >= pl && !dw.isOpen(p) {
			dw.rt.pages[p] = ZeroID // a whole zero page costs nothing
			dw.next += pl
			continue
		}
		dw.set(dw.next, ZeroID)
		dw.next++
	}
	return dw.sealBefore(dw.next / pageEntries)
}

func (dw *DiskWriter) keep(ctx context.Context, n int64) error {
	if dw.next+n > dw.base.chunks() || dw.next+n > dw.rt.chunks() {
		return fmt.Errorf("disk %s: keep chunks [%d, +%d) past the end of the base disk (%d chunks)", dw.spec.Name, dw.next, n, dw.base.chunks())
	}
	for end := dw.next + n; dw.next < end; {
		p := dw.next / pageEntries
		pl := int64(pageLen(p, dw.rt.chunks()))
		if dw.next%pageEntries == 0 && end-dw.next >= pl && !dw.isOpen(p) && int64(pageLen(p, dw.base.chunks())) == pl {
			dw.rt.pages[p] = dw.base.pages[p] // whole page unchanged: reuse it
			dw.next += pl
			continue
		}
		if dw.basePage != p {
			ids, err := dw.pw.r.loadPage(ctx, dw.base, p)
			if err != nil {
				dw.fail(fmt.Errorf("base page %d: %w", p, err))
				return dw.failed()
			}
			dw.basePage, dw.baseIDs = p, ids
		}
		dw.set(dw.next, dw.baseIDs[dw.next%pageEntries])
		dw.next++
	}
	return dw.sealBefore(dw.next / pageEntries)
}

func (dw *DiskWriter) isOpen(p int64) bool {
	dw.mu.Lock()
	defer dw.mu.Unlock()
	_, ok := dw.open[p]
	return ok
}

// page returns open page p, creating it (dw.mu held).
func (dw *DiskWriter) page(p int64) *openPage {
	op, ok := dw.open[p]
	if !ok {
		op = &openPage{ids: make([]ID, pageLen(p, dw.rt.chunks()))}
		dw.open[p] = op
	}
	return op
}

func (dw *DiskWriter) set(idx int64, id ID) {
	dw.mu.Lock()
	dw.page(idx / pageEntries).ids[idx%pageEntries] = id
	dw.mu.Unlock()
}

func (dw *DiskWriter) chunkDone(idx int64, id ID, stored int64, err error) {
	defer dw.inflight.Done()
	dw.mu.Lock()
	op := dw.open[idx/pageEntries]
	op.pending--
	if err != nil {
		if dw.err == nil {
			dw.err = fmt.Errorf("disk %s: chunk %d: %w", dw.spec.Name, idx, err)
		}
	} else {
		op.ids[idx%pageEntries] = id
		switch {
		case stored > 0:
			dw.stats.BytesStored += stored
			dw.stats.ChunksNew++
		case stored == 0:
			dw.stats.ChunksDedup++
		}
	}
	ready := op.sealed && op.pending == 0 && !op.done
	if ready {
		op.done = true
	}
	dw.mu.Unlock()
	if ready {
		dw.storePage(idx / pageEntries)
	}
}

// sealBefore marks the pages before p complete and stores those with no
// chunk in flight.
func (dw *DiskWriter) sealBefore(p int64) error {
	dw.mu.Lock()
	var ready []int64
	for q, op := range dw.open {
		if q < p && !op.sealed {
			op.sealed = true
			if op.pending == 0 && !op.done {
				op.done = true
				ready = append(ready, q)
			}
		}
	}
	dw.mu.Unlock()
	for _, q := range ready {
		dw.storePage(q)
	}
	return dw.failed()
}

// storePage writes a completed page and drops it from memory.
func (dw *DiskWriter) storePage(p int64) {
	dw.mu.Lock()
	op := dw.open[p]
	delete(dw.open, p)
	failed := dw.err != nil
	dw.mu.Unlock()
	if failed {
		return
	}
	if allZero(op.ids) {
		dw.rt.pages[p] = ZeroID
		return
	}
	id, n, err := dw.putPage(encodePage(op.ids))
	if err != nil {
		dw.fail(fmt.Errorf("index page %d: %w", p, err))
		return
	}
	dw.mu.Lock()
	dw.rt.pages[p] = id
	dw.stats.BytesStored += n
	dw.mu.Unlock()
}

// putPage stores an index page: into the disk's packs (its bytes are
// counted when its pack is stored), or as an object of its own.
func (dw *DiskWriter) putPage(plain []byte) (ID, int64, error) {
	r := dw.pw.r
	if dw.pk == nil {
		id, n, err := r.putObject(dw.ctx, typePage, plain)
		if err == nil {
			dw.pw.reuseIf(n, objectKey(typePage, id))
		}
		return id, n, err
	}
	id := r.codec.id(plain)
	_, err := dw.pack(ref{typePage, id}, func() func([]byte) []byte { return sealed(r.codec.seal(typePage, plain)) })
	return id, 0, err
}

// Close finishes the disk: chunks not given are kept or zero, the index is
// stored. It returns the first error any chunk met.
func (dw *DiskWriter) Close(ctx context.Context) error {
	if dw.closed {
		return dw.failed()
	}
	err := dw.advance(ctx, dw.rt.chunks())
	dw.closed = true
	if err == nil {
		err = dw.sealBefore(dw.rt.chunks()/pageEntries + 1)
	}
	dw.inflight.Wait()
	if perr := dw.finishPacks(ctx); err == nil {
		err = perr
	}
	if err != nil {
		dw.fail(err)
	}
	if err = dw.failed(); err != nil {
		return err
	}
	dw.mu.Lock()
	left := len(dw.open)
	dw.mu.Unlock()
	if left != 0 {
		return fmt.Errorf("disk %s: %d index pages left unwritten", dw.spec.Name, left)
	}
	id, n, err := dw.pw.r.putObject(ctx, typeRoot, dw.rt.encode())
	if err != nil {
		dw.fail(fmt.Errorf("index root: %w", err))
		return dw.failed()
	}
	dw.pw.reuseIf(n, objectKey(typeRoot, id))
	dw.mu.Lock()
	dw.stats.BytesStored += n
	s := dw.spec
	dw.manifest = DiskManifest{Name: s.Name, Format: s.Format, VirtualSize: s.VirtualSize, Root: id.String(),
		Checkpoint: s.Checkpoint, ParentCheckpoint: s.ParentCheckpoint, BytesRead: dw.stats.BytesRead,
		BytesStored: dw.stats.BytesStored, FormatDetails: s.FormatDetails}
	dw.mu.Unlock()
	return nil
}

// Stats returns the counts so far.
func (dw *DiskWriter) Stats() DiskStats {
	dw.mu.Lock()
	defer dw.mu.Unlock()
	return dw.stats
}

// IsZero reports whether b holds only zero bytes (fast: 32 bytes a step).
func IsZero(b []byte) bool {
	for len(b) >= 32 {
		if binary.LittleEndian.Uint64(b)|binary.LittleEndian.Uint64(b[8:])|
			binary.LittleEndian.Uint64(b[16:])|binary.LittleEndian.Uint64(b[24:]) != 0 {
			return false
		}
		b = b[32:]
	}
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
