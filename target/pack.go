package target

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"
)

// Packs (docs/FORMAT.md, "Packs"): a repository whose config sets
// pack_size stores chunk envelopes concatenated into pack objects, each
// with a pack index naming its chunks, so that a backup writes one object
// per pack_size bytes instead of one per chunk.

const (
	// DefaultPackSize is the pack size of new repositories.
	DefaultPackSize = 8 << 20
	minPackSize     = 1 << 20
	maxPackSize     = 256 << 20
	typePackIndex   = 7
	packEntryLen    = 1 + 32 + 4 + 4 // type, ID, offset, length
	// packIndexLoaders is how many pack indexes are read at once.
	packIndexLoaders = 64
	// maxPackEntries is the most objects a writer puts in one pack;
	// readers refuse an index of more than maxPackIndexEntries.
	maxPackEntries      = 1 << 18
	maxPackIndexEntries = 1 << 20
	// maxIndexEntries bounds the objects the in-memory pack map holds
	// (about 100 bytes each): 2^25 chunks of 256 KiB are 8 TiB of unique
	// data. A repository that lists more is refused, not loaded.
	maxIndexEntries = 1 << 25
)

// ErrTooLarge is wrapped by the error for a repository whose pack indexes
// list more objects than this host will hold in memory.
var ErrTooLarge = errors.New("repository index too large")

func packKey(id ID) string      { h := id.String(); return "packs/" + h[:2] + "/" + h }
func packIndexKey(id ID) string { h := id.String(); return "packindex/" + h[:2] + "/" + h }

// keyID parses the ID a key ends with.
func keyID(key string) (ID, error) {
	return ParseID(key[strings.LastIndex(key, "/")+1:])
}

// ref names a packed object: a chunk or an index page.
type ref struct {
	typ byte
	id  ID
}

type packEntry struct {
	ref
	off, n uint32
}

// encodePackIndex is the plaintext of pack's index: its ID, then an entry
// per object.
func encodePackIndex(pack ID, es []packEntry) []byte {
	out := make([]byte, 32, 32+len(es)*packEntryLen)
	copy(out, pack[:])
	for _, e := range es {
		out = append(append(out, e.typ), e.id[:]...)
		out = binary.BigEndian.AppendUint32(out, e.off)
		out = binary.BigEndian.AppendUint32(out, e.n)
	}
	return out
}

// decodePackIndex parses the index of pack, a pack of size bytes, and
// checks every entry against it.
// Entries are in pack order and do not overlap (as packers write them), so
// an index lists at most one object per headerLen+1 bytes of its pack.
func decodePackIndex(plain []byte, pack ID, size int64, chunkMax int64) ([]packEntry, error) {
	if len(plain) < 32 || (len(plain)-32)%packEntryLen != 0 {
		return nil, corrupt("pack index of %d bytes", len(plain))
	}
	if ID(plain[:32]) != pack {
		return nil, corrupt("pack index names pack %s", ID(plain[:32]))
	}
	n := (len(plain) - 32) / packEntryLen
	if n > maxPackIndexEntries || int64(n) > size/(headerLen+1) {
		return nil, corrupt("pack index lists %d objects in a pack of %d bytes", n, size)
	}
	es := make([]packEntry, 0, n)
	var end int64 // where the previous entry ends
	for p := plain[32:]; len(p) > 0; p = p[packEntryLen:] {
		e := packEntry{ref: ref{typ: p[0], id: ID(p[1:33])}, off: binary.BigEndian.Uint32(p[33:]), n: binary.BigEndian.Uint32(p[37:])}
		if e.typ != typeChunk && e.typ != typePage {
			return nil, corrupt("pack index entry %s of type %d", e.id, e.typ)
		}
		if e.n <= headerLen || int64(e.n) > chunkMax || int64(e.off)+int64(e.n) > size {
			return nil, corrupt("pack index entry %s at %d+%d outside the pack's %d bytes", e.id, e.off, e.n, size)
		}
		if int64(e.off) < end {
			return nil, corrupt("pack index entry %s at %d overlaps the one before it (to %d)", e.id, e.off, end)
		}
		end = int64(e.off) + int64(e.n)
		es = append(es, e)
	}
	return es, nil
}

// packInfo is one pack as a scan found it.
type packInfo struct {
	id       ID
	size     int64
	modTime  time.Time
	indexed  bool // it has an index
	idxSize  int64
	idxMod   time.Time
	entries  []packEntry
	indexErr error // the index could not be read or is damaged
	// fromMerged: entries came from a merged index, not the own one.
	fromMerged bool
}

// scanPacks lists packs and their indexes and reads every index for which
// skip (given the pack and the size of its index) is false, from merged
// indexes too when merged is set (see readPackIndexes). Indexes of
// missing packs are returned with size -1.
func (r *Repository) scanPacks(ctx context.Context, skip func(pack ID, idxSize int64) bool, merged bool) (map[ID]*packInfo, error) {
	packs := map[ID]*packInfo{}
	err := r.b.List(ctx, "packs/", func(fi ObjectInfo) error {
		if id, err := keyID(fi.Key); err == nil {
			packs[id] = &packInfo{id: id, size: fi.Size, modTime: fi.ModTime}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list packs: %w", err)
	}
	var todo []*packInfo
	err = r.b.List(ctx, "packindex/", func(fi ObjectInfo) error {
		id, err := keyID(fi.Key)
		if err != nil {
			return nil
		}
		p := packs[id]
		if p == nil {
			p = &packInfo{id: id, size: -1}
			packs[id] = p
		}
		p.indexed, p.idxSize, p.idxMod = true, fi.Size, fi.ModTime
		if p.size >= 0 && (skip == nil || !skip(id, fi.Size)) {
			todo = append(todo, p)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list pack indexes: %w", err)
	}
	return packs, r.readPackIndexes(ctx, todo, merged)
}

// readPackIndexes reads the indexes of ps: each from the metadata cache
// when it holds it; with merged, when mergedAfter or more are left, from
// the merged indexes that match the listing; the rest from their own
// objects, several at once (then gathered for a merged one). A damaged
// index is recorded in its packInfo; other failures are returned.
func (r *Repository) readPackIndexes(ctx context.Context, ps []*packInfo, merged bool) error {
	var todo []*packInfo
	for _, p := range ps {
		if es, ok := r.cachedPackIndex(p); ok {
			p.entries = es
		} else {
			todo = append(todo, p)
		}
	}
	if merged && len(todo) >= mergedAfter {
		var err error
		if todo, err = r.fromMerged(ctx, todo); err != nil {
			return err
		}
	}
	err := inParallel(ctx, packIndexLoaders, len(todo), func(i int) error {
		p := todo[i]
		var err error
		p.entries, err = r.fetchPackIndex(ctx, p)
		switch {
		case errors.Is(err, ErrCorrupt):
			p.indexErr = err
		case errors.Is(err, ErrNotFound):
			p.indexed = false // deleted meanwhile
		case err != nil:
			return err
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, p := range todo {
		if p.indexed && p.indexErr == nil {
			r.unmerged.add(p.record())
		}
	}
	return nil
}

// cachedPackIndex is p's index from the metadata cache, when it holds one
// of the listed size that decodes.
func (r *Repository) cachedPackIndex(p *packInfo) ([]packEntry, bool) {
	var es []packEntry
	ok := r.cachedObject(cachePackDir, p.id, typePackIndex, p.idxSize, func(obj []byte) (err error) {
		es, err = r.decodePackIndexObject(p, obj)
		return err
	})
	return es, ok
}

// fetchPackIndex reads p's index from the backend and caches it.
func (r *Repository) fetchPackIndex(ctx context.Context, p *packInfo) ([]packEntry, error) {
	var es []packEntry
	err := r.fetchObject(ctx, cachePackDir, p.id, packIndexKey(p.id), typePackIndex, p.idxSize, func(obj []byte) (err error) {
		es, err = r.decodePackIndexObject(p, obj)
		return err
	})
	return es, err
}

// cachedObject gives decode the metadata cache's copy of object id of kind
// (of type typ) when it holds one of size bytes, the size listed now; a
// copy decode refuses is dropped. It reports whether decode took one.
func (r *Repository) cachedObject(kind string, id ID, typ byte, size int64, decode func(obj []byte) error) bool {
	obj, ok := r.cache.object(kind, id, size, maxObject(typ, r.cfg.ChunkSize))
	if !ok {
		return false
	}
	if err := decode(obj); err != nil {
		r.log.Warn("cached metadata damaged: read from the target", "object", kind+"/"+id.String(), "err", err)
		r.cache.dropObject(kind, id)
		return false
	}
	return true
}

// fetchObject reads the object at key (of type typ) from the backend and
// gives it to decode; one decode takes at size bytes, the size listed, is
// cached as object id of kind.
func (r *Repository) fetchObject(ctx context.Context, kind string, id ID, key string, typ byte, size int64, decode func(obj []byte) error) error {
	obj, err := r.getEnvelope(ctx, typ, key)
	if err != nil {
		return err
	}
	if err := decode(obj); err != nil {
		return err
	}
	if int64(len(obj)) == size {
		r.cache.putObject(kind, id, obj)
	}
	return nil
}

// decodePackIndexObject opens and decodes obj, the stored index of p.
func (r *Repository) decodePackIndexObject(p *packInfo, obj []byte) ([]packEntry, error) {
	plain, err := r.codec.open(typePackIndex, obj)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", packIndexKey(p.id), err)
	}
	return decodePackIndex(plain, p.id, p.size, maxObject(typeChunk, r.cfg.ChunkSize))
}

// packIndex is the repository's chunk ID -> pack location map in memory,
// and the chunks being packed that are not stored yet.
type packIndex struct {
	loadMu sync.Mutex // one load at a time

	limit int // the most objects held: maxIndexEntries

	mu      sync.Mutex
	damaged map[ID]error     // packs whose index the last load found damaged
	names   []ID             // pack IDs, by packLoc.pack
	known   map[ID]knownPack // pack ID -> what is known of it
	have    map[ref]packLoc
	pending map[ref]*packUpload
	merged  bool // some packs' entries came from merged indexes
	stats   int  // packs confirmed one by one since the last listing
	// listedAt is when the packs known were listed (by this process, or
	// for the cached pack set they came from).
	listedAt time.Time
}

// knownPack is a pack whose index was read.
type knownPack struct {
	num int32 // its number in names
	// idxSize is the size of its index when read: an index rewritten
	// since (check dropped a damaged chunk) is read again.
	idxSize int64
	size    int64 // the pack's
	// sure: a listing showed it, or this process stored it; else it came
	// from the cached pack set and is confirmed before it is relied on.
	sure bool
}

type packLoc struct {
	pack   int32
	off, n uint32
}

func newPackIndex() *packIndex {
	return &packIndex{limit: maxIndexEntries, known: map[ID]knownPack{}, have: map[ref]packLoc{}, pending: map[ref]*packUpload{}}
}

// reset forgets every pack (they are read again when needed).
func (x *packIndex) reset() {
	x.mu.Lock()
	x.names, x.known, x.have, x.merged, x.stats, x.listedAt = nil, map[ID]knownPack{}, map[ref]packLoc{}, false, 0, time.Time{}
	x.mu.Unlock()
}

// fromMerged reports whether merged indexes gave some of the packs.
func (x *packIndex) fromMerged() bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.merged
}

// addPack records pack's chunks (a chunk already in another pack keeps its
// place there). It refuses to hold more than x.limit objects.
func (x *packIndex) addPack(pack ID, size int64, es []packEntry, idxSize int64, sure bool) error {
	x.mu.Lock()
	defer x.mu.Unlock()
	if len(x.have)+len(es) > x.limit {
		return fmt.Errorf("%s: %w: more than %d objects listed in pack indexes", packIndexKey(pack), ErrTooLarge, x.limit)
	}
	k, ok := x.known[pack]
	if !ok {
		k.num = int32(len(x.names))
		x.names = append(x.names, pack)
	}
	k.idxSize, k.size, k.sure = idxSize, size, sure
	x.known[pack] = k
	n := k.num
	for _, e := range es {
		if _, dup := x.have[e.ref]; !dup {
			x.have[e.ref] = packLoc{pack: n, off: e.off, n: e.n}
		}
	}
	return nil
}

// damagedIndexes are the packs whose index the last load found damaged.
func (x *packIndex) damagedIndexes() map[ID]error {
	x.mu.Lock()
	defer x.mu.Unlock()
	return maps.Clone(x.damaged)
}

// state says whether object id is stored or being packed (then up is the
// pack it goes into).
func (x *packIndex) state(id ref) (known bool, up *packUpload) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if _, ok := x.have[id]; ok {
		return true, nil
	}
	up, ok := x.pending[id]
	return ok, up
}

// unpend forgets that the objects es are going into up, once it is stored
// or given up.
func (x *packIndex) unpend(es []packEntry, up *packUpload) {
	x.mu.Lock()
	defer x.mu.Unlock()
	for _, e := range es {
		if x.pending[e.ref] == up {
			delete(x.pending, e.ref)
		}
	}
}

// empty reports whether no pack is known (none read yet).
func (x *packIndex) empty() bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	return len(x.names) == 0
}

// lookup finds object id.
func (x *packIndex) lookup(id ref) (ID, packLoc, bool) {
	x.mu.Lock()
	defer x.mu.Unlock()
	l, ok := x.have[id]
	if !ok {
		return ID{}, l, false
	}
	return x.names[l.pack], l, true
}

// loadPacks brings the pack index up to date with the backend: it reads
// the indexes of packs it does not know (from merged indexes where they
// match). When a known pack is gone or its index changed (a GC or a check
// here or on another host), it forgets everything and reads every index
// again: the map keeps one location per object, and an object of the
// gone pack may live in another known pack too. Entries of an index whose
// pack is missing (a writer killed between the two puts) are not taken.
func (r *Repository) loadPacks(ctx context.Context) error {
	if r.cfg.PackSize == 0 {
		return nil // format 1: no packs, nothing to list
	}
	x := r.packs
	x.loadMu.Lock()
	defer x.loadMu.Unlock()
	x.mu.Lock()
	known := maps.Clone(x.known)
	x.mu.Unlock()
	unchanged := func(id ID, idxSize int64) bool { k, ok := known[id]; return ok && k.idxSize == idxSize }
	found, err := r.scanPacks(ctx, unchanged, true)
	if err != nil {
		return err
	}
	if len(known) == 0 {
		r.cache.keepObjects(cachePackDir, func(id ID) bool { p := found[id]; return p != nil && p.indexed })
	}
	for id := range known {
		if p := found[id]; p == nil || !p.indexed || p.size < 0 || !unchanged(id, p.idxSize) {
			if found, err = r.scanPacks(ctx, nil, true); err != nil {
				return err
			}
			clear(known)
			x.reset()
			break
		}
	}
	if err := r.addPacks(found, unchanged, true); err != nil {
		return err
	}
	x.listed(r.now())
	r.savePackSet()
	return nil
}

// loadOwnPacks forgets the pack index and loads it again from every
// pack's own index (none from merged indexes), which it returns: what
// check and GC judge by.
func (r *Repository) loadOwnPacks(ctx context.Context) (map[ID]*packInfo, error) {
	if r.cfg.PackSize == 0 {
		return nil, nil // format 1
	}
	x := r.packs
	x.loadMu.Lock()
	defer x.loadMu.Unlock()
	found, err := r.scanPacks(ctx, nil, false)
	if err != nil {
		return nil, err
	}
	x.reset()
	if err := r.addPacks(found, func(ID, int64) bool { return false }, true); err != nil {
		return nil, err
	}
	x.listed(r.now())
	return found, nil
}

// addPacks takes into the pack index the packs of found that are not
// unchanged and whose index and pack exist (sure: a listing showed them),
// and records which indexes are damaged.
func (r *Repository) addPacks(found map[ID]*packInfo, unchanged func(ID, int64) bool, sure bool) error {
	x := r.packs
	damaged := map[ID]error{}
	merged := false
	defer func() { x.mu.Lock(); x.damaged, x.merged = damaged, x.merged || merged; x.mu.Unlock() }()
	for _, id := range slices.SortedFunc(maps.Keys(found), compareIDs) {
		p := found[id]
		if unchanged(id, p.idxSize) || !p.indexed || p.size < 0 {
			continue
		}
		if p.indexErr != nil {
			r.log.Warn("pack index damaged: its chunks are not used", "pack", packKey(id), "err", p.indexErr)
			damaged[id] = p.indexErr
			continue
		}
		if err := x.addPack(id, p.size, p.entries, p.idxSize, sure); err != nil {
			return err
		}
		merged = merged || p.fromMerged
	}
	return nil
}

// chunkSet lists the chunks r holds (any that could be whole).
func (r *Repository) chunkSet(ctx context.Context) (map[ID]bool, error) {
	sizes, err := r.chunkSizes(ctx)
	have := map[ID]bool{}
	for id, n := range sizes {
		have[id] = n > headerLen
	}
	return have, err
}

// chunkSizes lists the chunks r holds and their sizes: the chunk objects
// in one listing, and the chunks of every pack the index knows after
// bringing it up to date.
func (r *Repository) chunkSizes(ctx context.Context) (map[ID]int64, error) {
	if err := r.loadPacks(ctx); err != nil {
		return nil, err
	}
	return r.heldChunks(ctx)
}

// heldChunks is chunkSizes by the pack index as loaded (check, which has
// just loaded it from every own index).
func (r *Repository) heldChunks(ctx context.Context) (map[ID]int64, error) {
	out := map[ID]int64{}
	err := r.b.List(ctx, "chunks/", func(fi ObjectInfo) error {
		if id, err := keyID(fi.Key); err == nil {
			out[id] = fi.Size
		}
		return nil
	})
	if err != nil {
		return out, err
	}
	r.packs.mu.Lock()
	for o, l := range r.packs.have {
		if o.typ == typeChunk {
			out[o.id] = int64(l.n)
		}
	}
	r.packs.mu.Unlock()
	return out, nil
}

// chunkEnvelope loads the envelope of chunk id.
func (r *Repository) chunkEnvelope(ctx context.Context, id ID) ([]byte, error) {
	return r.packedEnvelope(ctx, ref{typeChunk, id})
}

// packedEnvelope loads the envelope of a chunk or page: from its pack, or
// its own object (format 1). One the index does not know, or whose pack
// is gone (a GC here or elsewhere repacked it), is looked for again after
// reloading the index; one found nowhere then is missing (ErrMissing, an
// integrity error, besides ErrNotFound): a point references it.
func (r *Repository) packedEnvelope(ctx context.Context, o ref) ([]byte, error) {
	pack, l, ok := r.packs.lookup(o)
	if ok {
		obj, err := r.packRead(ctx, o, pack, l)
		if !errors.Is(err, ErrNotFound) {
			return obj, err
		}
	}
	obj, err := r.reloadedEnvelope(ctx, o)
	if errors.Is(err, ErrNotFound) {
		return nil, fmt.Errorf("%w: %w", ErrMissing, err)
	}
	return obj, err
}

// reloadedEnvelope looks for o again after reloading the pack index.
func (r *Repository) reloadedEnvelope(ctx context.Context, o ref) ([]byte, error) {
	key := objectKey(o.typ, o.id)
	if r.cfg.PackSize > 0 {
		if err := r.loadPacks(ctx); err != nil {
			return nil, fmt.Errorf("load %s: %w", key, err)
		}
		if pack, l, ok := r.packs.lookup(o); ok {
			return r.packRead(ctx, o, pack, l)
		}
		// Merged indexes only speed loading up: before o is called
		// missing, every pack's own index has its say.
		if r.packs.fromMerged() {
			if _, err := r.loadOwnPacks(ctx); err != nil {
				return nil, fmt.Errorf("load %s: %w", key, err)
			}
			if pack, l, ok := r.packs.lookup(o); ok {
				return r.packRead(ctx, o, pack, l)
			}
		}
	}
	return r.getEnvelope(ctx, o.typ, key)
}

// Runs of chunks read with one request: their envelopes lie in one pack,
// in the order read, at most runGap bytes apart (read and thrown away),
// and the run spans at most runSpan bytes.
const (
	runGap  = 512 << 10
	runSpan = 8 << 20
)

// packRuns groups parts into runs of chunks that one ranged read of a
// pack returns, each run in pack order (writers store chunks in the order
// they finish, not in disk order); a chunk whose pack the index does not
// know (yet, or format 1) is a run of its own.
func (r *Repository) packRuns(parts []part) [][]part {
	type located struct {
		pt   part
		pack ID
		l    packLoc
		ok   bool
	}
	ls := make([]located, len(parts))
	for i, pt := range parts {
		p, l, ok := r.packs.lookup(ref{typeChunk, pt.id})
		ls[i] = located{pt, p, l, ok}
	}
	slices.SortStableFunc(ls, func(a, b located) int {
		return cmp.Or(compareIDs(a.pack, b.pack), cmp.Compare(a.l.off, b.l.off))
	})
	var runs [][]part
	var start, end uint32
	for i, x := range ls {
		if n := len(runs); x.ok && i > 0 && ls[i-1].ok && x.pack == ls[i-1].pack &&
			x.l.off >= end && x.l.off-end <= runGap && x.l.off+x.l.n-start <= runSpan {
			runs[n-1] = append(runs[n-1], x.pt)
			end = x.l.off + x.l.n
			continue
		}
		runs = append(runs, []part{x.pt})
		start, end = x.l.off, x.l.off+x.l.n
	}
	return runs
}

// readPacked reads the chunks of run (packRuns) with one ranged read and
// gives each one's plaintext, checked against its ID, to each in run
// order; false when the read, a check or each fails (the caller then
// reads the chunks one by one, which names what is damaged).
func (r *Repository) readPacked(ctx context.Context, run []part, each func(i int, plain []byte) error) bool {
	var pack ID
	locs := make([]packLoc, len(run))
	for i, pt := range run {
		// Looked up again: the index may have been reloaded since.
		p, l, ok := r.packs.lookup(ref{typeChunk, pt.id})
		if !ok || int64(l.n) > maxObject(typeChunk, r.cfg.ChunkSize) ||
			(i > 0 && (p != pack || l.off < locs[i-1].off+locs[i-1].n || l.off+l.n-locs[0].off > runSpan)) {
			return false
		}
		pack, locs[i] = p, l
	}
	start, end := int64(locs[0].off), int64(locs[len(locs)-1].off+locs[len(locs)-1].n)
	obj, err := r.b.Get(ctx, packKey(pack), start, end-start)
	if err != nil || int64(len(obj)) != end-start {
		return false
	}
	for i, l := range locs {
		at := int64(l.off) - start
		plain, err := r.openChecked(typeChunk, run[i].id, obj[at:at+int64(l.n)])
		if err != nil || each(i, plain) != nil {
			return false
		}
	}
	return true
}

// verifyChunks reads back the chunks parts name and checks that each
// hashes to its ID, with a request per run of neighbours in a pack and
// readRuns runs at once, keeping no plaintext; it returns the chunks that
// failed, with why.
func (r *Repository) verifyChunks(ctx context.Context, parts []part) (map[ID]error, error) {
	var mu sync.Mutex
	bad := map[ID]error{}
	runs := r.packRuns(parts)
	err := inParallel(ctx, readRuns, len(runs), func(i int) error {
		run := runs[i]
		if len(run) > 1 && r.readPacked(ctx, run, func(int, []byte) error { return nil }) {
			return nil
		}
		for _, pt := range run {
			if _, err := r.getObject(ctx, typeChunk, pt.id); err != nil {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				mu.Lock()
				bad[pt.id] = err
				mu.Unlock()
			}
		}
		return nil
	})
	return bad, err
}

// packRead reads the envelope of o at l in pack.
func (r *Repository) packRead(ctx context.Context, o ref, pack ID, l packLoc) ([]byte, error) {
	key := objectKey(o.typ, o.id)
	if int64(l.n) > maxObject(o.typ, r.cfg.ChunkSize) {
		return nil, fmt.Errorf("%s in %s: %w", key, packKey(pack), corrupt("%d bytes, more than its type allows", l.n))
	}
	obj, err := r.b.Get(ctx, packKey(pack), int64(l.off), int64(l.n))
	if err != nil {
		return nil, fmt.Errorf("load %s from %s: %w", key, packKey(pack), err)
	}
	if len(obj) != int(l.n) {
		return nil, fmt.Errorf("%s in %s: %w", key, packKey(pack), corrupt("read %d bytes of %d", len(obj), l.n))
	}
	return obj, nil
}

// packUpload is a pack being filled or stored; done is closed when it is
// stored (err nil) or has failed.
type packUpload struct {
	pk   *packer
	done chan struct{}
	err  error
}

// packer fills packs with one disk's chunks and stores each when full.
type packer struct {
	r *Repository
	// stored credits n bytes and k chunks (pages not counted) stored to
	// the packer's owner.
	stored func(n int64, k int)

	mu      sync.Mutex
	buf     []byte
	entries []packEntry
	cur     *packUpload
	err     error
	wg      sync.WaitGroup // uploads in flight
	// depth bounds the packs filled or being stored at once, so a disk
	// holds at most depth packs in memory; room signals one was stored.
	depth, packs int
	room         *sync.Cond
}

func (r *Repository) newPacker(stored func(int64, int)) *packer {
	if stored == nil {
		stored = func(int64, int) {}
	}
	pk := &packer{r: r, stored: stored, depth: packUploads(r.b.Properties())}
	pk.room = sync.NewCond(&pk.mu)
	return pk
}

// add packs object id, whose envelope put appends to the pack, unless the
// repository has it or it is being packed: then it returns the upload to
// wait for (nil when stored). queued says the object was taken.
func (pk *packer) add(ctx context.Context, id ref, put func(pack []byte) []byte) (queued bool, wait *packUpload, err error) {
	x := pk.r.packs
	pk.mu.Lock()
	for pk.cur == nil && pk.packs >= pk.depth && pk.err == nil {
		pk.room.Wait()
	}
	if err := pk.err; err != nil {
		pk.mu.Unlock()
		return false, nil, err
	}
	x.mu.Lock()
	if _, ok := x.have[id]; ok {
		x.mu.Unlock()
		pk.mu.Unlock()
		return false, nil, nil
	}
	if up, ok := x.pending[id]; ok {
		x.mu.Unlock()
		pk.mu.Unlock()
		return false, up, nil
	}
	if pk.cur == nil {
		pk.cur = &packUpload{pk: pk, done: make(chan struct{})}
		pk.buf = pk.r.packBuf()
		pk.packs++
	}
	x.pending[id] = pk.cur
	x.mu.Unlock()
	off := len(pk.buf)
	pk.buf = put(pk.buf)
	pk.entries = append(pk.entries, packEntry{ref: id, off: uint32(off), n: uint32(len(pk.buf) - off)})
	var full func() error
	if len(pk.buf) >= pk.r.cfg.PackSize || len(pk.entries) >= maxPackEntries {
		full = pk.detach(ctx)
	}
	pk.mu.Unlock()
	if full != nil {
		err = full()
	}
	return true, nil, err
}

// packBufs holds buffers packs are filled in, of any capacity.
var packBufs sync.Pool

// packBuf is an empty buffer that holds a whole pack: its size, plus the
// chunk that fills it past that.
func (r *Repository) packBuf() []byte {
	need := r.cfg.PackSize + int(maxObject(typeChunk, r.cfg.ChunkSize))
	if b, ok := packBufs.Get().(*[]byte); ok && cap(*b) >= need {
		return (*b)[:0]
	}
	return make([]byte, 0, need)
}

// sealed appends the envelope obj.
func sealed(obj []byte) func([]byte) []byte {
	return func(pack []byte) []byte { return append(pack, obj...) }
}

// detach takes the pack being filled; the function it returns stores it.
// pk.mu is held.
func (pk *packer) detach(ctx context.Context) func() error {
	buf, es, up := pk.buf, pk.entries, pk.cur
	pk.buf, pk.entries, pk.cur = nil, nil, nil
	pk.wg.Add(1)
	return func() error {
		defer pk.wg.Done()
		err := pk.store(ctx, buf, es, up)
		buf = buf[:0]
		packBufs.Put(&buf)
		return err
	}
}

// store writes a pack, then its index, then makes its chunks known.
func (pk *packer) store(ctx context.Context, buf []byte, es []packEntry, up *packUpload) error {
	r, x := pk.r, pk.r.packs
	var pack ID
	if _, err := rand.Read(pack[:]); err != nil {
		panic("virtkeep: no randomness: " + err.Error())
	}
	r.packSem <- struct{}{}
	err := r.b.Put(ctx, packKey(pack), buf)
	plainIdx := encodePackIndex(pack, es)
	idx := r.codec.seal(typePackIndex, plainIdx)
	if err == nil {
		err = r.b.Put(ctx, packIndexKey(pack), idx)
	}
	<-r.packSem
	if err == nil {
		err = x.addPack(pack, int64(len(buf)), es, int64(len(idx)), true)
	}
	if err == nil {
		r.cache.putObject(cachePackDir, pack, idx)
		r.unmerged.add(mergedRecord{pack: pack, packSize: int64(len(buf)), idxSize: int64(len(idx)), plain: plainIdx})
	}
	if err != nil {
		err = fmt.Errorf("store %s: %w", packKey(pack), err)
	} else {
		chunks := 0
		for _, e := range es {
			if e.typ == typeChunk {
				chunks++
			}
		}
		pk.stored(int64(len(buf)+len(idx)), chunks)
	}
	x.unpend(es, up)
	up.err = err
	close(up.done)
	pk.mu.Lock()
	pk.err = cmp.Or(pk.err, err)
	pk.packs--
	pk.room.Broadcast()
	pk.mu.Unlock()
	return err
}

// flush stores the pack being filled and waits for every upload.
func (pk *packer) flush(ctx context.Context) error {
	pk.mu.Lock()
	var last func() error
	if len(pk.entries) > 0 {
		last = pk.detach(ctx)
	}
	pk.mu.Unlock()
	if last != nil {
		last()
	}
	pk.wg.Wait()
	pk.mu.Lock()
	defer pk.mu.Unlock()
	return pk.err
}

// discard drops the pack being filled (an aborted point): whoever waits
// for its chunks is told they were not stored.
func (pk *packer) discard() {
	pk.wg.Wait()
	pk.mu.Lock()
	es, up := pk.entries, pk.cur
	pk.buf, pk.entries, pk.cur = nil, nil, nil
	pk.err = cmp.Or(pk.err, errors.New("point aborted"))
	if up != nil {
		pk.packs--
	}
	pk.room.Broadcast()
	pk.mu.Unlock()
	if up == nil {
		return
	}
	pk.r.packs.unpend(es, up)
	up.err = errors.New("its point was aborted")
	close(up.done)
}

// wait returns once up is stored or failed, storing it first if it is
// still being filled.
func (up *packUpload) wait(ctx context.Context) error {
	pk := up.pk
	pk.mu.Lock()
	var store func() error
	if pk.cur == up {
		store = pk.detach(ctx)
	}
	pk.mu.Unlock()
	if store != nil {
		store()
	}
	<-up.done
	return up.err
}

// packUploads is how many packs a disk has filled or in flight at once
// (and each repository stores at once): more where each put waits for
// network round trips (BenchmarkLatency).
func packUploads(p Properties) int {
	if p.Local {
		return 3
	}
	return 6
}

// dropObject removes chunk or page o from the repository: its object, or
// its entry in its pack's index (the bytes stay in the pack until GC
// repacks it).
func (r *Repository) dropObject(ctx context.Context, o ref) error {
	pack, _, ok := r.packs.lookup(o)
	if !ok {
		return r.b.Delete(ctx, objectKey(o.typ, o.id))
	}
	fi, err := r.b.Stat(ctx, packKey(pack))
	if err != nil {
		return err
	}
	plain, err := r.openAt(ctx, typePackIndex, packIndexKey(pack))
	if err != nil {
		return err
	}
	es, err := decodePackIndex(plain, pack, fi.Size, maxObject(typeChunk, r.cfg.ChunkSize))
	if err != nil {
		return err
	}
	es = slices.DeleteFunc(es, func(e packEntry) bool { return e.ref == o })
	r.cache.dropObject(cachePackDir, pack)
	if err := r.b.Put(ctx, packIndexKey(pack), r.codec.seal(typePackIndex, encodePackIndex(pack, es))); err != nil {
		return err
	}
	r.packs.mu.Lock()
	delete(r.packs.have, o)
	r.packs.mu.Unlock()
	return nil
}

// ChunkObject says where chunk id's envelope is stored: the key of its
// object, and its offset and length there (a pack, or the chunk's own
// object at offset 0). For tools and tests that inspect the backend.
func (r *Repository) ChunkObject(ctx context.Context, id ID) (key string, off, n int64, err error) {
	if err := r.loadPacks(ctx); err != nil {
		return "", 0, 0, err
	}
	if pack, l, ok := r.packs.lookup(ref{typeChunk, id}); ok {
		return packKey(pack), int64(l.off), int64(l.n), nil
	}
	key = objectKey(typeChunk, id)
	fi, err := r.b.Stat(ctx, key)
	if err != nil {
		return "", 0, 0, err
	}
	return key, 0, fi.Size, nil
}
