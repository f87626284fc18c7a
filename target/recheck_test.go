package target_test

import (
	"context"
	"errors"
	"path"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/virtkeep/virtkeep/target"
	"github.com/virtkeep/virtkeep/target/faulty"
	"github.com/virtkeep/virtkeep/target/mem"
	"github.com/virtkeep/virtkeep/testenv"
)

// stallOnce makes the first List of prefix on fb stall like a stopped
// process: the lock's refreshes fail, and after the stale period event
// runs (another host at work) before the List goes on.
func stallOnce(fb *faulty.Backend, prefix string, stale time.Duration, event func()) {
	var once sync.Once
	fb.BeforeList(prefix, func() {
		once.Do(func() {
			fb.FailPutAfter(0, "locks/")
			time.Sleep(stale + 200*time.Millisecond)
			event()
			fb.FailPutAfter(-1, "")
		})
	})
}

// TestGCStalledPastStaleDeletesNothing: a GC that stalls past the stale
// period lets another host take its lock as stale, back up a point that
// reuses old unreferenced packs, and commit. The GC must then give up
// (ErrLockLost) instead of sweeping with its old live set, and the other
// host's point restores.
func TestGCStalledPastStaleDeletesNothing(t *testing.T) {
	(&testenv.FaultRow{Fault: "GC stalled past the lock's stale period while another host backed up", Iterations: 1,
		Checked: "GC gives up with ErrLockLost, the other host's point restores byte-exact, check --read-data clean"}).Record(t)
	ctx := context.Background()
	inner := mem.New()
	fb := faulty.Wrap(inner)
	const stale = 600 * time.Millisecond
	if err := target.Init(ctx, fb, target.InitOptions{PackSize: testPackSize}); err != nil {
		t.Fatal(err)
	}
	a := openRepo(t, fb, target.OpenOptions{LockStale: stale})
	c, _ := testenv.NewContent(4<<20, 5, testenv.Fill{Random: 1})
	inner.SetClock(func() time.Time { return time.Now().Add(-48 * time.Hour) })
	old, _ := backup(t, a, c, target.LevelFull, "", nil)
	inner.SetClock(time.Now)
	if err := a.DeletePoint(ctx, old.ID); err != nil {
		t.Fatal(err)
	}

	var other *target.Manifest
	stallOnce(fb, "packs/", stale, func() {
		b := openRepo(t, inner, target.OpenOptions{LockStale: stale})
		other, _ = backup(t, b, c, target.LevelFull, "", nil)
	})
	st, err := a.GC(ctx, target.GCOptions{Grace: 24 * time.Hour})
	if !errors.Is(err, target.ErrLockLost) {
		t.Fatalf("gc that stalled past the stale period: %v (deleted %d), want ErrLockLost", err, st.Deleted)
	}
	if other == nil {
		t.Fatal("the other host's backup did not run")
	}
	fresh := openRepo(t, inner, target.OpenOptions{})
	restoreEquals(t, fresh, other.ID, c)
	rep, err := fresh.Check(ctx, target.CheckOptions{ReadData: true})
	if err != nil || !rep.OK() {
		t.Fatalf("check after the stalled gc: %v %v", err, rep)
	}
}

// TestPruneStalledPastStaleDeletesNothing: a prune whose lock lapsed while
// it decided removes no point.
func TestPruneStalledPastStaleDeletesNothing(t *testing.T) {
	ctx := context.Background()
	inner := mem.New()
	fb := faulty.Wrap(inner)
	const stale = 600 * time.Millisecond
	if err := target.Init(ctx, fb, target.InitOptions{PackSize: testPackSize}); err != nil {
		t.Fatal(err)
	}
	r := openRepo(t, fb, target.OpenOptions{LockStale: stale})
	c, _ := testenv.NewContent(1<<20, 6, testenv.Fill{Random: 1})
	backup(t, r, c, target.LevelFull, "", nil)
	backup(t, r, c, target.LevelFull, "", nil)
	stallOnce(fb, "protect/", stale, func() {})
	_, err := r.Prune(ctx, "", target.Retention{KeepLast: 1}, false)
	if !errors.Is(err, target.ErrLockLost) {
		t.Fatalf("prune that stalled past the stale period: %v, want ErrLockLost", err)
	}
	if pts, _ := r.Points(ctx, nil); len(pts) != 2 {
		t.Fatalf("%d points left, want both", len(pts))
	}
}

// syncRecorder records the keys SyncObjects is asked to make durable.
type syncRecorder struct {
	target.Backend
	mu   sync.Mutex
	keys map[string]bool
}

func (s *syncRecorder) SyncObjects(ctx context.Context, keys []string) error {
	s.mu.Lock()
	for _, k := range keys {
		s.keys[k] = true
	}
	s.mu.Unlock()
	return s.Backend.SyncObjects(ctx, keys)
}

// TestCommitSyncsWhatItReuses: a point that reuses objects stored before it
// (another process may have put them and died before its Sync) asks the
// backend to make them durable before its manifest: the packs (format 2)
// or the objects' directories (format 1) of every chunk and page it
// deduplicated.
func TestCommitSyncsWhatItReuses(t *testing.T) {
	for _, packSize := range []int{testPackSize, -1} {
		rec := &syncRecorder{Backend: mem.New(), keys: map[string]bool{}}
		r := initRepo(t, rec, target.InitOptions{PackSize: packSize})
		c, _ := testenv.NewContent(2<<20, 51, testenv.Fill{Random: 1})
		first, _ := backup(t, r, c, target.LevelFull, "", nil)
		var stored []string
		for _, prefix := range []string{"packs/", "packindex/", "chunks/", "index/"} {
			_ = rec.List(context.Background(), prefix, func(fi target.ObjectInfo) error {
				stored = append(stored, path.Dir(fi.Key))
				return nil
			})
		}
		clear(rec.keys)
		backup(t, r, c, target.LevelFull, "", nil) // all of it deduplicated
		dirs := map[string]bool{}
		for k := range rec.keys {
			dirs[path.Dir(k)] = true
		}
		for _, d := range stored {
			if !dirs[d] {
				t.Errorf("pack size %d: the second point reuses objects in %s (stored for %s) but did not ask to make them durable (asked: %v)", packSize, d, first.ID, rec.keys)
			}
		}
	}
}

// TestGCGraceByBackendTime: GC's grace period is measured with the
// backend's clock. A server whose clock is two days behind ours stamps
// objects just written as two days old by our clock: they must still be
// young, since a backup may be about to reference them.
func TestGCGraceByBackendTime(t *testing.T) {
	ctx := context.Background()
	b := mem.New()
	b.SetClock(func() time.Time { return time.Now().Add(-48 * time.Hour) })
	r := newRepo(t, b, nil)
	pw, err := r.NewPoint(ctx, target.PointSpec{Domain: "vm1", Level: target.LevelFull})
	if err != nil {
		t.Fatal(err)
	}
	dw, _ := pw.AddDisk(ctx, target.DiskSpec{Name: "vda", VirtualSize: 4 << 20})
	c, _ := testenv.NewContent(4<<20, 61, testenv.Fill{Random: 1})
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
	pw.Abort(ctx) // as a backup still running looks: packs no manifest names yet
	st, err := r.GC(ctx, target.GCOptions{Grace: 24 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if st.Deleted != 0 || st.KeptYoung == 0 {
		t.Fatalf("gc with the server's clock two days behind: deleted %d, kept young %d: want nothing deleted", st.Deleted, st.KeptYoung)
	}
}

// TestDamagedPackIndexRepaired: a damaged pack index no longer stops GC
// for good. Before the repair GC keeps that pack and sweeps the rest, or,
// when the pack holds a point's index pages (which point references what
// is then unknown), sweeps nothing and says which point it cannot read.
// verify --read-data (check with quarantine) names the index and moves it
// aside; the next backup of the same data stores its chunks and pages
// again, which heals the old point, and GC works again.
func TestDamagedPackIndexRepaired(t *testing.T) {
	eachKey(t, func(t *testing.T, key *target.Key) {
		for i := range 4 { // each pack index in turn: chunks only, or pages too
			damagedIndexRepaired(t, key, i)
		}
	})
}

func damagedIndexRepaired(t *testing.T, key *target.Key, which int) {
	ctx := context.Background()
	b := mem.New()
	r := newRepo(t, b, key)
	c, _ := testenv.NewContent(4<<20, 71, testenv.Fill{Random: 1})
	old, _ := backup(t, r, c, target.LevelFull, "", nil)
	var idxs []string
	_ = b.List(ctx, "packindex/", func(fi target.ObjectInfo) error { idxs = append(idxs, fi.Key); return nil })
	slices.Sort(idxs)
	idx := idxs[which%len(idxs)]
	obj, _ := b.Get(ctx, idx, 0, -1)
	obj[len(obj)-1] ^= 1
	_ = b.Put(ctx, idx, obj)

	packs := func() int {
		n := 0
		_ = b.List(ctx, "packs/", func(target.ObjectInfo) error { n++; return nil })
		return n
	}
	had := packs()
	fresh := openRepo(t, b, target.OpenOptions{Key: key})
	st, err := fresh.GC(ctx, target.GCOptions{Grace: -1})
	switch {
	case err == nil && st.DamagedIndexes == 1:
	case err != nil && strings.Contains(err.Error(), old.ID) && strings.Contains(err.Error(), "nothing swept") && packs() == had:
	default:
		t.Fatalf("gc beside damaged pack index %s: %+v %v", idx, st, err)
	}
	rep, err := fresh.Check(ctx, target.CheckOptions{ReadData: true, Quarantine: true})
	if err != nil || rep.OK() || !slices.Contains(rep.Quarantined, idx) || !slices.Contains(rep.Damaged(), old.ID) {
		t.Fatalf("check of a damaged pack index: %v %v", rep, err)
	}
	backup(t, fresh, c, target.LevelFull, "", nil)
	if _, err := fresh.GC(ctx, target.GCOptions{Grace: -1}); err != nil {
		t.Fatalf("gc after the repair (index %s): %v", idx, err)
	}
	rep, err = fresh.Check(ctx, target.CheckOptions{ReadData: true})
	if err != nil || !rep.OK() {
		t.Fatalf("check after the next backup: %v %v", rep, err)
	}
	restoreEquals(t, fresh, old.ID, c)
}

// TestDamagedPageHealed: a damaged index page (a flipped byte in its
// envelope inside a pack) is moved aside by verify --read-data like a
// damaged chunk; the next backup of the same data stores the page again,
// which heals the point, and GC, which sweeps nothing while a point's page
// cannot be read, works again. Before, the page stayed: the next backup
// took it as stored, and GC stopped for good.
func TestDamagedPageHealed(t *testing.T) {
	eachKey(t, func(t *testing.T, key *target.Key) {
		ctx := context.Background()
		b := mem.New()
		r := newRepo(t, b, key)
		c, _ := testenv.NewContent(4<<20, 72, testenv.Fill{Random: 1})
		old, _ := backup(t, r, c, target.LevelFull, "", nil)
		pk, off, n, err := target.FirstPageObject(ctx, r, old)
		if err != nil {
			t.Fatal(err)
		}
		obj, _ := b.Get(ctx, pk, 0, -1)
		obj[off+n-1] ^= 1
		_ = b.Put(ctx, pk, obj)
		fresh := openRepo(t, b, target.OpenOptions{Key: key})
		rep, err := fresh.Check(ctx, target.CheckOptions{ReadData: true, Quarantine: true})
		if err != nil || rep.OK() || len(rep.Quarantined) == 0 {
			t.Fatalf("check of a damaged page: %v %v", rep, err)
		}
		backup(t, fresh, c, target.LevelFull, "", nil)
		if _, err := fresh.GC(ctx, target.GCOptions{Grace: -1}); err != nil {
			t.Fatalf("gc after the repair: %v", err)
		}
		if rep, err := fresh.Check(ctx, target.CheckOptions{ReadData: true}); err != nil || !rep.OK() {
			t.Fatalf("check after the repair: %v %v", rep, err)
		}
		restoreEquals(t, fresh, old.ID, c)
	})
}
