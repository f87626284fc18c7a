package target

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"
)

// A writer that knows the repository's packs from the metadata cache's
// pack set need not list every pack (two listings that grow with the
// repository) before each point. What the cached set names may be gone
// since (a GC or check on another host): a pack is confirmed, by a stat
// of it and of its index at the sizes the set names, before a point relies
// on a chunk in it, and under the writer's shared lock no GC runs after
// that. Past confirmTries stats, or when a pack is not as named, the
// writer lists every pack instead, which forgets what is gone; the chunk
// is then stored again if no pack holds it.

const (
	// packTrust is how old a cached pack set a writer starts from: older,
	// it lists (so that other hosts' packs serve deduplication).
	packTrust = 6 * time.Hour
	// confirmTries is how many packs one by one, at most, before a
	// listing of all is cheaper.
	confirmTries = 32
)

// listed marks every known pack sure: a listing just showed each.
func (x *packIndex) listed(now time.Time) {
	x.mu.Lock()
	x.listedAt = now
	x.mu.Unlock()
	x.markAll(true)
}

// doubt marks every known pack not sure.
func (x *packIndex) doubt() { x.markAll(false) }

// markAll sets every known pack's sure, and restarts the count of stats.
func (x *packIndex) markAll(sure bool) {
	x.mu.Lock()
	defer x.mu.Unlock()
	for id, k := range x.known {
		k.sure = sure
		x.known[id] = k
	}
	x.stats = 0
}

// unsure returns what the pack set said of pack when it is not sure.
func (x *packIndex) unsure(pack ID) (k knownPack, ok bool) {
	x.mu.Lock()
	defer x.mu.Unlock()
	k, ok = x.known[pack]
	return k, ok && !k.sure
}

// confirmed marks pack sure, confirmed by a stat.
func (x *packIndex) confirmed(pack ID) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if k, ok := x.known[pack]; ok {
		k.sure = true
		x.known[pack] = k
	}
	x.stats++
}

func (x *packIndex) statCount() int {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.stats
}

// savePackSet writes the known packs as the cache's pack set, dated by
// the listing they came from (packs this process stored since are there).
func (r *Repository) savePackSet() {
	if r.cache.dir == "" {
		return
	}
	x := r.packs
	x.mu.Lock()
	if x.listedAt.IsZero() {
		x.mu.Unlock()
		return
	}
	ps := packSet{Listed: x.listedAt.UTC(), Packs: make(map[string][2]int64, len(x.known))}
	for id, k := range x.known {
		ps.Packs[id.String()] = [2]int64{k.size, k.idxSize}
	}
	x.mu.Unlock()
	r.cache.savePacks(&ps)
}

// saveFoundPacks writes the packs of found (a scan that listed them all)
// whose index was read sound as the cache's pack set.
func (r *Repository) saveFoundPacks(found map[ID]*packInfo) {
	if r.cache.dir == "" {
		return
	}
	ps := packSet{Listed: r.now().UTC(), Packs: make(map[string][2]int64, len(found))}
	for id, p := range found {
		if p.indexed && p.size >= 0 && p.indexErr == nil {
			ps.Packs[id.String()] = [2]int64{p.size, p.idxSize}
		}
	}
	r.cache.savePacks(&ps)
}

// loadPacksCached is loadPacks for a writer starting a point: with no
// pack known yet, it starts from the cache's pack set when that is
// younger than packTrust (their indexes read as any load reads them: the
// cache's, the merged ones, their own); with
// packs known, it lists nothing. Either way no known pack is sure: what
// was true before this writer's lock may not be now, so stored confirms
// each before the point relies on it.
func (r *Repository) loadPacksCached(ctx context.Context) error {
	if r.cfg.PackSize == 0 {
		return nil
	}
	if !r.packs.empty() {
		r.packs.doubt()
		return nil
	}
	ps, ok := r.cache.packs()
	if age := r.now().Sub(ps.Listed); !ok || age < 0 || age > packTrust {
		return r.loadPacks(ctx)
	}
	found := make(map[ID]*packInfo, len(ps.Packs))
	for h, sz := range ps.Packs {
		id, err := ParseID(h)
		if err != nil {
			return r.loadPacks(ctx)
		}
		found[id] = &packInfo{id: id, size: sz[0], indexed: true, idxSize: sz[1]}
	}
	// Their indexes as a load reads them: cached, merged, then own.
	if err := r.readPackIndexes(ctx, slices.Collect(maps.Values(found)), true); err != nil {
		return err
	}
	x := r.packs
	x.loadMu.Lock()
	defer x.loadMu.Unlock()
	if !x.empty() {
		return nil // loaded meanwhile
	}
	if err := r.addPacks(found, func(ID, int64) bool { return false }, false); err != nil {
		return err
	}
	x.mu.Lock()
	x.listedAt = ps.Listed
	x.mu.Unlock()
	return nil
}

// stored is packs.state for a writer about to rely on o: a stored o in a
// pack not sure yet has its pack confirmed first, and is stored only if
// it still is.
func (r *Repository) stored(ctx context.Context, o ref) (known bool, up *packUpload, err error) {
	known, up = r.packs.state(o)
	if !known || up != nil {
		return known, up, nil
	}
	pack, _, ok := r.packs.lookup(o)
	if !ok {
		return false, nil, nil
	}
	if k, unsure := r.packs.unsure(pack); unsure {
		if err := r.confirmPack(ctx, pack, k); err != nil {
			return false, nil, err
		}
		known, up = r.packs.state(o)
	}
	return known, up, nil
}

// confirmPack checks that pack, known from the cached pack set as k, is
// stored as it says (a stat of the pack and of its index); after
// confirmTries such checks, or when it is not, it lists every pack.
func (r *Repository) confirmPack(ctx context.Context, pack ID, k knownPack) error {
	if r.packs.statCount() < confirmTries {
		pi, err := r.b.Stat(ctx, packKey(pack))
		ii, ierr := r.b.Stat(ctx, packIndexKey(pack))
		err = cmp.Or(err, ierr)
		if err == nil && pi.Size == k.size && ii.Size == k.idxSize {
			r.packs.confirmed(pack)
			return nil
		}
		if err != nil && !errors.Is(err, ErrNotFound) {
			return fmt.Errorf("confirm %s: %w", packKey(pack), err)
		}
		r.log.Info("a pack the cached pack set names changed: listing every pack", "pack", packKey(pack))
	}
	return r.loadPacks(ctx)
}
