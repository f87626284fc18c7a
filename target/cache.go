package target

import (
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// The metadata cache (OpenOptions.CacheDir) keeps on local disk what a
// repository's operations would otherwise read from the backend again and
// again: every point's manifest (without its saved domain definitions) in
// one file, and every pack's index as stored, a file per pack. An entry is
// used only for a key the backend lists now, at the size it had when it
// was cached, so the listing decides what exists and the cache only saves
// the reads: what it holds of a point or pack that is gone is dropped, and
// it never decides what is deleted. Pack indexes from it are opened and
// checked as if they came from the backend; a damaged entry is read again
// from the backend.
//
// Several processes may share a cache: files are replaced by rename, and
// each holds only what was true of the backend at some time, which the
// listing checks.

const (
	cachePointsFile = "points.json"
	cachePacksFile  = "packs.json"
	cachePackDir    = "packindex"
	cacheMergedDir  = "merged"
	// maxCachePoints bounds the points file read (about 1 KiB a point).
	maxCachePoints = 1 << 30
)

type metaCache struct {
	dir string // "" when there is no cache
	log *slog.Logger
	mu  sync.Mutex // one update of the points file at a time
}

// newMetaCache is the cache of repository id (hex, parseConfig checks)
// under root ("" none).
func newMetaCache(root, id string, log *slog.Logger) *metaCache {
	c := &metaCache{log: log}
	if root != "" {
		c.dir = filepath.Join(root, id)
	}
	return c
}

// cachedPoint is a point's manifest as cached: Size is the length of its
// stored object when it was read.
type cachedPoint struct {
	Size     int64     `json:"size"`
	Manifest *Manifest `json:"manifest"`
}

// pointsFile is the cached manifests by domain UUID, each domain's kept as
// raw JSON so that a backup's chain decodes only its own domain's; IDs
// names every cached point's stored size, domain and time, for comparing
// with a listing.
type pointsFile struct {
	Version int                        `json:"version"` // 2
	IDs     map[string]pointRef        `json:"ids"`
	Domains map[string]json.RawMessage `json:"domains"` // UUID -> map[point ID]*cachedPoint
}

type pointRef struct {
	Size   int64     `json:"s"`
	Domain string    `json:"d"`
	Time   time.Time `json:"t"`
}

// pointsView is the points file as read, its domains decoded on demand.
type pointsView struct {
	f       pointsFile
	decoded map[string]map[string]*cachedPoint
	counts  map[string]int // IDs per domain, as read
	changed bool
}

// loadPoints reads the points file; a file that cannot be read (or of an
// older version) is an empty cache.
func (c *metaCache) loadPoints() *pointsView {
	v := &pointsView{f: pointsFile{IDs: map[string]pointRef{}, Domains: map[string]json.RawMessage{}}, decoded: map[string]map[string]*cachedPoint{}}
	data, err := c.read(cachePointsFile, maxCachePoints)
	if err != nil {
		return v
	}
	var f pointsFile
	err = json.Unmarshal(data, &f)
	switch {
	case err == nil && f.Version == 1:
		c.log.Info("metadata cache of an earlier layout: manifests are read from the target once")
		return v
	case err != nil || f.Version != 2 || f.IDs == nil || f.Domains == nil:
		c.log.Warn("metadata cache damaged: manifests are read from the target", "err", err)
		return v
	}
	v.f = f
	return v
}

// domain returns the cached points of domain uuid; entries that do not
// name themselves are dropped, and a domain that does not decode is.
func (v *pointsView) domain(uuid string) map[string]*cachedPoint {
	if d, ok := v.decoded[uuid]; ok {
		return d
	}
	d := map[string]*cachedPoint{}
	if raw, ok := v.f.Domains[uuid]; ok {
		var all map[string]*cachedPoint
		if err := json.Unmarshal(raw, &all); err != nil {
			all = nil
		}
		for id, cp := range all {
			if ref, ok := v.f.IDs[id]; ok && ref.Domain == uuid && cp != nil && cp.Manifest != nil && cp.Manifest.ID == id && cp.Manifest.DomainUUID == uuid && checkPointID(id) == nil {
				d[id] = cp
			}
		}
	}
	if v.counts == nil {
		v.counts = map[string]int{}
		for _, ref := range v.f.IDs {
			v.counts[ref.Domain]++
		}
	}
	if v.counts[uuid] != len(d) {
		for id, ref := range v.f.IDs {
			if ref.Domain == uuid && d[id] == nil {
				delete(v.f.IDs, id) // named, but not held
			}
		}
	}
	v.decoded[uuid] = d
	return d
}

// all returns every cached point.
func (v *pointsView) all() map[string]*cachedPoint {
	out := make(map[string]*cachedPoint, len(v.f.IDs))
	for uuid := range v.f.Domains {
		for id, cp := range v.domain(uuid) {
			out[id] = cp
		}
	}
	return out
}

// put caches cp.
func (v *pointsView) put(cp *cachedPoint) {
	m := cp.Manifest
	if old, ok := v.f.IDs[m.ID]; ok && old.Domain != m.DomainUUID {
		v.drop(m.ID)
	}
	v.domain(m.DomainUUID)[m.ID] = cp
	v.f.IDs[m.ID] = pointRef{Size: cp.Size, Domain: m.DomainUUID, Time: m.Time}
	v.changed = true
}

// drop forgets point id.
func (v *pointsView) drop(id string) {
	ref, ok := v.f.IDs[id]
	if !ok {
		return
	}
	delete(v.domain(ref.Domain), id)
	delete(v.f.IDs, id)
	v.changed = true
}

// savePoints writes v back when it changed: the domains decoded are
// encoded again, the others kept as they were read.
func (c *metaCache) savePoints(v *pointsView) {
	if c.dir == "" || !v.changed {
		return
	}
	for uuid, d := range v.decoded {
		if len(d) == 0 {
			delete(v.f.Domains, uuid)
			continue
		}
		raw, err := json.Marshal(d)
		if err != nil {
			c.log.Warn("metadata cache not updated", "err", err)
			return
		}
		v.f.Domains[uuid] = raw
	}
	v.f.Version = 2
	c.mu.Lock()
	defer c.mu.Unlock()
	data, err := json.Marshal(v.f)
	if err == nil {
		err = c.write(cachePointsFile, data)
	}
	if err != nil {
		c.log.Warn("metadata cache not updated", "err", err)
	}
}

// packSet is the packs a full listing showed, with their sizes and their
// indexes' sizes, and when: a writer starts from it instead of listing
// every pack, and confirms each pack it relies on (Repository.confirm).
type packSet struct {
	Version int                 `json:"version"`
	Listed  time.Time           `json:"listed"`
	Packs   map[string][2]int64 `json:"packs"` // pack ID -> size, index size
}

// packs returns the cached pack set, or false.
func (c *metaCache) packs() (packSet, bool) {
	var ps packSet
	data, err := c.read(cachePacksFile, maxCachePoints)
	if err != nil {
		return ps, false
	}
	if err := json.Unmarshal(data, &ps); err != nil || ps.Version != 1 {
		c.log.Warn("metadata cache damaged: packs are listed", "err", err)
		return ps, false
	}
	return ps, true
}

// savePacks replaces the cached pack set (nil forgets it).
func (c *metaCache) savePacks(ps *packSet) {
	if c.dir == "" {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if ps == nil {
		_ = os.Remove(filepath.Join(c.dir, cachePacksFile))
		return
	}
	ps.Version = 1
	data, err := json.Marshal(ps)
	if err == nil {
		err = c.write(cachePacksFile, data)
	}
	if err != nil {
		c.log.Warn("metadata cache not updated", "err", err)
	}
}

// object returns the cached envelope of object id of kind (a directory:
// cachePackDir for pack indexes by pack ID, cacheMergedDir for merged
// indexes) when it has size bytes, as the backend lists it (and no more
// than limit).
func (c *metaCache) object(kind string, id ID, size, limit int64) ([]byte, bool) {
	if size < 0 || size > limit {
		return nil, false
	}
	obj, err := c.read(filepath.Join(kind, id.String()), size)
	return obj, err == nil && int64(len(obj)) == size
}

// putObject caches the envelope of object id of kind.
func (c *metaCache) putObject(kind string, id ID, obj []byte) {
	if c.dir == "" {
		return
	}
	if err := c.write(filepath.Join(kind, id.String()), obj); err != nil {
		c.log.Warn("metadata cache not updated", "err", err)
	}
}

// dropObject forgets object id of kind (damaged as cached, or gone).
func (c *metaCache) dropObject(kind string, id ID) {
	if c.dir != "" {
		_ = os.Remove(filepath.Join(c.dir, kind, id.String()))
	}
}

// keepObjects drops the cached objects of kind not in listed.
func (c *metaCache) keepObjects(kind string, listed func(ID) bool) {
	if c.dir == "" {
		return
	}
	des, _ := os.ReadDir(filepath.Join(c.dir, kind))
	for _, de := range des {
		if id, err := ParseID(de.Name()); err != nil || !listed(id) {
			_ = os.Remove(filepath.Join(c.dir, kind, de.Name()))
		}
	}
}

// read returns what the cache file name holds (at most limit bytes), once
// it matches the checksum it was written with: a bit flipped on the local
// disk is a miss, not an answer (unencrypted objects carry no MAC).
func (c *metaCache) read(name string, limit int64) ([]byte, error) {
	if c.dir == "" {
		return nil, fs.ErrNotExist
	}
	f, err := os.Open(filepath.Join(c.dir, name))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, sha256.Size+limit+1))
	switch {
	case err != nil:
	case len(b) < sha256.Size || int64(len(b)) > sha256.Size+limit:
		err = fmt.Errorf("%w: metadata cache: %s: %d bytes", ErrCorrupt, name, len(b))
	case sha256.Sum256(b[sha256.Size:]) != [sha256.Size]byte(b[:sha256.Size]):
		err = fmt.Errorf("%w: metadata cache: %s: checksum mismatch", ErrCorrupt, name)
	default:
		return b[sha256.Size:], nil
	}
	c.log.Warn("metadata cache entry unreadable: read from the target", "err", err)
	return nil, err
}

// write replaces the file name under the cache with data and its
// checksum, private to root.
func (c *metaCache) write(name string, data []byte) error {
	p := filepath.Join(c.dir, name)
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Dir(p), "."+filepath.Base(p)+".tmp*")
	if err != nil {
		return err
	}
	sum := sha256.Sum256(data)
	_, err = f.Write(append(sum[:], data...))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), p)
	}
	if err != nil {
		_ = os.Remove(f.Name())
		return fmt.Errorf("metadata cache: %w", err)
	}
	return nil
}

// light is m without its saved domain definitions, which only a restore
// or a boot needs (they read the point itself): what Points returns.
func (m *Manifest) light() *Manifest {
	l := *m
	l.DomainXML, l.DomainXMLInactive = "", ""
	return &l
}
