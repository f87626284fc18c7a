package target_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/virtkeep/virtkeep/target"
	"github.com/virtkeep/virtkeep/testenv"
)

// TestTornChunks: chunks torn to 13 bytes and to 4 KiB (a power loss
// before the data was durable, a truncation) are not taken as stored: the
// next incremental and full that hold their data store them anew, which
// heals the older point too. A chunk damaged at its full length is found
// by check --read-data, moved aside, and stored again by the next backup.
func TestTornChunks(t *testing.T) {
	eachKey(t, func(t *testing.T, key *target.Key) {
		r, dir := localRepo(t, key)
		ctx := context.Background()
		c, _ := testenv.NewContent(2<<20, 5, testenv.Fill{Random: 1, Text: 1})
		p1, _ := backup(t, r, c, target.LevelFull, "", nil)
		for idx, size := range map[int64]int64{0: 13, 1: 4096} {
			if err := os.Truncate(chunkFileOf(t, r, dir, p1.ID, idx), size); err != nil {
				t.Fatal(err)
			}
		}
		// The incremental rewrites the same data into chunks 0 and 1.
		p2, st := backup(t, r, c, target.LevelInc, p1.ID, func(off, n int64) bool { return off < 512<<10 })
		if st.ChunksNew != 2 {
			t.Fatalf("incremental stored %d chunks, want the 2 torn ones again (%+v)", st.ChunksNew, st)
		}
		p3, _ := backup(t, r, c, target.LevelFull, "", nil)
		rep, err := r.Check(ctx, target.CheckOptions{ReadData: true})
		if err != nil || !rep.OK() {
			t.Fatalf("after the re-upload: %v %v", err, rep)
		}
		for _, p := range []string{p1.ID, p2.ID, p3.ID} {
			restoreEquals(t, r, p, c)
		}

		// Damaged at full length: the size cannot tell, check can.
		flipByte(t, chunkFileOf(t, r, dir, p3.ID, 5), 200)
		rep, err = r.Check(ctx, target.CheckOptions{ReadData: true, Quarantine: true})
		if err != nil || rep.OK() || len(rep.Quarantined) != 1 || rep.QuarantineError != "" {
			t.Fatalf("damaged chunk: %v %+v", err, rep)
		}
		if _, err := os.Stat(filepath.Join(dir, "damaged", rep.Quarantined[0])); err != nil {
			t.Fatalf("quarantined copy: %v", err)
		}
		p4, st := backup(t, r, c, target.LevelFull, "", nil)
		if st.ChunksNew != 1 {
			t.Fatalf("the full after check stored %d chunks, want the damaged one", st.ChunksNew)
		}
		if rep, err := r.Check(ctx, target.CheckOptions{ReadData: true}); err != nil || !rep.OK() {
			t.Fatalf("after the re-upload: %v %v", err, rep)
		}
		restoreEquals(t, r, p1.ID, c)
		restoreEquals(t, r, p4.ID, c)
	})
}

// TestUnreadableAndStrayPoints: prune removes nothing while a manifest
// cannot be read (it could be a domain's newest point); an object under
// points/ that is no point is reported by check and stops neither GC nor
// prune; check compares each manifest with its journal entry's hash.
func TestUnreadableAndStrayPoints(t *testing.T) {
	r, dir := localRepo(t, nil)
	ctx := context.Background()
	c, _ := testenv.NewContent(1<<20, 6, testenv.Fill{Random: 1})
	var ids []string
	for i := 0; i < 3; i++ {
		m, _ := backup(t, r, c, target.LevelFull, "", nil)
		ids = append(ids, m.ID)
		time.Sleep(1100 * time.Millisecond) // distinct seconds in the IDs
	}
	stray := filepath.Join(dir, "points", "README")
	if err := os.WriteFile(stray, []byte("left by an operator"), 0o600); err != nil {
		t.Fatal(err)
	}
	rep, err := r.Check(ctx, target.CheckOptions{})
	if err != nil || !rep.OK() || len(rep.Strays) != 1 || rep.Strays[0] != "points/README" {
		t.Fatalf("check with a stray object: %v %+v", err, rep)
	}
	if _, err := r.GC(ctx, target.GCOptions{Grace: -1}); err != nil {
		t.Fatalf("gc with a stray object: %v", err)
	}

	// The newest manifest replaced by another's bytes: its journal hash
	// no longer matches, and prune refuses.
	newest := filepath.Join(dir, "points", ids[2])
	orig, _ := os.ReadFile(newest)
	other, _ := os.ReadFile(filepath.Join(dir, "points", ids[1]))
	if err := os.WriteFile(newest, other, 0o600); err != nil {
		t.Fatal(err)
	}
	rep, _ = r.Check(ctx, target.CheckOptions{})
	if rep.OK() || !strings.Contains(rep.String(), "journal") {
		t.Fatalf("check of a manifest that is not the journaled one: %v", rep)
	}
	if _, err := r.Prune(ctx, "", target.Retention{KeepLast: 1}, false); !errors.Is(err, target.ErrCorrupt) {
		t.Fatalf("prune with an unreadable manifest: %v", err)
	}
	if left, _ := os.ReadDir(filepath.Join(dir, "points")); len(left) != 4 {
		t.Fatalf("prune removed points while one was unreadable: %d left", len(left))
	}
	if err := os.WriteFile(newest, orig, 0o600); err != nil {
		t.Fatal(err)
	}
	decs, err := r.Prune(ctx, "", target.Retention{KeepLast: 1}, false)
	if err != nil || len(decs) != 3 || !decs[0].Keep || decs[1].Keep {
		t.Fatalf("prune: %v %+v", err, decs)
	}
}
