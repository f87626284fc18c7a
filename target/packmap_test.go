package target_test

import (
	"context"
	"testing"

	"github.com/virtkeep/virtkeep/target"
	"github.com/virtkeep/virtkeep/target/mem"
	"github.com/virtkeep/virtkeep/testenv"
)

func packKeys(t *testing.T, b target.Backend) map[string]bool {
	t.Helper()
	out := map[string]bool{}
	if err := b.List(context.Background(), "packs/", func(fi target.ObjectInfo) error { out[fi.Key] = true; return nil }); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestReaderSurvivesOtherHostsGC: two hosts packed the same chunks, each
// in a pack of its own. A long-lived reader knows both packs but kept one
// location per chunk: the second pack's. Another host's GC keeps the
// first pack and deletes the second (all its chunks live in the first).
// The reader must find the chunks in the pack it knew, not fail until
// restarted.
func TestReaderSurvivesOtherHostsGC(t *testing.T) {
	ctx := context.Background()
	c, _ := testenv.NewContent(512<<10, 21, testenv.Fill{Random: 1})
	other, _ := testenv.NewContent(512<<10, 22, testenv.Fill{Random: 1})
	for attempt := 0; ; attempt++ {
		if attempt == 40 {
			t.Fatal("the two packs never sorted as the test needs")
		}
		b := mem.New()
		if err := target.Init(ctx, b, target.InitOptions{PackSize: testPackSize}); err != nil {
			t.Fatal(err)
		}
		hostA := openRepo(t, b, target.OpenOptions{Host: "a"})
		hostB := openRepo(t, b, target.OpenOptions{Host: "b"})
		// Both start before either has stored anything: each packs all.
		pwA, err := hostA.NewPoint(ctx, target.PointSpec{Domain: "vm1", Level: target.LevelFull})
		if err != nil {
			t.Fatal(err)
		}
		mB, _ := backup(t, hostB, c, target.LevelFull, "", nil)
		packB := packKeys(t, b)
		reader := openRepo(t, b, target.OpenOptions{})
		restoreEquals(t, reader, mB.ID, c) // the reader knows pack B

		dw, _ := pwA.AddDisk(ctx, target.DiskSpec{Name: "vda", VirtualSize: c.Size()})
		buf := make([]byte, dw.ChunkSize())
		for idx := range dw.Chunks() {
			_, _ = c.ReadAt(buf, idx*int64(len(buf)))
			if err := dw.WriteChunk(ctx, idx, buf); err != nil {
				t.Fatal(err)
			}
		}
		if err := dw.Close(ctx); err != nil {
			t.Fatal(err)
		}
		if _, err := pwA.Commit(ctx); err != nil {
			t.Fatal(err)
		}
		var keyA, keyB string
		for k := range packKeys(t, b) {
			if packB[k] {
				keyB = k
			} else {
				keyA = k
			}
		}
		if len(packB) != 1 || keyA == "" || keyA > keyB {
			continue // GC would keep B's pack: the reader is not in danger
		}
		// A third point makes the reader read indexes again: it learns
		// pack A, whose chunks it has at pack B already.
		mC, _ := backup(t, hostB, other, target.LevelFull, "", nil)
		restoreEquals(t, reader, mC.ID, other)

		gc := openRepo(t, b, target.OpenOptions{})
		if _, err := gc.GC(ctx, target.GCOptions{Grace: -1}); err != nil {
			t.Fatal(err)
		}
		if packKeys(t, b)[keyB] {
			t.Fatal("gc kept pack B: the test does not overlap")
		}
		restoreEquals(t, reader, mB.ID, c)
		return
	}
}
