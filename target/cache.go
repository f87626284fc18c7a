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
	cachePointsDir = "points"
	cachePacksFile = "packs.json"
	cachePackDir   = "packindex"
	cacheMergedDir = "merged"
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

// The points cache: points/index.json names every cached point (its
// stored size, time and domain), and points/d-HASH.json holds one
// domain's manifests, so that a backup's chain reads the index and its
// own domain's file, and writes back only what changed. The index is
// written last: a point a domain file holds and the index does not name
// is read again; one the index names and its file lacks is forgotten.

// pointsIndex is points/index.json.
type pointsIndex struct {
	Version int                 `json:"version"` // 3
	Domains []string            `json:"domains"`
	IDs     map[string][3]int64 `json:"ids"` // point ID -> stored size, time (Unix ns), number in Domains
}

type pointRef struct {
	Size   int64
	Domain string
	Time   time.Time
}

// pointsView is the points cache as read, its domains read on demand.
type pointsView struct {
	c       *metaCache
	refs    map[string]pointRef
	decoded map[string]map[string]*cachedPoint
	dirty   map[string]bool // domains changed
	changed bool
}

func domainFile(uuid string) string {
	h := sha256.Sum256([]byte(uuid))
	return filepath.Join(cachePointsDir, fmt.Sprintf("d-%x.json", h[:12]))
}

// loadPoints reads the points index; one that cannot be read is an
// empty cache.
func (c *metaCache) loadPoints() *pointsView {
	v := &pointsView{c: c, refs: map[string]pointRef{}, decoded: map[string]map[string]*cachedPoint{}, dirty: map[string]bool{}}
	data, err := c.read(filepath.Join(cachePointsDir, "index.json"), maxCachePoints)
	if err != nil {
		return v
	}
	var ix pointsIndex
	if err := json.Unmarshal(data, &ix); err != nil || ix.Version != 3 {
		c.log.Warn("metadata cache damaged: manifests are read from the target", "err", err)
		return v
	}
	for id, r := range ix.IDs {
		if r[2] >= 0 && r[2] < int64(len(ix.Domains)) {
			v.refs[id] = pointRef{Size: r[0], Time: time.Unix(0, r[1]).UTC(), Domain: ix.Domains[r[2]]}
		}
	}
	return v
}

// domain returns the cached points of domain uuid that the index names;
// those it names and the domain's file lacks are forgotten.
func (v *pointsView) domain(uuid string) map[string]*cachedPoint {
	if d, ok := v.decoded[uuid]; ok {
		return d
	}
	var all map[string]*cachedPoint
	if data, err := v.c.read(domainFile(uuid), maxCachePoints); err == nil {
		if err := json.Unmarshal(data, &all); err != nil {
			all = nil
		}
	}
	d := map[string]*cachedPoint{}
	for id, cp := range all {
		if ref, ok := v.refs[id]; ok && ref.Domain == uuid && cp != nil && cp.Manifest != nil && cp.Manifest.ID == id && cp.Manifest.DomainUUID == uuid && checkPointID(id) == nil {
			d[id] = cp
		}
	}
	for id, ref := range v.refs {
		if ref.Domain == uuid && d[id] == nil {
			delete(v.refs, id) // named, but not held
			v.changed = true
		}
	}
	v.decoded[uuid] = d
	return d
}

// all returns every cached point.
func (v *pointsView) all() map[string]*cachedPoint {
	out := make(map[string]*cachedPoint, len(v.refs))
	domains := map[string]bool{}
	for _, ref := range v.refs {
		domains[ref.Domain] = true
	}
	for uuid := range domains {
		for id, cp := range v.domain(uuid) {
			out[id] = cp
		}
	}
	return out
}

// put caches cp.
func (v *pointsView) put(cp *cachedPoint) {
	m := cp.Manifest
	if old, ok := v.refs[m.ID]; ok && old.Domain != m.DomainUUID {
		v.drop(m.ID)
	}
	v.domain(m.DomainUUID)[m.ID] = cp
	v.refs[m.ID] = pointRef{Size: cp.Size, Domain: m.DomainUUID, Time: m.Time}
	v.dirty[m.DomainUUID], v.changed = true, true
}

// drop forgets point id.
func (v *pointsView) drop(id string) {
	ref, ok := v.refs[id]
	if !ok {
		return
	}
	delete(v.domain(ref.Domain), id)
	delete(v.refs, id)
	v.dirty[ref.Domain], v.changed = true, true
}

// savePoints writes back what changed: the domain files, then the index.
func (c *metaCache) savePoints(v *pointsView) {
	if c.dir == "" || !v.changed {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for uuid := range v.dirty {
		d := v.decoded[uuid]
		if len(d) == 0 {
			_ = os.Remove(filepath.Join(c.dir, domainFile(uuid)))
			continue
		}
		data, err := json.Marshal(d)
		if err == nil {
			err = c.write(domainFile(uuid), data)
		}
		if err != nil {
			c.log.Warn("metadata cache not updated", "err", err)
			return
		}
	}
	ix := pointsIndex{Version: 3, IDs: make(map[string][3]int64, len(v.refs))}
	num := map[string]int64{}
	for id, ref := range v.refs {
		n, ok := num[ref.Domain]
		if !ok {
			n = int64(len(ix.Domains))
			num[ref.Domain] = n
			ix.Domains = append(ix.Domains, ref.Domain)
		}
		ix.IDs[id] = [3]int64{ref.Size, ref.Time.UnixNano(), n}
	}
	data, err := json.Marshal(ix)
	if err == nil {
		err = c.write(filepath.Join(cachePointsDir, "index.json"), data)
	}
	if err != nil {
		c.log.Warn("metadata cache not updated", "err", err)
	}
	_ = os.Remove(filepath.Join(c.dir, "points.json")) // the layout before
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

// savePacks replaces the cached pack set.
func (c *metaCache) savePacks(ps *packSet) {
	if c.dir == "" {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
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
