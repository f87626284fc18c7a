package target_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/virtkeep/virtkeep/target"
	"github.com/virtkeep/virtkeep/target/faulty"
	"github.com/virtkeep/virtkeep/target/mem"
	"github.com/virtkeep/virtkeep/testenv"
)

func openRepo(t *testing.T, b target.Backend, o target.OpenOptions) *target.Repository {
	t.Helper()
	r, err := target.Open(context.Background(), b, o)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// TestLocksTwoHostsOneHostname: two hosts called localhost (clones,
// containers) on one bucket. A lock is only broken as dead when its
// holder's machine and boot are ours and its process is gone, so neither
// host deletes the other's live lock; our own dead process's lock goes.
func TestLocksTwoHostsOneHostname(t *testing.T) {
	srv := testenv.S3(t)
	b := s3Backend(t, srv, "twohosts")
	ctx := context.Background()
	if err := target.Init(ctx, b, target.InitOptions{}); err != nil {
		t.Fatal(err)
	}
	a := openRepo(t, b, target.OpenOptions{Host: "localhost"})
	other := target.OwnerOf(a)
	other.MachineID, other.PID, other.Start = "0123456789abcdef0123456789abcdef", 999999, 1
	target.SetOwner(a, other)
	held, err := a.Lock(ctx, false) // host A: a backup, PID 999999 does not run on host B
	if err != nil {
		t.Fatal(err)
	}
	defer held.Unlock(ctx)
	hostB := openRepo(t, b, target.OpenOptions{Host: "localhost"})
	if _, err := hostB.GC(ctx, target.GCOptions{}); !errors.Is(err, target.ErrLocked) {
		t.Fatalf("gc on host B beside host A's backup: %v", err)
	}
	if err := held.Check(ctx); err != nil {
		t.Fatalf("host A's lock after host B looked at it: %v", err)
	}

	// A lock of this very machine and boot whose process is gone is dead.
	dead := openRepo(t, b, target.OpenOptions{Host: "localhost"})
	me := target.OwnerOf(dead)
	me.PID, me.Start = 999999, 1
	target.SetOwner(dead, me)
	if _, err := dead.Lock(ctx, true); err == nil {
		t.Fatal("exclusive lock beside host A's shared one")
	}
	held.Unlock(ctx)
	if _, err := dead.Lock(ctx, true); err != nil { // never unlocked: the process "died"
		t.Fatal(err)
	}
	x, err := hostB.Lock(ctx, true)
	if err != nil {
		t.Fatalf("our own dead process's lock was not broken: %v", err)
	}
	x.Unlock(ctx)
}

// TestLockRefreshFailsMidBackup: a writer whose lock could not be refreshed
// for half the stale period stops storing and never commits, and a GC that
// took that lock as stale and swept an old chunk the backup reused leaves
// no point that references the swept chunk.
func TestLockRefreshFailsMidBackup(t *testing.T) {
	ctx := context.Background()
	inner := mem.New()
	fb := faulty.Wrap(inner)
	if err := target.Init(ctx, fb, target.InitOptions{}); err != nil {
		t.Fatal(err)
	}
	const stale = 600 * time.Millisecond
	r := openRepo(t, fb, target.OpenOptions{LockStale: stale})
	c, _ := testenv.NewContent(1<<20, 9, testenv.Fill{Random: 1})

	// An old point, deleted: its chunks are unreferenced and past GC's grace.
	inner.SetClock(func() time.Time { return time.Now().Add(-48 * time.Hour) })
	old, _ := backup(t, r, c, target.LevelFull, "", nil)
	inner.SetClock(time.Now)
	if err := r.DeletePoint(ctx, old.ID); err != nil {
		t.Fatal(err)
	}

	// The backup reuses those chunks (dedup hits), then its lock cannot
	// be refreshed.
	pw, err := r.NewPoint(ctx, target.PointSpec{Domain: "vm1", Level: target.LevelFull})
	if err != nil {
		t.Fatal(err)
	}
	dw, err := pw.AddDisk(ctx, target.DiskSpec{Name: "vda", VirtualSize: c.Size()})
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, dw.ChunkSize())
	write := func(from, to int64) error {
		for idx := from; idx < to; idx++ {
			_, _ = c.ReadAt(buf, idx*int64(len(buf)))
			if err := dw.WriteChunk(ctx, idx, buf); err != nil {
				return err
			}
		}
		return nil
	}
	if err := write(0, 2); err != nil {
		t.Fatal(err)
	}
	fb.FailPutAfter(0, "locks/")
	time.Sleep(stale + 200*time.Millisecond)

	// Another host's GC: by the backend's clock the backup's lock is stale.
	gc := openRepo(t, inner, target.OpenOptions{LockStale: stale})
	st, err := gc.GC(ctx, target.GCOptions{Grace: 24 * time.Hour})
	if err != nil {
		t.Fatalf("gc beside a stale lock: %v", err)
	}
	if st.Deleted == 0 {
		t.Fatal("gc swept nothing: the test does not overlap")
	}
	err = write(2, dw.Chunks())
	if err == nil {
		err = dw.Close(ctx)
	}
	if !errors.Is(err, target.ErrLockLost) {
		t.Fatalf("writing after the lock lapsed: %v, want ErrLockLost", err)
	}
	if _, err := pw.Commit(ctx); err == nil {
		t.Fatal("a point whose lock lapsed was committed")
	}
	fb.FailPutAfter(-1, "")
	if pts, _ := gc.Points(ctx, nil); len(pts) != 0 {
		t.Fatalf("%d points visible, want none", len(pts))
	}

	// Check catches a lock removed or replaced under a live writer even
	// when refreshes work.
	pw, err = r.NewPoint(ctx, target.PointSpec{Domain: "vm1", Level: target.LevelFull})
	if err != nil {
		t.Fatal(err)
	}
	defer pw.Abort(ctx)
	var keys []string
	_ = inner.List(ctx, "locks/", func(fi target.ObjectInfo) error { keys = append(keys, fi.Key); return nil })
	for _, k := range keys {
		_ = inner.Delete(ctx, k)
	}
	dw, _ = pw.AddDisk(ctx, target.DiskSpec{Name: "vda", VirtualSize: c.Size()})
	_ = write(0, dw.Chunks())
	_ = dw.Close(ctx)
	if _, err := pw.Commit(ctx); !errors.Is(err, target.ErrLockLost) {
		t.Fatalf("commit after the lock object was removed: %v", err)
	}
}

// TestCommitSeesExclusiveBesideOtherBackups: with another backup's shared
// lock listed first, an exclusive lock taken beside ours is still found
// before the manifest is written.
func TestCommitSeesExclusiveBesideOtherBackups(t *testing.T) {
	ctx := context.Background()
	r, _ := localRepo(t, nil) // lists in name order
	b := r.Backend()
	other, err := r.Lock(ctx, false) // another backup
	if err != nil {
		t.Fatal(err)
	}
	defer other.Unlock(ctx)
	pw, err := r.NewPoint(ctx, target.PointSpec{Domain: "vm1", Level: target.LevelFull})
	if err != nil {
		t.Fatal(err)
	}
	defer pw.Abort(ctx)
	dw, err := pw.AddDisk(ctx, target.DiskSpec{Name: "vda", VirtualSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if err := dw.Close(ctx); err != nil {
		t.Fatal(err)
	}
	// A GC elsewhere that took ours as stale; "z" sorts after the hex
	// names of the shared locks.
	if err := b.Put(ctx, "locks/zzzz", []byte(`{"host":"elsewhere","pid":1,"exclusive":true}`)); err != nil {
		t.Fatal(err)
	}
	if _, err := pw.Commit(ctx); !errors.Is(err, target.ErrLockLost) {
		t.Fatalf("commit beside an exclusive lock: %v, want ErrLockLost", err)
	}
}
