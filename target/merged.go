package target

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
)

// Merged pack indexes (docs/FORMAT.md, "Merged pack indexes"): an object
// under merged/ holds the indexes of many packs, so that a host that
// knows none of them (a new host, a restore after a disaster, a lost
// cache) reads a few objects instead of one per pack. They only speed
// loading up: a record is taken only when the listing shows its pack and
// the pack's own index at the sizes it names, else the own index is read.
// GC and check read own indexes only, so a merged object never decides
// what is deleted or what check calls sound. Older virtkeeps ignore
// merged/.

const (
	typeMerged   = 8
	mergedPrefix = "merged/"
	// maxMergedPlain bounds a merged object's plaintext (about 115,000
	// entries: 3,500 full 8 MiB packs); writers start another beyond it.
	maxMergedPlain = 8 << 20
	// mergedHeadLen: pack ID, pack size, own index size, index length.
	mergedHeadLen = 32 + 8 + 8 + 4
	// mergedAfter is how many packs' own indexes a load must otherwise
	// read before it reads the merged objects, and how many read one by
	// one a writer gathers before it writes them as one.
	mergedAfter = 16
	// mergedLoaders is how many merged objects larger than mergedSmall
	// are read at once; smaller ones are read packIndexLoaders at once.
	mergedLoaders = 4
	mergedSmall   = 1 << 20
)

func mergedKey(id ID) string { return mergedPrefix + id.String() }

// mergedRecord is one pack's index inside a merged object: plain is the
// plaintext of its own index, which had idxSize bytes stored; the pack
// had packSize.
type mergedRecord struct {
	pack              ID
	packSize, idxSize int64
	plain             []byte
}

// encodeMerged is a merged object's plaintext: the SHA-256 of what
// follows (bit rot in an unencrypted repository is found, not followed),
// then the records.
func encodeMerged(recs []mergedRecord) []byte {
	out := make([]byte, sha256.Size)
	for _, rec := range recs {
		out = append(out, rec.pack[:]...)
		out = binary.BigEndian.AppendUint64(out, uint64(rec.packSize))
		out = binary.BigEndian.AppendUint64(out, uint64(rec.idxSize))
		out = binary.BigEndian.AppendUint32(out, uint32(len(rec.plain)))
		out = append(out, rec.plain...)
	}
	sum := sha256.Sum256(out[sha256.Size:])
	copy(out, sum[:])
	return out
}

// decodeMerged checks a merged object's checksum and splits it into its
// records; each record's index is decoded (and checked against its pack)
// when used.
func decodeMerged(plain []byte, idxMax int64) ([]mergedRecord, error) {
	if len(plain) < sha256.Size {
		return nil, corrupt("merged index of %d bytes", len(plain))
	}
	if sha256.Sum256(plain[sha256.Size:]) != [sha256.Size]byte(plain[:sha256.Size]) {
		return nil, corrupt("merged index does not match its checksum")
	}
	var recs []mergedRecord
	for p := plain[sha256.Size:]; len(p) > 0; {
		if len(p) < mergedHeadLen {
			return nil, corrupt("merged index: %d bytes left, shorter than a record", len(p))
		}
		rec := mergedRecord{pack: ID(p[:32]), packSize: int64(binary.BigEndian.Uint64(p[32:])), idxSize: int64(binary.BigEndian.Uint64(p[40:]))}
		n := int64(binary.BigEndian.Uint32(p[48:]))
		p = p[mergedHeadLen:]
		switch {
		case n > int64(len(p)) || n < 32:
			return nil, corrupt("merged index: record of pack %s holds %d bytes of %d left", rec.pack, n, len(p))
		case rec.packSize <= 0 || rec.packSize > maxPackSize<<1:
			return nil, corrupt("merged index: pack %s of %d bytes", rec.pack, rec.packSize)
		case rec.idxSize <= headerLen || rec.idxSize > idxMax:
			return nil, corrupt("merged index: index of pack %s of %d bytes", rec.pack, rec.idxSize)
		}
		rec.plain, p = p[:n], p[n:]
		recs = append(recs, rec)
	}
	return recs, nil
}

// record is p's index as a merged record.
func (p *packInfo) record() mergedRecord {
	return mergedRecord{pack: p.id, packSize: p.size, idxSize: p.idxSize, plain: encodePackIndex(p.id, p.entries)}
}

// fromMerged takes the indexes of ps from the merged objects where a
// record matches what the listing shows, and returns the packs left.
// A merged object that cannot be read or decoded is skipped (logged):
// the own indexes remain.
func (r *Repository) fromMerged(ctx context.Context, ps []*packInfo) ([]*packInfo, error) {
	listed, err := r.listMerged(ctx)
	if err != nil {
		return nil, err
	}
	names := make(map[string]bool, len(listed))
	for _, fi := range listed {
		names[fi.Key] = true
	}
	r.cache.keepObjects(cacheMergedDir, func(id ID) bool { return names[mergedKey(id)] })
	if len(listed) == 0 {
		return ps, nil
	}
	want := make(map[ID]*packInfo, len(ps))
	for _, p := range ps {
		want[p.id] = p
	}
	var mu sync.Mutex
	chunkMax := maxObject(typeChunk, r.cfg.ChunkSize)
	take := func(fi ObjectInfo) error {
		recs, err := r.readMerged(ctx, fi)
		if err != nil {
			if errors.Is(err, ErrCorrupt) || errors.Is(err, ErrNotFound) {
				r.log.Warn("merged pack index not used", "object", fi.Key, "err", err)
				return nil
			}
			return err
		}
		mu.Lock()
		defer mu.Unlock()
		for _, rec := range recs {
			p := want[rec.pack]
			if p == nil || p.size != rec.packSize || p.idxSize != rec.idxSize {
				continue
			}
			if es, err := decodePackIndex(rec.plain, p.id, p.size, chunkMax); err == nil {
				p.entries, p.fromMerged = es, true
				delete(want, rec.pack)
			}
		}
		return nil
	}
	// Small ones (a writer's) many at once, large ones (GC's) few: memory
	// stays bounded either way.
	var small, large []ObjectInfo
	for _, fi := range listed {
		if fi.Size <= mergedSmall {
			small = append(small, fi)
		} else {
			large = append(large, fi)
		}
	}
	if err := inParallel(ctx, packIndexLoaders, len(small), func(i int) error { return take(small[i]) }); err != nil {
		return nil, err
	}
	if err := inParallel(ctx, mergedLoaders, len(large), func(i int) error { return take(large[i]) }); err != nil {
		return nil, err
	}
	left := ps[:0:0]
	for _, p := range ps {
		if want[p.id] != nil {
			left = append(left, p)
		}
	}
	return left, nil
}

// readMerged reads and decodes the merged object fi lists: the metadata
// cache's copy when it holds a sound one of the listed size, else the
// backend's (then cached).
func (r *Repository) readMerged(ctx context.Context, fi ObjectInfo) ([]mergedRecord, error) {
	id, _ := keyID(fi.Key)
	var recs []mergedRecord
	decode := func(obj []byte) error {
		plain, err := r.codec.open(typeMerged, obj)
		if err == nil {
			recs, err = decodeMerged(plain, maxObject(typePackIndex, r.cfg.ChunkSize))
		}
		if err != nil {
			return fmt.Errorf("%s: %w", fi.Key, err)
		}
		return nil
	}
	if r.cachedObject(cacheMergedDir, id, typeMerged, fi.Size, decode) {
		return recs, nil
	}
	return recs, r.fetchObject(ctx, cacheMergedDir, id, fi.Key, typeMerged, fi.Size, decode)
}

// putMerged stores recs as merged objects of at most maxMergedPlain
// bytes each and returns their keys.
func (r *Repository) putMerged(ctx context.Context, recs []mergedRecord) ([]string, error) {
	var keys []string
	for len(recs) > 0 {
		n, size := 0, sha256.Size
		for n < len(recs) && (n == 0 || size+mergedHeadLen+len(recs[n].plain) <= maxMergedPlain) {
			size += mergedHeadLen + len(recs[n].plain)
			n++
		}
		var id ID
		if _, err := rand.Read(id[:]); err != nil {
			panic("virtkeep: no randomness: " + err.Error())
		}
		if err := r.b.Put(ctx, mergedKey(id), r.codec.seal(typeMerged, encodeMerged(recs[:n]))); err != nil {
			return keys, fmt.Errorf("store %s: %w", mergedKey(id), err)
		}
		keys = append(keys, mergedKey(id))
		recs = recs[n:]
	}
	return keys, nil
}

// unmerged gathers the packs whose own index this process read or wrote
// and no merged object it knows covers: a writer (which holds the lock)
// stores them as one merged object once there are mergedAfter.
type unmerged struct {
	mu   sync.Mutex
	recs []mergedRecord
}

// maxUnmerged bounds the records gathered (a process that reads many
// packs and writes nothing).
const maxUnmerged = 1 << 14

func (u *unmerged) add(rec mergedRecord) {
	u.mu.Lock()
	if len(u.recs) < maxUnmerged {
		u.recs = append(u.recs, rec)
	}
	u.mu.Unlock()
}

// flushMerged stores the gathered records as a merged object when there
// are enough; failing to is only logged (they are an accelerator, and a
// target may refuse writes here).
func (r *Repository) flushMerged(ctx context.Context) {
	u := &r.unmerged
	u.mu.Lock()
	recs := u.recs
	if len(recs) < mergedAfter {
		u.mu.Unlock()
		return
	}
	u.recs = nil
	u.mu.Unlock()
	if _, err := r.putMerged(ctx, recs); err != nil {
		r.log.Warn("merged pack index not written", "packs", len(recs), "err", err)
	}
}

// listMerged lists the merged objects.
func (r *Repository) listMerged(ctx context.Context) ([]ObjectInfo, error) {
	var listed []ObjectInfo
	err := r.b.List(ctx, mergedPrefix, func(fi ObjectInfo) error {
		if _, err := keyID(fi.Key); err == nil {
			listed = append(listed, fi)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list merged pack indexes: %w", err)
	}
	return listed, nil
}

// ownRecords are the records of every pack in found whose own index was
// read sound, by pack ID.
func ownRecords(found map[ID]*packInfo) []mergedRecord {
	var recs []mergedRecord
	for _, id := range slices.SortedFunc(maps.Keys(found), compareIDs) {
		if p := found[id]; p.indexed && p.size >= 0 && p.indexErr == nil {
			recs = append(recs, p.record())
		}
	}
	return recs
}

// consolidateMerged replaces every merged object by new ones of the own
// indexes in found (read afresh by GC, which holds the exclusive lock, so
// no writer adds a pack meanwhile): the new ones first, then, the lock
// confirmed, the old ones. With fewer than mergedAfter packs it only
// removes the old ones.
func (r *Repository) consolidateMerged(ctx context.Context, found map[ID]*packInfo, del *deleter) (written int, err error) {
	old, err := r.listMerged(ctx)
	if err != nil {
		return 0, err
	}
	if recs := ownRecords(found); len(recs) >= mergedAfter && !del.dryRun {
		keys, err := r.putMerged(ctx, recs)
		if err != nil {
			return 0, err
		}
		written = len(keys)
		r.unmerged.mu.Lock()
		r.unmerged.recs = nil
		r.unmerged.mu.Unlock()
	}
	if len(old) > 0 {
		if err := del.check(ctx); err != nil {
			return written, err
		}
	}
	for _, fi := range old {
		if err := del.delete(ctx, fi.Key); err != nil && !errors.Is(err, ErrNotFound) {
			return written, err
		}
	}
	return written, nil
}

// checkMerged reads every merged object and compares each record whose
// pack and own index the listing shows at its sizes with that own index
// (own, as loadOwnPacks read it): a merged object that does not decode,
// or a record that differs, is a problem (readers would take it; the next
// GC replaces every merged object). Stale records are not.
func (r *Repository) checkMerged(ctx context.Context, own map[ID]*packInfo) (map[string]error, error) {
	listed, err := r.listMerged(ctx)
	if err != nil {
		return nil, err
	}
	bad := map[string]error{}
	for _, fi := range listed {
		recs, err := r.readMerged(ctx, fi)
		if errors.Is(err, ErrNotFound) {
			continue // replaced meanwhile
		}
		if err != nil && !errors.Is(err, ErrCorrupt) {
			return nil, err
		}
		if err != nil {
			bad[fi.Key] = err
			continue
		}
		for _, rec := range recs {
			p := own[rec.pack]
			if p == nil || p.size != rec.packSize || p.idxSize != rec.idxSize || p.indexErr != nil || !p.indexed {
				continue
			}
			if !bytes.Equal(rec.plain, encodePackIndex(p.id, p.entries)) {
				bad[fi.Key] = corrupt("its record of %s differs from that pack's own index", packKey(p.id))
				break
			}
		}
	}
	return bad, nil
}
