package target

import (
	"cmp"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"
)

// Levels of a point.
const (
	LevelFull = "full" // every chunk read
	LevelInc  = "inc"  // changes since the previous point of the chain
	LevelDiff = "diff" // changes since the last full of the chain
	LevelCopy = "copy" // copied from another target
)

// Manifest describes one backup point: everything needed to restore it and
// to rebuild the catalog. See docs/FORMAT.md.
type Manifest struct {
	Version           int               `json:"version"`
	ID                string            `json:"id"`
	Domain            string            `json:"domain"`
	DomainUUID        string            `json:"domain_uuid"`
	Host              string            `json:"host"`
	MachineID         string            `json:"machine_id,omitempty"` // of the host that wrote it (absent before 2026-12)
	Time              time.Time         `json:"time"`
	Level             string            `json:"level"`
	Consistency       string            `json:"consistency"`
	FreezeMS          int64             `json:"freeze_ms"`
	Parent            string            `json:"parent,omitempty"`
	Disks             []DiskManifest    `json:"disks"`
	DomainXML         string            `json:"domain_xml,omitempty"`
	DomainXMLInactive string            `json:"domain_xml_inactive,omitempty"`
	Blobs             map[string]string `json:"blobs,omitempty"`
	Tags              map[string]string `json:"tags,omitempty"`
}

// DiskManifest describes one disk of a point.
type DiskManifest struct {
	Name             string         `json:"name"`
	Format           string         `json:"format"`
	VirtualSize      int64          `json:"virtual_size"`
	Root             string         `json:"root"`
	Checkpoint       string         `json:"checkpoint,omitempty"`
	ParentCheckpoint string         `json:"parent_checkpoint,omitempty"`
	BytesRead        int64          `json:"bytes_read"`
	BytesStored      int64          `json:"bytes_stored"`
	FormatDetails    map[string]any `json:"format_details,omitempty"`
}

// Disk returns the disk named name.
func (m *Manifest) Disk(name string) (*DiskManifest, error) {
	names := make([]string, 0, len(m.Disks))
	for i := range m.Disks {
		if m.Disks[i].Name == name {
			return &m.Disks[i], nil
		}
		names = append(names, m.Disks[i].Name)
	}
	return nil, fmt.Errorf("point %s has no disk %q (disks: %s): %w", m.ID, name, strings.Join(names, ", "), ErrNotFound)
}

var pointIDRe = regexp.MustCompile(`^[0-9]{8}T[0-9]{6}Z-[0-9a-f]{8}$`)

// NewPointID returns a point ID for time t: sortable by time, unique.
func NewPointID(t time.Time) string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return t.UTC().Format("20060102T150405Z") + "-" + hex.EncodeToString(b[:])
}

// ErrNoPoint is wrapped by errors for points that do not exist.
var ErrNoPoint = errors.New("no such point")

func checkPointID(id string) error {
	if !pointIDRe.MatchString(id) {
		return fmt.Errorf("point id %q: want YYYYMMDDTHHMMSSZ-xxxxxxxx: %w", id, ErrNoPoint)
	}
	return nil
}

// ParseManifest decodes a manifest's JSON and checks it.
func ParseManifest(b []byte) (*Manifest, error) {
	var m Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, corrupt("manifest: %v", err)
	}
	if m.Version > manifestVersion {
		return nil, fmt.Errorf("manifest %s has version %d, newer than this virtkeep (%d)", m.ID, m.Version, manifestVersion)
	}
	if m.Version < 1 || checkPointID(m.ID) != nil || m.Time.IsZero() {
		return nil, corrupt("manifest %q: bad version, id or time", m.ID)
	}
	seen := map[string]bool{}
	for _, d := range m.Disks {
		if d.Name == "" || seen[d.Name] || d.VirtualSize < 0 {
			return nil, corrupt("manifest %s: bad disk %q", m.ID, d.Name)
		}
		seen[d.Name] = true
		if _, err := ParseID(d.Root); err != nil {
			return nil, corrupt("manifest %s: disk %s: %v", m.ID, d.Name, err)
		}
	}
	for k, v := range m.Blobs {
		if _, err := ParseID(v); err != nil {
			return nil, corrupt("manifest %s: blob %s: %v", m.ID, k, err)
		}
	}
	return &m, nil
}

type journalEntry struct {
	ID       string    `json:"id"`
	Domain   string    `json:"domain"`
	Time     time.Time `json:"time"`
	Level    string    `json:"level"`
	Manifest string    `json:"manifest"`
}

// Point loads and verifies the manifest of point id.
func (r *Repository) Point(ctx context.Context, id string) (*Manifest, error) {
	m, _, err := r.readPoint(ctx, id)
	return m, err
}

// readPoint is Point, which also says how long the stored manifest is.
func (r *Repository) readPoint(ctx context.Context, id string) (*Manifest, int64, error) {
	if err := checkPointID(id); err != nil {
		return nil, 0, err
	}
	obj, err := r.getEnvelope(ctx, typeManifst, "points/"+id)
	if errors.Is(err, ErrNotFound) {
		return nil, 0, fmt.Errorf("point %s: %w", id, ErrNoPoint)
	}
	if err != nil {
		return nil, 0, fmt.Errorf("point %s: %w", id, err)
	}
	m, err := r.openManifest(id, obj)
	return m, int64(len(obj)), err
}

// openManifest opens and checks the stored manifest object of point id.
func (r *Repository) openManifest(id string, obj []byte) (*Manifest, error) {
	plain, err := r.codec.open(typeManifst, obj)
	if err != nil {
		return nil, fmt.Errorf("point %s: manifest: %w", id, err)
	}
	m, err := ParseManifest(plain)
	if err != nil {
		return nil, fmt.Errorf("point %s: %w", id, err)
	}
	if m.ID != id {
		return nil, fmt.Errorf("point %s: %w", id, corrupt("manifest names point %s", m.ID))
	}
	return m, nil
}

// ErrStray is wrapped by the error Points reports for an object under
// points/ whose name is no point ID: not a manifest (a file an operator or
// another tool left), so it neither stops GC nor counts as damage.
var ErrStray = errors.New("not a point: stray object under points/")

// listedPoint is a point as the backend lists it: its ID and the size of
// its manifest object.
type listedPoint struct {
	id   string
	size int64
}

// listPoints lists the objects under points/, sorted by ID; those whose
// name is no point ID go to stray.
func (r *Repository) listPoints(ctx context.Context, stray func(key string)) ([]listedPoint, error) {
	var ps []listedPoint
	err := r.b.List(ctx, "points/", func(fi ObjectInfo) error {
		id := strings.TrimPrefix(fi.Key, "points/")
		if checkPointID(id) != nil {
			stray(fi.Key)
			return nil
		}
		ps = append(ps, listedPoint{id, fi.Size})
		return nil
	})
	slices.SortFunc(ps, func(a, b listedPoint) int { return strings.Compare(a.id, b.id) })
	return ps, err
}

// pointLoaders is how many manifests Points reads at once.
const pointLoaders = 32

// Points lists every point's manifest, oldest first (by time), without
// its saved domain definitions (Point has them). A manifest that cannot be
// read is reported to bad (if not nil) and left out; so is a stray object
// under points/, with an error wrapping ErrStray.
//
// One listing says which points exist; their manifests come from the
// metadata cache where it holds them at the listed size, and the others
// from the backend, several at once: a repository of many points costs a
// listing, not a read per point.
func (r *Repository) Points(ctx context.Context, bad func(id string, err error)) ([]*Manifest, error) {
	if bad == nil {
		bad = func(string, error) {}
	}
	listed, err := r.listPoints(ctx, func(key string) { bad(strings.TrimPrefix(key, "points/"), fmt.Errorf("%s: %w", key, ErrStray)) })
	if err != nil {
		return nil, err
	}
	v := r.cache.loadPoints()
	cached := v.all()
	keep := make(map[string]*cachedPoint, len(listed))
	var todo []listedPoint
	for _, p := range listed {
		if cp := cached[p.id]; cp != nil && cp.Size == p.size {
			keep[p.id] = cp
		} else {
			todo = append(todo, p)
		}
	}
	fetched, err := r.readPoints(ctx, todo, bad)
	if err != nil {
		return nil, err
	}
	for id := range cached {
		if keep[id] == nil {
			v.drop(id)
		}
	}
	for _, cp := range fetched {
		keep[cp.Manifest.ID] = cp
		v.put(cp)
	}
	r.cache.savePoints(v)
	return sortedPoints(keep), nil
}

// RecentSlack is how far before the newest point the cache holds
// RecentPoints lists again: a point another host wrote with its clock
// behind by less is seen.
const RecentSlack = 24 * time.Hour

// RecentPoints is Points for a caller that relies on the newest points of
// one domain only (a backup's chain): with the metadata cache warm, it
// lists only the point IDs dated after the cache's newest point less
// RecentSlack (S3 skips the others on its server), reads the manifests
// new among them, and decodes from the cache only domain uuid's, so that
// a backup costs a page of listing, not the whole repository's. The older
// points it returns come from the cache, as of the last full listing, and
// may be gone since (a prune elsewhere): the caller checks those it
// relies on (HasPoint).
func (r *Repository) RecentPoints(ctx context.Context, uuid string, bad func(id string, err error)) ([]*Manifest, error) {
	v := r.cache.loadPoints()
	var newest time.Time
	now := r.now()
	for _, ref := range v.refs {
		if ref.Time.After(newest) && !future(ref.Time, now) {
			newest = ref.Time
		}
	}
	if newest.IsZero() {
		pts, err := r.Points(ctx, bad)
		return slices.DeleteFunc(pts, func(m *Manifest) bool { return m.DomainUUID != uuid }), err
	}
	if bad == nil {
		bad = func(string, error) {}
	}
	after := newest.Add(-RecentSlack).UTC().Format("20060102T150405Z")
	var todo []listedPoint
	listed := map[string]bool{}
	err := ListAfter(ctx, r.b, "points/", after, func(fi ObjectInfo) error {
		id := strings.TrimPrefix(fi.Key, "points/")
		listed[id] = true
		if checkPointID(id) != nil {
			bad(id, fmt.Errorf("%s: %w", fi.Key, ErrStray))
		} else if ref, ok := v.refs[id]; !ok || ref.Size != fi.Size {
			todo = append(todo, listedPoint{id, fi.Size})
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	for id := range v.refs {
		if id > after && !listed[id] { // in the range listed, and gone
			v.drop(id)
		}
	}
	fetched, err := r.readPoints(ctx, todo, bad)
	if err != nil {
		return nil, err
	}
	for _, cp := range fetched {
		v.put(cp)
	}
	r.cache.savePoints(v)
	return sortedPoints(v.domain(uuid)), nil
}

// HasPoint reports whether point id is in the repository now.
func (r *Repository) HasPoint(ctx context.Context, id string) (bool, error) {
	if err := checkPointID(id); err != nil {
		return false, err
	}
	_, err := r.b.Stat(ctx, "points/"+id)
	if errors.Is(err, ErrNotFound) {
		return false, nil
	}
	return err == nil, err
}

// sortedPoints is the manifests of ps, oldest first.
func sortedPoints(ps map[string]*cachedPoint) []*Manifest {
	out := make([]*Manifest, 0, len(ps))
	for _, cp := range ps {
		out = append(out, cp.Manifest)
	}
	// IDs sort by second; times are finer.
	slices.SortStableFunc(out, func(a, b *Manifest) int { return cmp.Or(a.Time.Compare(b.Time), strings.Compare(a.ID, b.ID)) })
	return out
}

// readPoints reads the manifests of ps from the backend, pointLoaders at
// once, and returns those that open, light; the others go to bad.
func (r *Repository) readPoints(ctx context.Context, ps []listedPoint, bad func(id string, err error)) ([]*cachedPoint, error) {
	out := make([]*cachedPoint, len(ps))
	errs := make([]error, len(ps))
	err := inParallel(ctx, pointLoaders, len(ps), func(i int) error {
		m, size, err := r.readPoint(ctx, ps[i].id)
		if err != nil {
			errs[i] = err
			return nil
		}
		out[i] = &cachedPoint{Size: size, Manifest: m.light()}
		return nil
	})
	if err != nil {
		return nil, err
	}
	for i, e := range errs {
		if e != nil {
			bad(ps[i].id, e)
		}
	}
	return slices.DeleteFunc(out, func(cp *cachedPoint) bool { return cp == nil }), nil
}

// putManifest writes m, then its journal entry, making both durable.
func (r *Repository) putManifest(ctx context.Context, m *Manifest) error {
	plain, err := json.Marshal(m)
	if err != nil {
		return err
	}
	obj := r.codec.seal(typeManifst, plain)
	if err := r.b.Put(ctx, "points/"+m.ID, obj); err != nil {
		return fmt.Errorf("point %s: write manifest: %w", m.ID, err)
	}
	sum := sha256.Sum256(obj)
	j, _ := json.Marshal(journalEntry{ID: m.ID, Domain: m.Domain, Time: m.Time, Level: m.Level, Manifest: hex.EncodeToString(sum[:])})
	if err := r.b.Put(ctx, "journal/"+m.ID, r.codec.seal(typeJournal, j)); err != nil {
		return fmt.Errorf("point %s: write journal entry: %w", m.ID, err)
	}
	return r.b.Sync(ctx)
}
