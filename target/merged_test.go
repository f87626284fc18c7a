package target_test

import (
	"context"
	"crypto/sha256"
	"strings"
	"testing"

	"github.com/virtkeep/virtkeep/target"
	"github.com/virtkeep/virtkeep/target/mem"
	"github.com/virtkeep/virtkeep/testenv"
)

// keysUnder lists the keys under prefix.
func keysUnder(t *testing.T, b target.Backend, prefix string) []string {
	t.Helper()
	var keys []string
	if err := b.List(context.Background(), prefix, func(fi target.ObjectInfo) error { keys = append(keys, fi.Key); return nil }); err != nil {
		t.Fatal(err)
	}
	return keys
}

// TestMergedIndexes: a backup that writes many packs leaves one merged
// index of them, and a host that knows none of the packs (no cache) opens
// the repository with that one read instead of one per pack; packs added
// since are read by their own index; GC replaces the merged indexes by
// one of every pack; a damaged merged index is skipped (the own indexes
// serve), check names it, and the next GC replaces it.
func TestMergedIndexes(t *testing.T) {
	eachKey(t, func(t *testing.T, key *target.Key) {
		ctx := context.Background()
		inner := mem.New()
		r := initRepo(t, inner, target.InitOptions{Key: key, PackSize: 1 << 20, Compression: target.CompressionNone})
		c, _ := testenv.NewContent(24<<20, 5, testenv.Fill{Random: 1})
		full, _ := backup(t, r, c, target.LevelFull, "", nil)
		packs := len(keysUnder(t, inner, "packs/"))
		if m := keysUnder(t, inner, "merged/"); len(m) != 1 || packs < 20 {
			t.Fatalf("a full of %d packs left %d merged indexes, want 1", packs, len(m))
		}
		cold := func(what string, points map[string]*testenv.Content, wantOwn int) {
			t.Helper()
			cb := countReads(inner)
			fresh := openRepo(t, cb, target.OpenOptions{Key: key})
			for id, c := range points {
				restoreEquals(t, fresh, id, c)
			}
			if own, merged := cb.take("packindex"), cb.take("merged"); own != wantOwn || merged < 1 {
				t.Fatalf("%s: a cold open read %d own pack indexes (want %d) and %d merged", what, own, wantOwn, merged)
			}
		}
		cold("after the full", map[string]*testenv.Content{full.ID: c}, 0)

		c2 := c.Snapshot()
		_ = c2.Record(testenv.Write{Off: 3 << 20, Len: 256 << 10, Pattern: 9})
		inc, _ := backup(t, r, c2, target.LevelInc, full.ID, func(off, n int64) bool { return off == 3<<20 })
		cold("after an incremental of one pack", map[string]*testenv.Content{full.ID: c, inc.ID: c2}, 1)

		st, err := r.GC(ctx, target.GCOptions{Grace: -1})
		if err != nil || st.MergedIndexes != 1 {
			t.Fatalf("gc: %v, %d merged indexes written", err, st.MergedIndexes)
		}
		merged := keysUnder(t, inner, "merged/")
		if len(merged) != 1 {
			t.Fatalf("after gc: %d merged indexes, want 1", len(merged))
		}
		cold("after gc", map[string]*testenv.Content{full.ID: c, inc.ID: c2}, 0)

		obj, _ := inner.Get(ctx, merged[0], 0, -1)
		obj[len(obj)/2] ^= 1
		_ = inner.Put(ctx, merged[0], obj)
		cold("with the merged index damaged", map[string]*testenv.Content{full.ID: c, inc.ID: c2}, packs+1)
		rep, err := openRepo(t, inner, target.OpenOptions{Key: key}).Check(ctx, target.CheckOptions{})
		if err != nil || len(rep.Problems) != 1 || rep.Problems[0].Object != merged[0] || !strings.Contains(rep.Problems[0].Error, "merged") {
			t.Fatalf("check with a damaged merged index: %v, %+v", err, rep)
		}
		if _, err := r.GC(ctx, target.GCOptions{Grace: -1}); err != nil {
			t.Fatal(err)
		}
		rep, err = openRepo(t, inner, target.OpenOptions{Key: key}).Check(ctx, target.CheckOptions{ReadData: true})
		if err != nil || !rep.OK() {
			t.Fatalf("check after the next gc: %v, %+v", err, rep)
		}
	})
}

// TestWrongMergedRecord: a merged index whose record of a pack names a
// chunk the pack's own index does not (a bug, or a writer of an
// unencrypted repository's storage), checksum and sizes intact, misleads
// no restore (a chunk not found is looked for in the own indexes before
// it is called missing), check names it, and GC replaces it.
func TestWrongMergedRecord(t *testing.T) {
	ctx := context.Background()
	inner := mem.New()
	r := initRepo(t, inner, target.InitOptions{PackSize: 1 << 20, Compression: target.CompressionNone})
	c, _ := testenv.NewContent(20<<20, 6, testenv.Fill{Random: 1})
	full, _ := backup(t, r, c, target.LevelFull, "", nil)
	merged := keysUnder(t, inner, "merged/")
	if len(merged) != 1 {
		t.Fatalf("%d merged indexes", len(merged))
	}
	// Unencrypted and uncompressed: a 12-byte header, then the plaintext:
	// a SHA-256 of the rest, a record head (pack, sizes, length: 52
	// bytes), the pack's index (its pack ID, then type and ID of each
	// entry). Change the first entry's ID and mend the checksum.
	obj, _ := inner.Get(ctx, merged[0], 0, -1)
	plain := obj[12:]
	plain[32+52+32+1] ^= 0xff
	sum := sha256.Sum256(plain[32:])
	copy(plain, sum[:])
	_ = inner.Put(ctx, merged[0], obj)

	restoreEquals(t, openRepo(t, inner, target.OpenOptions{}), full.ID, c)
	rep, err := openRepo(t, inner, target.OpenOptions{}).Check(ctx, target.CheckOptions{})
	if err != nil || len(rep.Problems) != 1 || rep.Problems[0].Object != merged[0] || !strings.Contains(rep.Problems[0].Error, "differs from that pack's own index") {
		t.Fatalf("check of a wrong merged record: %v, %+v", err, rep)
	}
	if _, err := r.GC(ctx, target.GCOptions{Grace: -1}); err != nil {
		t.Fatal(err)
	}
	if rep, err := openRepo(t, inner, target.OpenOptions{}).Check(ctx, target.CheckOptions{}); err != nil || !rep.OK() {
		t.Fatalf("check after gc: %v, %+v", err, rep)
	}
}
