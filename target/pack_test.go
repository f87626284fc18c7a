package target_test

import (
	"cmp"
	"context"
	"os"
	"slices"
	"testing"

	"github.com/virtkeep/virtkeep/target"
	"github.com/virtkeep/virtkeep/target/local"
	"github.com/virtkeep/virtkeep/testenv"
)

// TestPacks: chunks go into packs of the repository's pack size; another
// process reads them through the pack indexes; a second full stores
// nothing; a damaged pack is found by check --read-data, its chunk is
// dropped from the index and stored again by the next backup; GC deletes
// dead packs and repacks half-dead ones, and every point still restores.
func TestPacks(t *testing.T) {
	eachKey(t, func(t *testing.T, key *target.Key) {
		ctx := context.Background()
		dir := t.TempDir()
		b, err := local.Open(local.Config{Path: dir})
		if err != nil {
			t.Fatal(err)
		}
		r := newRepo(t, b, key)
		c, _ := testenv.NewContent(8<<20, 1, testenv.Fill{Random: 1})
		p1, st := backup(t, r, c, target.LevelFull, "", nil)
		packs := objectFiles(t, dir, "packs")
		if n := len(packs); n < 8 || n > 9 || len(objectFiles(t, dir, "chunks")) != 0 || st.ChunksNew != 32 {
			t.Fatalf("8 MiB in 1 MiB packs: %d packs, %d chunk objects, %d chunks new", n, len(objectFiles(t, dir, "chunks")), st.ChunksNew)
		}
		if _, st := backup(t, r, c, target.LevelFull, "", nil); st.ChunksNew != 0 || st.ChunksDedup != 32 {
			t.Fatalf("second full: %+v: want every chunk found", st)
		}
		r2, err := target.Open(ctx, b, target.OpenOptions{Key: key})
		if err != nil {
			t.Fatal(err)
		}
		restoreEquals(t, r2, p1.ID, c)

		// Damage a chunk in a full pack (the short last one holds the
		// pages): found, dropped, stored again, healed.
		slices.SortFunc(packs, func(a, b string) int { return cmp.Compare(fileSize(b), fileSize(a)) })
		flipByte(t, packs[0], 100)
		rep, err := r2.Check(ctx, target.CheckOptions{ReadData: true, Quarantine: true})
		if err != nil || rep.OK() || len(rep.Quarantined) != 1 {
			t.Fatalf("check of a damaged pack: %v %v", rep, err)
		}
		if _, st := backup(t, r, c, target.LevelFull, "", nil); st.ChunksNew != 1 {
			t.Fatalf("full after quarantine stored %d chunks, want the damaged one", st.ChunksNew)
		}
		if rep, err := r2.Check(ctx, target.CheckOptions{ReadData: true}); err != nil || !rep.OK() {
			t.Fatalf("after the chunk was stored again: %v %v", rep, err)
		}
		restoreEquals(t, r2, p1.ID, c)

		// Three chunks in four rewritten, every full deleted: the old
		// packs are mostly dead and are repacked.
		for k := int64(0); k < 32; k++ {
			if k%4 != 3 {
				_ = c.Record(testenv.Write{Off: k * 256 << 10, Len: 256 << 10, Pattern: 7})
			}
		}
		inc, _ := backup(t, r, c, target.LevelInc, p1.ID, overlaps(c.Writes()))
		pts, _ := r.Points(ctx, nil)
		for _, m := range pts {
			if m.ID != inc.ID {
				if err := r.DeletePoint(ctx, m.ID); err != nil {
					t.Fatal(err)
				}
			}
		}
		before := objectFiles(t, dir, "packs")
		gst, err := r2.GC(ctx, target.GCOptions{Grace: -1})
		if err != nil || gst.Repacked == 0 || gst.BytesFreed < 1<<20 {
			t.Fatalf("gc: %+v %v: want half-dead packs repacked", gst, err)
		}
		after := objectFiles(t, dir, "packs")
		if len(after) >= len(before) {
			t.Errorf("gc left %d packs of %d", len(after), len(before))
		}
		for _, r := range []*target.Repository{r, r2} {
			if rep, err := r.Check(ctx, target.CheckOptions{ReadData: true}); err != nil || !rep.OK() {
				t.Fatalf("after gc: %v %v", rep, err)
			}
			restoreEquals(t, r, inc.ID, c)
		}
		// The index of a pack that never arrived (a writer killed between
		// the two puts) is ignored: its chunks are stored again.
		for _, p := range objectFiles(t, dir, "packs") {
			os.Remove(p)
		}
		if _, st := backup(t, r, c, target.LevelFull, "", nil); st.ChunksNew != 9 {
			t.Fatalf("full with every pack gone stored %d chunks, want 9 (24 alike)", st.ChunksNew)
		}
	})
}

func fileSize(p string) int64 {
	fi, err := os.Stat(p)
	if err != nil {
		return 0
	}
	return fi.Size()
}
