package target

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
	"time"
)

// CheckOptions choose how deep Check goes.
type CheckOptions struct {
	// ReadData re-reads and re-hashes every chunk; without it, chunks are
	// only checked to exist.
	ReadData bool
	// Quarantine moves the chunks ReadData found damaged out of the way
	// (to damaged/...), under the exclusive lock: a backup then no longer
	// takes them as stored, and the next one that reads their data
	// stores them again, which heals every point that references them.
	Quarantine bool
	// Sample, with ReadData, reads only the chunks of part Part of Of
	// (by their ID): verifying part (day mod Of) each day reads every
	// chunk once in Of days. Zero Of reads all.
	Sample Sample
}

// Sample is one part of Of.
type Sample struct{ Part, Of int }

// has reports whether chunk id is in the sample.
func (s Sample) has(id ID) bool {
	return s.Of <= 1 || int(binary.BigEndian.Uint32(id[:4])%uint32(s.Of)) == s.Part%s.Of
}

// Problem is one thing Check found wrong, with the points it affects.
type Problem struct {
	Object string   `json:"object"`
	Error  string   `json:"error"`
	Points []string `json:"points"` // "ID (domain, time)"
	IDs    []string `json:"ids"`    // the same points' IDs
}

// CheckReport is what Check found.
type CheckReport struct {
	Points      int       `json:"points"`
	Chunks      int       `json:"chunks"`
	ChunksRead  int       `json:"chunks_read"`
	Problems    []Problem `json:"problems"`
	Unjournaled []string  `json:"unjournaled,omitempty"` // manifests without a journal entry (harmless)
	Strays      []string  `json:"strays,omitempty"`      // objects under points/ that are no point
	// Quarantined lists the damaged chunks moved under damaged/, so that
	// the next backup holding their data stores them anew.
	Quarantined []string `json:"quarantined,omitempty"`
	// QuarantineError says why damaged chunks were left in place.
	QuarantineError string `json:"quarantine_error,omitempty"`
}

// Damaged lists the IDs of the points a problem affects, sorted.
func (c *CheckReport) Damaged() []string {
	var out []string
	for _, p := range c.Problems {
		out = append(out, p.IDs...)
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// OK reports whether nothing is damaged.
func (c *CheckReport) OK() bool { return len(c.Problems) == 0 }

func (c *CheckReport) String() string {
	var b strings.Builder
	if c.OK() {
		fmt.Fprintf(&b, "no problems in %d points, %d chunks (%d read)", c.Points, c.Chunks, c.ChunksRead)
	} else {
		fmt.Fprintf(&b, "%d problems in %d points:\n", len(c.Problems), c.Points)
		for _, p := range c.Problems {
			fmt.Fprintf(&b, "  %s: %s; affects %s\n", p.Object, p.Error, strings.Join(p.Points, ", "))
		}
	}
	for _, s := range c.Strays {
		fmt.Fprintf(&b, "\n  %s: not a point (ignored)", s)
	}
	if len(c.Quarantined) > 0 {
		fmt.Fprintf(&b, "\n  %d damaged chunks moved under damaged/: the next backup of their data stores them again", len(c.Quarantined))
	}
	if c.QuarantineError != "" {
		fmt.Fprintf(&b, "\n  damaged chunks left in place: %s", c.QuarantineError)
	}
	return b.String()
}

// checkManifest reads point id's manifest and checks it against its
// journal entry's hash, when it has one.
func (r *Repository) checkManifest(ctx context.Context, id string, journal map[string]journalEntry) (*Manifest, error) {
	obj, err := r.getEnvelope(ctx, typeManifst, "points/"+id)
	if err != nil {
		return nil, err
	}
	if je, ok := journal[id]; ok {
		if sum := sha256.Sum256(obj); hex.EncodeToString(sum[:]) != je.Manifest {
			return nil, corrupt("manifest does not hash to its journal entry's %.16s…", je.Manifest)
		}
	}
	return r.openManifest(id, obj)
}

func pointLabel(id, domain string, t time.Time) string {
	return fmt.Sprintf("%s (%s, %s)", id, domain, t.Format(time.RFC3339))
}

// Check verifies the repository's structure: every journaled point has a
// manifest, every manifest parses, every index root and page reads and
// verifies, every referenced chunk and blob exists (and, with ReadData,
// reads back and hashes to its name). Each problem names the points it
// damages. The error is for failures to check, not for damage found.
func (r *Repository) Check(ctx context.Context, o CheckOptions) (*CheckReport, error) {
	c := &checker{r: r, o: o, rep: &CheckReport{}, problems: map[string]*Problem{},
		chunks: map[ID]bool{}, badPages: map[ID]error{}, bad: map[ID]error{}}
	for _, phase := range []func(context.Context) error{c.points, c.indexes, c.stored, c.attribute} {
		if err := phase(ctx); err != nil {
			return nil, fmt.Errorf("check: %w", err)
		}
	}
	if o.Quarantine && o.ReadData {
		r.quarantine(ctx, c.bad, c.badPages, c.damagedIdx, c.rep)
	}
	return c.report(), nil
}

// checker is one Check: its phases, in order, are points (journal and
// manifests), indexes (one walk over roots and pages), stored (what the
// packs hold, read back on request) and attribute (which points a bad
// chunk damages).
type checker struct {
	r          *Repository
	o          CheckOptions
	rep        *CheckReport
	problems   map[string]*Problem
	manifests  []*Manifest  // the points whose manifest reads
	chunks     map[ID]bool  // chunks they reference
	badPages   map[ID]error // index pages that do not read
	bad        map[ID]error // chunks missing or damaged
	damagedIdx map[ID]error // packs whose own index is damaged
}

// add records that object has problem err, damaging point id (label).
func (c *checker) add(object string, err error, id, label string) {
	p, ok := c.problems[object]
	if !ok {
		p = &Problem{Object: object, Error: err.Error()}
		c.problems[object] = p
	}
	if slices.Contains(p.IDs, id) {
		return
	}
	p.IDs = append(p.IDs, id)
	p.Points = append(p.Points, label)
}

// journal reads every journal entry; one that does not read is a problem.
func (c *checker) journal(ctx context.Context) (map[string]journalEntry, error) {
	r := c.r
	journal := map[string]journalEntry{}
	err := r.b.List(ctx, "journal/", func(fi ObjectInfo) error {
		id := strings.TrimPrefix(fi.Key, "journal/")
		var je journalEntry
		obj, err := r.getEnvelope(ctx, typeJournal, fi.Key)
		if errors.Is(err, ErrNotFound) {
			return nil // deleted meanwhile
		}
		if err != nil && !errors.Is(err, ErrCorrupt) {
			return err
		}
		var plain []byte
		if err == nil {
			plain, err = r.codec.open(typeJournal, obj)
		}
		if err == nil {
			err = jsonUnmarshal(plain, &je)
		}
		if err != nil {
			c.add(fi.Key, err, id, id)
			return nil
		}
		journal[id] = je
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list journal: %w", err)
	}
	return journal, nil
}

// points reads the journal and every manifest.
func (c *checker) points(ctx context.Context) error {
	journal, err := c.journal(ctx)
	if err != nil {
		return err
	}
	listed, err := c.r.listPoints(ctx, func(key string) { c.rep.Strays = append(c.rep.Strays, key) })
	if err != nil {
		return fmt.Errorf("list points: %w", err)
	}
	have := map[string]bool{}
	for _, p := range listed {
		id := p.id
		have[id] = true
		m, err := c.r.checkManifest(ctx, id, journal)
		if err != nil {
			label := id
			if je, ok := journal[id]; ok {
				label = pointLabel(id, je.Domain, je.Time)
			}
			c.add("points/"+id, err, id, label)
			continue
		}
		c.manifests = append(c.manifests, m)
		if _, ok := journal[id]; !ok {
			c.rep.Unjournaled = append(c.rep.Unjournaled, id)
		}
	}
	for id, je := range journal {
		if !have[id] {
			c.add("points/"+id, errors.New("manifest missing"), id, pointLabel(id, je.Domain, je.Time))
		}
	}
	c.rep.Points = len(listed)
	return nil
}

// indexes walks the points' roots and pages, each read once, and gathers
// the chunks they reference; it checks blobs on the way.
func (c *checker) indexes(ctx context.Context) error {
	w := c.r.newRefWalk(false)
	for _, m := range c.manifests {
		label := pointLabel(m.ID, m.Domain, m.Time)
		err := w.point(ctx, m, refVisit{
			blob: func(name string, id ID) error {
				if _, err := c.r.getObject(ctx, typeBlob, id); err != nil {
					c.add(objectKey(typeBlob, id), fmt.Errorf("blob %s: %w", name, err), m.ID, label)
				}
				return nil
			},
			root: func(d *DiskManifest, _ ID, err error) error {
				if err != nil {
					c.add("index root of disk "+d.Name, err, m.ID, label)
				}
				return nil
			},
			page: func(_ *DiskManifest, _ int64, id ID, err error) error {
				if err != nil {
					c.add(objectKey(typePage, id), err, m.ID, label)
					c.badPages[id] = err
				}
				return nil
			},
			chunk: func(_ *DiskManifest, _ int64, id ID) error { c.chunks[id] = true; return nil },
		})
		if err != nil {
			return err
		}
	}
	c.rep.Chunks = len(c.chunks)
	return nil
}

// stored finds what the repository holds by every pack's own index (and
// compares the merged indexes with them): a referenced chunk not held is
// missing; with ReadData, the ones sampled are read back.
func (c *checker) stored(ctx context.Context) error {
	r := c.r
	own, err := r.loadOwnPacks(ctx)
	if err != nil {
		return fmt.Errorf("pack indexes: %w", err)
	}
	stored, err := r.heldChunks(ctx)
	if err != nil {
		return fmt.Errorf("list chunks: %w", err)
	}
	badMerged, err := r.checkMerged(ctx, own)
	if err != nil {
		return err
	}
	for key, err := range badMerged {
		c.problems[key] = &Problem{Object: key, Error: fmt.Sprintf("merged pack index not to be trusted (the next gc replaces it): %v", err)}
	}
	c.damagedIdx = r.packs.damagedIndexes()
	for id, err := range c.damagedIdx {
		key := packIndexKey(id)
		c.problems[key] = &Problem{Object: key, Error: fmt.Sprintf("pack index damaged, the chunks of %s cannot be found: %v", packKey(id), err)}
	}
	var read []part
	for id := range c.chunks {
		size, ok := stored[id]
		switch {
		case !ok:
			c.bad[id] = errors.New("chunk missing")
		case size <= headerLen:
			c.bad[id] = corrupt("chunk of %d bytes", size)
		case c.o.ReadData && c.o.Sample.has(id):
			read = append(read, part{id: id})
		}
	}
	damaged, err := r.verifyChunks(ctx, read)
	if err != nil {
		return fmt.Errorf("read chunks: %w", err)
	}
	maps.Copy(c.bad, damaged)
	c.rep.ChunksRead = len(read)
	return nil
}

// attribute walks the points again, only if a chunk is bad, to name each
// point that uses one and where.
func (c *checker) attribute(ctx context.Context) error {
	if len(c.bad) == 0 {
		return nil
	}
	w := c.r.newRefWalk(true)
	for _, m := range c.manifests {
		label := pointLabel(m.ID, m.Domain, m.Time)
		err := w.point(ctx, m, refVisit{chunk: func(d *DiskManifest, idx int64, id ID) error {
			if e, ok := c.bad[id]; ok {
				c.add(objectKey(typeChunk, id), fmt.Errorf("%w (disk %s, offset %d)", e, d.Name, idx*int64(c.r.cfg.ChunkSize)), m.ID, label)
			}
			return nil
		}})
		if err != nil {
			return err
		}
	}
	return nil
}

// report is the problems found, sorted.
func (c *checker) report() *CheckReport {
	rep := c.rep
	for _, p := range c.problems {
		sort.Strings(p.Points)
		sort.Strings(p.IDs)
		rep.Problems = append(rep.Problems, *p)
	}
	sort.Slice(rep.Problems, func(i, j int) bool { return rep.Problems[i].Object < rep.Problems[j].Object })
	sort.Strings(rep.Unjournaled)
	return rep
}

// quarantine moves damaged (not missing) chunks to damaged/<key> under the
// exclusive lock, after reading each once more, and damaged pack indexes
// likewise (their pack, indexless, goes at the next GC).
func (r *Repository) quarantine(ctx context.Context, bad map[ID]error, badPages map[ID]error, indexes map[ID]error, rep *CheckReport) {
	var damaged []ref
	for typ, m := range map[byte]map[ID]error{typeChunk: bad, typePage: badPages} {
		for id, err := range m {
			if errors.Is(err, ErrCorrupt) {
				damaged = append(damaged, ref{typ, id})
			}
		}
	}
	if len(damaged) == 0 && len(indexes) == 0 {
		return
	}
	lock, err := r.Lock(ctx, true)
	if err != nil {
		rep.QuarantineError = err.Error()
		return
	}
	defer lock.Unlock(ctx)
	if err := r.quarantineIndexes(ctx, lock, indexes, rep); err != nil {
		rep.QuarantineError = err.Error()
		return
	}
	for _, o := range damaged {
		key := objectKey(o.typ, o.id)
		// Each drop rewrites a pack index another host may have replaced
		// since, had our lock lapsed.
		if err := lock.Check(ctx); err != nil {
			rep.QuarantineError = fmt.Sprintf("%s: %v", key, err)
			return
		}
		if _, err := r.getObject(ctx, o.typ, o.id); !errors.Is(err, ErrCorrupt) {
			continue // rewritten meanwhile, or unreadable for another reason
		}
		obj, err := r.packedEnvelope(ctx, o)
		if err == nil {
			err = r.b.Put(ctx, "damaged/"+key, obj)
		}
		if err == nil {
			err = r.dropObject(ctx, o)
		}
		if err != nil {
			rep.QuarantineError = fmt.Sprintf("%s: %v", key, err)
			return
		}
		r.log.Warn("check: damaged object moved aside; the next backup of its data stores it again", "object", key)
		rep.Quarantined = append(rep.Quarantined, key)
	}
	sort.Strings(rep.Quarantined)
	if err := r.b.Sync(ctx); err != nil {
		rep.QuarantineError = err.Error()
	}
}

// quarantineIndexes moves the damaged pack indexes aside, each after
// reading it again (it may have been rewritten meanwhile).
func (r *Repository) quarantineIndexes(ctx context.Context, lock *Lock, indexes map[ID]error, rep *CheckReport) error {
	for id := range indexes {
		key := packIndexKey(id)
		if err := lock.Check(ctx); err != nil {
			return fmt.Errorf("%s: %w", key, err)
		}
		fi, err := r.b.Stat(ctx, packKey(id))
		if err != nil {
			return fmt.Errorf("%s: %w", key, err)
		}
		plain, err := r.openAt(ctx, typePackIndex, key)
		if err == nil {
			_, err = decodePackIndex(plain, id, fi.Size, maxObject(typeChunk, r.cfg.ChunkSize))
		}
		if !errors.Is(err, ErrCorrupt) {
			continue // mended or gone meanwhile
		}
		obj, err := r.b.Get(ctx, key, 0, maxObject(typePackIndex, r.cfg.ChunkSize))
		if err == nil {
			err = r.b.Put(ctx, "damaged/"+key, obj)
		}
		if err == nil {
			err = r.b.Delete(ctx, key)
		}
		if err != nil {
			return fmt.Errorf("%s: %w", key, err)
		}
		r.log.Warn("check: damaged pack index moved aside; the next backup of its chunks' data stores them again", "index", key)
		rep.Quarantined = append(rep.Quarantined, key)
	}
	return nil
}
