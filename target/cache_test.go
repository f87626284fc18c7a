package target_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/virtkeep/virtkeep/target"
	"github.com/virtkeep/virtkeep/target/mem"
	"github.com/virtkeep/virtkeep/target/targettest"
	"github.com/virtkeep/virtkeep/testenv"
)

// byPrefix counts a backend's reads by the first element of their key.
type byPrefix struct {
	target.Backend
	mu   sync.Mutex
	gets map[string]int
}

func countReads(b target.Backend) *byPrefix { return &byPrefix{Backend: b, gets: map[string]int{}} }

func (c *byPrefix) Get(ctx context.Context, key string, off, n int64) ([]byte, error) {
	c.mu.Lock()
	c.gets[strings.SplitN(key, "/", 2)[0]]++
	c.mu.Unlock()
	return c.Backend.Get(ctx, key, off, n)
}

// take returns the reads of keys under prefix since the last take.
func (c *byPrefix) take(prefix string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := c.gets[prefix]
	c.gets[prefix] = 0
	return n
}

// TestMetaCache: with a cache directory, a repository opened again reads
// no manifest and no pack index it read before; the listing still decides
// what exists (a point deleted elsewhere is gone, one added elsewhere is
// read once); a damaged cache costs reads, never a wrong answer.
func TestMetaCache(t *testing.T) {
	t.Run("mem", func(t *testing.T) { testMetaCache(t, mem.New()) })
	t.Run("s3", func(t *testing.T) { testMetaCache(t, s3Backend(t, testenv.S3(t), "metacache")) })
	t.Run("sftp", func(t *testing.T) { testMetaCache(t, sftpBackend(t, testenv.SSHD(t), 2)) })
}

func testMetaCache(t *testing.T, inner target.Backend) {
	ctx := context.Background()
	plain := newRepo(t, inner, nil) // another host: no cache
	c, _ := testenv.NewContent(2<<20, 5, testenv.Fill{Random: 1})
	var ids []string
	for range 6 {
		m, _ := backup(t, plain, c, target.LevelFull, "", nil)
		ids = append(ids, m.ID)
	}
	cacheDir := t.TempDir()
	cb := countReads(inner)
	open := func() *target.Repository { return openRepo(t, cb, target.OpenOptions{CacheDir: cacheDir}) }
	points := func(r *target.Repository) []string {
		t.Helper()
		ms, err := r.Points(ctx, func(id string, err error) { t.Errorf("point %s: %v", id, err) })
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, m := range ms {
			out = append(out, m.ID)
		}
		return out
	}

	// Cold: every manifest once; warm, in a new handle: none.
	if got := points(open()); strings.Join(got, ",") != strings.Join(ids, ",") {
		t.Fatalf("points %v, want %v", got, ids)
	}
	if n := cb.take("points"); n != len(ids) {
		t.Fatalf("cold cache: %d manifests read, want %d", n, len(ids))
	}
	r := open()
	points(r)
	if n := cb.take("points"); n != 0 {
		t.Fatalf("warm cache: %d manifests read, want 0", n)
	}
	restoreEquals(t, r, ids[0], c) // reads its own manifest
	if p := cb.take("packindex"); p == 0 {
		t.Fatal("cold cache: no pack index read")
	}
	r = open()
	restoreEquals(t, r, ids[1], c)
	if p := cb.take("packindex"); p != 0 {
		t.Fatalf("warm cache: %d pack indexes read, want 0", p)
	}

	// The listing decides: deleted elsewhere, added elsewhere.
	if err := plain.DeletePoint(ctx, ids[2]); err != nil {
		t.Fatal(err)
	}
	added, _ := backup(t, plain, c, target.LevelFull, "", nil)
	cb.take("points") // the restores' own manifests
	want := append(append(append([]string{}, ids[:2]...), ids[3:]...), added.ID)
	if got := points(open()); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("after a point was deleted and one added elsewhere: %v, want %v", got, want)
	}
	if n := cb.take("points"); n != 1 {
		t.Fatalf("%d manifests read after one was added, want 1", n)
	}

	// Private files; a damaged cache is read around and mended.
	dirs, _ := filepath.Glob(filepath.Join(cacheDir, "*"))
	if len(dirs) != 1 {
		t.Fatalf("cache holds %v: want one directory, the repository's", dirs)
	}
	domainFiles, _ := filepath.Glob(filepath.Join(dirs[0], "points", "d-*.json"))
	if len(domainFiles) != 1 {
		t.Fatalf("points cache: %v, want one domain's file", domainFiles)
	}
	for _, p := range []string{dirs[0], filepath.Join(dirs[0], "points", "index.json"), domainFiles[0]} {
		if fi, err := os.Stat(p); err != nil || fi.Mode().Perm()&0o077 != 0 {
			t.Fatalf("%s: %v %v: want private to root", p, fi.Mode(), err)
		}
	}
	if err := os.WriteFile(filepath.Join(dirs[0], "points", "index.json"), []byte("{garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	idxs, _ := filepath.Glob(filepath.Join(dirs[0], "packindex", "*"))
	for _, p := range idxs {
		flipByte(t, p, 40)
	}
	r = open()
	if got := points(r); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("with a damaged cache: %v, want %v", got, want)
	}
	restoreEquals(t, r, added.ID, c)
	if n, p := cb.take("points"), cb.take("packindex"); n != len(want)+1 || p != len(idxs) {
		t.Fatalf("damaged cache: %d manifests and %d pack indexes read again, want %d (and the restored one's) and %d", n, p, len(want), len(idxs))
	}
	restoreEquals(t, open(), ids[0], c)
	if p := cb.take("packindex"); p != 0 {
		t.Fatalf("the cache was not mended: %d pack indexes read", p)
	}
}

// TestPointsAreLight: Points leaves out the saved domain definitions, so
// that thousands of points cost their metadata only; Point has them.
func TestPointsAreLight(t *testing.T) {
	ctx := context.Background()
	r := newRepo(t, mem.New(), nil)
	pw, err := r.NewPoint(ctx, target.PointSpec{Domain: "vm1", DomainUUID: "u-1", Level: target.LevelFull, Consistency: "crash",
		DomainXML: "<domain/>", DomainXMLInactive: "<domain/>"})
	if err != nil {
		t.Fatal(err)
	}
	dw, err := pw.AddDisk(ctx, target.DiskSpec{Name: "vda", Format: "raw", VirtualSize: 1 << 20})
	if err == nil {
		err = dw.Close(ctx)
	}
	if err != nil {
		t.Fatal(err)
	}
	m, err := pw.Commit(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ms, err := r.Points(ctx, nil)
	if err != nil || len(ms) != 1 || ms[0].DomainXML != "" || ms[0].DomainXMLInactive != "" {
		t.Fatalf("Points: %v %v: want one point without its definitions", ms, err)
	}
	full, err := r.Point(ctx, m.ID)
	if err != nil || full.DomainXML != "<domain/>" || full.DomainXMLInactive != "<domain/>" {
		t.Fatalf("Point: %+v %v: want the definitions", full, err)
	}
}

// TestRecentPoints: with the cache warm, RecentPoints lists only the
// points after the cache's newest (less a day) and finds one added
// elsewhere; an old point deleted elsewhere is still returned from the
// cache, and HasPoint says it is gone; with no cache it is Points.
func TestRecentPoints(t *testing.T) {
	t.Run("mem", func(t *testing.T) { testRecentPoints(t, mem.New()) })
	t.Run("s3", func(t *testing.T) { testRecentPoints(t, s3Backend(t, testenv.S3(t), "recent")) })
}

func testRecentPoints(t *testing.T, inner target.Backend) {
	ctx := context.Background()
	now := time.Date(2026, 12, 1, 3, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	if err := target.Init(ctx, inner, target.InitOptions{PackSize: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	other := openRepo(t, inner, target.OpenOptions{Now: clock}) // another host, no cache
	c, _ := testenv.NewContent(1<<20, 2, testenv.Fill{Random: 1})
	var ids []string
	for range 3 {
		m, _ := backup(t, other, c, target.LevelFull, "", nil)
		ids = append(ids, m.ID)
		now = now.Add(48 * time.Hour)
	}
	dir := t.TempDir()
	mine := openRepo(t, inner, target.OpenOptions{CacheDir: dir, Now: clock})
	if ms, err := mine.RecentPoints(ctx, "u-1", nil); err != nil || len(ms) != 3 {
		t.Fatalf("cold: %d points, %v", len(ms), err)
	}
	if err := other.DeletePoint(ctx, ids[0]); err != nil {
		t.Fatal(err)
	}
	added, _ := backup(t, other, c, target.LevelFull, "", nil)
	ms, err := mine.RecentPoints(ctx, "u-1", nil)
	var got []string
	for _, m := range ms {
		got = append(got, m.ID)
	}
	if want := append(append([]string{}, ids...), added.ID); err != nil || strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("warm: %v %v, want %v (the deleted one from the cache, the added one listed)", got, err, want)
	}
	for id, want := range map[string]bool{ids[0]: false, ids[1]: true, added.ID: true} {
		if ok, err := mine.HasPoint(ctx, id); err != nil || ok != want {
			t.Errorf("HasPoint(%s): %v %v, want %v", id, ok, err, want)
		}
	}
	if ms, err := mine.Points(ctx, nil); err != nil || len(ms) != 3 {
		t.Fatalf("a full listing: %d points, %v: want the 3 there", len(ms), err)
	}
}

// tinyPoint commits a point of domain uuid holding one chunk.
func tinyPoint(t *testing.T, r *target.Repository, uuid string, seed byte) string {
	t.Helper()
	data := make([]byte, 64<<10)
	for i := range data {
		data[i] = seed + byte(i)
	}
	return targettest.CommitChunk(t, r, target.PointSpec{Domain: "vm-" + uuid, DomainUUID: uuid, Level: target.LevelFull, Consistency: "crash"}, 64<<10, 0, data).ID
}

// TestRecentPointsOneDomain: RecentPoints gives one domain's points; the
// other domains' new points are read once and cached, not again.
func TestRecentPointsOneDomain(t *testing.T) {
	ctx := context.Background()
	inner := mem.New()
	if err := target.Init(ctx, inner, target.InitOptions{PackSize: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	other := openRepo(t, inner, target.OpenOptions{})
	for i := range 6 {
		tinyPoint(t, other, []string{"a", "b", "c"}[i%3], byte(i))
	}
	cb := countReads(inner)
	mine := openRepo(t, cb, target.OpenOptions{CacheDir: t.TempDir()})
	ms, err := mine.RecentPoints(ctx, "a", nil)
	if err != nil || len(ms) != 2 || ms[0].DomainUUID != "a" || ms[1].DomainUUID != "a" {
		t.Fatalf("cold: %v, %d points", err, len(ms))
	}
	cb.take("points")
	tinyPoint(t, other, "b", 9)
	tinyPoint(t, other, "a", 10)
	for round := range 2 {
		ms, err := mine.RecentPoints(ctx, "a", nil)
		if err != nil || len(ms) != 3 {
			t.Fatalf("round %d: %v, %d points of a, want 3", round, err, len(ms))
		}
		if n, want := cb.take("points"), []int{2, 0}[round]; n != want {
			t.Fatalf("round %d: %d manifests read, want %d (the new ones, once)", round, n, want)
		}
	}
	if all, err := mine.Points(ctx, nil); err != nil || len(all) != 8 || cb.take("points") != 0 {
		t.Fatalf("every point: %v, %d", err, len(all))
	}
}
