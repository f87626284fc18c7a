package target_test

import (
	"context"
	"errors"
	"sync"
	"testing"

	"github.com/virtkeep/virtkeep/target"
	"github.com/virtkeep/virtkeep/target/faulty"
	"github.com/virtkeep/virtkeep/target/mem"
	"github.com/virtkeep/virtkeep/testenv"
)

// TestCopy copies a chain between repositories of every kind of pair: the
// copies keep their identity, restore byte-exact, and a second point that
// differs little moves little.
func TestCopy(t *testing.T) {
	k1, _ := target.NewKey()
	k2, _ := target.NewKey()
	for _, tc := range []struct {
		name     string
		src, dst *target.Key
	}{{"plain-plain", nil, nil}, {"plain-encrypted", nil, &k1}, {"encrypted-plain", &k1, nil}, {"encrypted-encrypted", &k1, &k2}} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			src, dst := newRepo(t, mem.New(), tc.src), newRepo(t, mem.New(), tc.dst)
			c, _ := testenv.NewContent(16<<20, 7, testenv.Fill{Random: 0.5, Zero: 0.2, Hole: 0.3})
			full, _ := backup(t, src, c, target.LevelFull, "", nil)
			w := testenv.Write{Off: 1 << 20, Len: 256 << 10, Pattern: 9}
			_ = c.Record(w)
			inc, _ := backup(t, src, c, target.LevelInc, full.ID, overlaps([]testenv.Write{w}))

			m, st1, err := target.Copy(ctx, src, dst, full.ID, target.CopyOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if m.ID != full.ID || !m.Time.Equal(full.Time) || m.Host != full.Host || m.Level != full.Level || m.DomainUUID != full.DomainUUID {
				t.Fatalf("copy lost the point's identity: %+v, want %+v", m, full)
			}
			m2, st2, err := target.Copy(ctx, src, dst, inc.ID, target.CopyOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if m2.Parent != full.ID || m2.Level != target.LevelInc {
				t.Fatalf("incremental copied as %s with parent %q", m2.Level, m2.Parent)
			}
			if st2.ChunksNew == 0 || st2.ChunksNew*8 > st1.ChunksNew {
				t.Errorf("second copy stored %d chunks, the first %d: want a few", st2.ChunksNew, st1.ChunksNew)
			}
			if tc.src == nil && tc.dst == nil && st2.ChunksRead != st2.ChunksNew {
				t.Errorf("plain to plain read %d chunks to store %d: chunks the destination holds are not read", st2.ChunksRead, st2.ChunksNew)
			}
			restoreEquals(t, dst, inc.ID, c)
			if _, st, err := target.Copy(ctx, src, dst, inc.ID, target.CopyOptions{}); err != nil || !st.Existed {
				t.Fatalf("copy again: %+v, %v: want it found in place", st, err)
			}
			rep, err := dst.Check(ctx, target.CheckOptions{ReadData: true})
			if err != nil || !rep.OK() {
				t.Fatalf("destination check: %v %v", rep, err)
			}
		})
	}
}

// TestCopyResumes interrupts a copy half way through: nothing of the
// point is visible, and the second attempt stores only the rest.
func TestCopyResumes(t *testing.T) {
	k, _ := target.NewKey()
	for _, key := range []*target.Key{nil, &k} {
		ctx := context.Background()
		src := newRepo(t, mem.New(), nil)
		fb := faulty.Wrap(mem.New())
		dst := newRepo(t, fb, key)
		c, _ := testenv.NewContent(32<<20, 3, testenv.Fill{Random: 1})
		full, _ := backup(t, src, c, target.LevelFull, "", nil)
		fb.FailPutAfter(8, "packs/")
		_, st1, err := target.Copy(ctx, src, dst, full.ID, target.CopyOptions{})
		if !errors.Is(err, faulty.ErrInjected) {
			t.Fatalf("interrupted copy: %v", err)
		}
		if _, err := dst.Point(ctx, full.ID); !errors.Is(err, target.ErrNoPoint) {
			t.Fatalf("half a copy is visible: %v", err)
		}
		fb.FailPutAfter(-1, "")
		_, st2, err := target.Copy(ctx, src, dst, full.ID, target.CopyOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if st1.ChunksNew < 8 || st1.ChunksNew+st2.ChunksNew != st2.Chunks {
			t.Errorf("resumed copy stored %d of %d chunks after %d: want only the rest", st2.ChunksNew, st2.Chunks, st1.ChunksNew)
		}
		restoreEquals(t, dst, full.ID, c)
	}
}

// TestCopyRefusesDamage: a damaged chunk in the source fails the copy, by
// either path (stored as it is, or sealed anew); nothing becomes visible.
func TestCopyRefusesDamage(t *testing.T) {
	k, _ := target.NewKey()
	for _, key := range []*target.Key{nil, &k} {
		ctx := context.Background()
		sb := mem.New()
		src, dst := newRepo(t, sb, nil), newRepo(t, mem.New(), key)
		c, _ := testenv.NewContent(4<<20, 9, testenv.Fill{Random: 1})
		full, _ := backup(t, src, c, target.LevelFull, "", nil)
		var victim string
		_ = sb.List(ctx, "packs/", func(fi target.ObjectInfo) error { victim = fi.Key; return nil })
		obj, _ := sb.Get(ctx, victim, 0, -1)
		obj[len(obj)/2] ^= 1
		_ = sb.Put(ctx, victim, obj)
		if _, _, err := target.Copy(ctx, src, dst, full.ID, target.CopyOptions{}); !errors.Is(err, target.ErrCorrupt) {
			t.Fatalf("copy of a damaged point (encrypted destination %v): %v", key != nil, err)
		}
		if _, err := dst.Point(ctx, full.ID); !errors.Is(err, target.ErrNoPoint) {
			t.Fatalf("a damaged copy is visible: %v", err)
		}
	}
}

// TestCopyExistingIsChecked: a destination that holds the point without
// all of its data (a pack gone: one of chunks, or the one of its index
// pages) is not taken as done: the copy fails with an integrity error that
// no retry would mend, instead of "existed".
func TestCopyExistingIsChecked(t *testing.T) {
	ctx := context.Background()
	src := newRepo(t, mem.New(), nil)
	c, _ := testenv.NewContent(4<<20, 4, testenv.Fill{Random: 1})
	full, _ := backup(t, src, c, target.LevelFull, "", nil)
	copied := func() (*mem.Mem, []string) {
		db := mem.New()
		if _, _, err := target.Copy(ctx, src, newRepo(t, db, nil), full.ID, target.CopyOptions{}); err != nil {
			t.Fatal(err)
		}
		var packs []string
		_ = db.List(ctx, "packs/", func(fi target.ObjectInfo) error { packs = append(packs, fi.Key); return nil })
		return db, packs
	}
	_, packs := copied()
	if len(packs) < 2 {
		t.Fatalf("the copy wrote %d packs: want chunks and index pages apart", len(packs))
	}
	for i := range packs {
		db, packs := copied()
		if err := db.Delete(ctx, packs[i]); err != nil {
			t.Fatal(err)
		}
		again := openRepo(t, db, target.OpenOptions{})
		_, st, err := target.Copy(ctx, src, again, full.ID, target.CopyOptions{})
		if err == nil || st.Existed || !target.IsIntegrity(err) {
			t.Fatalf("copy onto a point whose pack %d of %d is gone: existed %v, %v: want an integrity error", i+1, len(packs), st.Existed, err)
		}
	}
}

// TestCopyListsUnderLock: the destination's chunks are listed under its
// lock, so a GC there cannot delete unreferenced packs the copy then takes
// as stored; every point in the destination checks out afterwards.
func TestCopyListsUnderLock(t *testing.T) {
	ctx := context.Background()
	inner := mem.New()
	fb := faulty.Wrap(inner)
	src, dst := newRepo(t, mem.New(), nil), newRepo(t, fb, nil)
	c, _ := testenv.NewContent(4<<20, 8, testenv.Fill{Random: 1})
	full, _ := backup(t, src, c, target.LevelFull, "", nil)
	if _, _, err := target.Copy(ctx, src, dst, full.ID, target.CopyOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := dst.DeletePoint(ctx, full.ID); err != nil { // its packs are unreferenced now
		t.Fatal(err)
	}
	var once sync.Once
	var gcErr error
	fb.BeforeList("packs/", func() {
		once.Do(func() {
			gc := openRepo(t, inner, target.OpenOptions{})
			_, gcErr = gc.GC(ctx, target.GCOptions{Grace: -1})
		})
	})
	if _, _, err := target.Copy(ctx, src, dst, full.ID, target.CopyOptions{}); err != nil && !target.IsIntegrity(err) {
		t.Fatal(err)
	}
	if !errors.Is(gcErr, target.ErrLocked) {
		t.Errorf("gc in the middle of the copy: %v, want ErrLocked (the copy holds the destination's lock)", gcErr)
	}
	fresh := openRepo(t, inner, target.OpenOptions{})
	rep, err := fresh.Check(ctx, target.CheckOptions{ReadData: true})
	if err != nil || !rep.OK() {
		t.Fatalf("destination after the copy: %v %v", rep, err)
	}
	restoreEquals(t, fresh, full.ID, c)
}
