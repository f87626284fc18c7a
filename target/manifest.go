package target

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"sort"
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
	if err := checkPointID(id); err != nil {
		return nil, err
	}
	obj, err := r.getEnvelope(ctx, typeManifst, "points/"+id)
	if errors.Is(err, ErrNotFound) {
		return nil, fmt.Errorf("point %s: %w", id, ErrNoPoint)
	}
	if err != nil {
		return nil, fmt.Errorf("point %s: %w", id, err)
	}
	return r.openManifest(id, obj)
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

// pointIDs lists the names under points/; those that are no point ID go to
// stray.
func (r *Repository) pointIDs(ctx context.Context, stray func(key string)) ([]string, error) {
	var ids []string
	err := r.b.List(ctx, "points/", func(fi ObjectInfo) error {
		id := strings.TrimPrefix(fi.Key, "points/")
		if checkPointID(id) != nil {
			stray(fi.Key)
			return nil
		}
		ids = append(ids, id)
		return nil
	})
	sort.Strings(ids)
	return ids, err
}

// PointIDs lists the IDs of the points the repository holds, sorted, with
// one listing and without reading a manifest: a cache of the points (the
// catalog) compares it with what it has. Stray objects are left out.
func (r *Repository) PointIDs(ctx context.Context) ([]string, error) {
	return r.pointIDs(ctx, func(string) {})
}

// Points lists every point's manifest, oldest first (by time). A manifest
// that cannot be read is reported to bad (if not nil) and left out; so is
// a stray object under points/, with an error wrapping ErrStray.
func (r *Repository) Points(ctx context.Context, bad func(id string, err error)) ([]*Manifest, error) {
	if bad == nil {
		bad = func(string, error) {}
	}
	ids, err := r.pointIDs(ctx, func(key string) { bad(strings.TrimPrefix(key, "points/"), fmt.Errorf("%s: %w", key, ErrStray)) })
	if err != nil {
		return nil, err
	}
	out := make([]*Manifest, 0, len(ids))
	for _, id := range ids {
		m, err := r.Point(ctx, id)
		if err != nil {
			bad(id, err)
			continue
		}
		out = append(out, m)
	}
	// IDs sort by second; times are finer.
	sort.SliceStable(out, func(i, j int) bool { return out[i].Time.Before(out[j].Time) })
	return out, nil
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
