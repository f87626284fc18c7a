package target_test

import (
	"context"
	"strings"
	"sync"
	"testing"

	"github.com/virtkeep/virtkeep/target"
	"github.com/virtkeep/virtkeep/target/local"
	"github.com/virtkeep/virtkeep/testenv"
)

// listCounter counts a backend's listings by the first element of their
// prefix.
type listCounter struct {
	target.Backend
	mu    sync.Mutex
	lists map[string]int
}

func (c *listCounter) List(ctx context.Context, prefix string, fn func(target.ObjectInfo) error) error {
	c.mu.Lock()
	c.lists[strings.SplitN(prefix, "/", 2)[0]]++
	c.mu.Unlock()
	return c.Backend.List(ctx, prefix, fn)
}

// TestCachedPackSet: a writer whose cache knows the packs lists none of
// them before a point; when a pack the cache names was deleted by a GC on
// another host since, the writer does not rely on it: it finds that
// before it reuses a chunk of it, lists, and stores the chunk again, so
// the point restores byte-exact and check finds it whole.
func TestCachedPackSet(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	b, err := local.Open(local.Config{Path: dir})
	if err != nil {
		t.Fatal(err)
	}
	cache := t.TempDir()
	if err := target.Init(ctx, b, target.InitOptions{PackSize: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	hostA := func() (*target.Repository, *listCounter) {
		lc := &listCounter{Backend: b, lists: map[string]int{}}
		return openRepo(t, lc, target.OpenOptions{Host: "a", CacheDir: cache}), lc
	}
	c, _ := testenv.NewContent(6<<20, 8, testenv.Fill{Random: 1})
	a, _ := hostA()
	p1, _ := backup(t, a, c, target.LevelFull, "", nil)

	// A second point from a new process: the cached pack set serves, no
	// pack is listed, and every chunk is found (confirmed one by one).
	a, lc := hostA()
	if _, st := backup(t, a, c, target.LevelFull, "", nil); st.ChunksNew != 0 {
		t.Fatalf("a full of the same data from the cached pack set stored %d chunks", st.ChunksNew)
	}
	if n := lc.lists["packs"] + lc.lists["packindex"]; n != 0 {
		t.Fatalf("a point from the cached pack set listed packs %d times", n)
	}

	// Host B deletes every point and collects the packs.
	b2 := openRepo(t, b, target.OpenOptions{Host: "b"})
	pts, _ := b2.Points(ctx, nil)
	for _, m := range pts {
		if err := b2.DeletePoint(ctx, m.ID); err != nil {
			t.Fatal(err)
		}
	}
	if st, err := b2.GC(ctx, target.GCOptions{Grace: -1}); err != nil || st.Deleted == 0 {
		t.Fatalf("gc on host b: %v, %+v", err, st)
	}

	// Host A, from its cache, writes the same data: nothing of it is
	// stored now, and the point must not rely on the gone packs.
	a, _ = hostA()
	p3, st := backup(t, a, c, target.LevelFull, "", nil)
	if st.ChunksNew == 0 {
		t.Fatalf("a full after the packs were collected stored nothing: %+v", st)
	}
	restoreEquals(t, openRepo(t, b, target.OpenOptions{}), p3.ID, c)
	if rep, err := openRepo(t, b, target.OpenOptions{}).Check(ctx, target.CheckOptions{ReadData: true}); err != nil || !rep.OK() || rep.Points != 1 {
		t.Fatalf("check: %v, %+v", err, rep)
	}
	_ = p1
}
