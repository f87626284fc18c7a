package target_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/virtkeep/virtkeep/target"
	"github.com/virtkeep/virtkeep/target/local"
	"github.com/virtkeep/virtkeep/testenv"
)

// smallFS mounts a new 48 MiB ext4 file system for the rest of the test.
func smallFS(t *testing.T) string {
	t.Helper()
	testenv.Integration(t)
	testenv.RequireCommands(t, "mkfs.ext4", "mount", "umount")
	dir := testenv.TempDir(t)
	img, mnt := filepath.Join(dir, "fs.img"), filepath.Join(dir, "mnt")
	os.Mkdir(mnt, 0o700)
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	os.Truncate(img, 48<<20)
	for _, c := range [][]string{{"mkfs.ext4", "-q", "-m", "0", img}, {"mount", "-o", "loop", img, mnt}} {
		if out, err := exec.Command(c[0], c[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v %s", c, err, out)
		}
	}
	t.Cleanup(func() { exec.Command("umount", "-d", mnt).Run() })
	return mnt
}

// tryWrite is backup that returns the error instead of failing the test.
func tryWrite(r *target.Repository, c *testenv.Content) (*target.Manifest, error) {
	ctx := context.Background()
	pw, err := r.NewPoint(ctx, target.PointSpec{Domain: "vm1", DomainUUID: "u-1", Level: target.LevelFull})
	if err != nil {
		return nil, err
	}
	dw, err := pw.AddDisk(ctx, target.DiskSpec{Name: "vda", VirtualSize: c.Size()})
	if err == nil {
		buf := make([]byte, dw.ChunkSize())
		for idx := int64(0); idx < dw.Chunks() && err == nil; idx++ {
			_, _ = c.ReadAt(buf, idx*int64(len(buf)))
			err = dw.WriteChunk(ctx, idx, buf)
		}
		if err == nil {
			err = dw.Close(ctx)
		}
	}
	if err != nil {
		pw.Abort(ctx)
		return nil, err
	}
	return pw.Commit(ctx)
}

// TestLocalTargetFullAndReadOnly: a local target whose file system fills
// up, then turns read-only. Each failed backup says why (no space left,
// read-only file system), nothing of it becomes visible, the repository
// stays consistent, the earlier point restores, and once there is room
// again (GC removed what the failed backup left) the next backup works.
func TestLocalTargetFullAndReadOnly(t *testing.T) {
	row := &testenv.FaultRow{Fault: "local target: file system full (ENOSPC), then read-only (EROFS)", Iterations: 1,
		Checked: "the error names the cause, no point half-visible, check --read-data clean, earlier points restore, the next backup works once there is room"}
	row.Record(t)
	mnt := smallFS(t)
	ctx := context.Background()
	b, err := local.Open(local.Config{Path: filepath.Join(mnt, "repo")})
	if err != nil {
		t.Fatal(err)
	}
	r := newRepo(t, b, nil)
	small, _ := testenv.NewContent(8<<20, 81, testenv.Fill{Random: 1})
	first, _ := backup(t, r, small, target.LevelFull, "", nil)

	big, _ := testenv.NewContent(96<<20, 82, testenv.Fill{Random: 1})
	_, err = tryWrite(r, big)
	if !errors.Is(err, syscall.ENOSPC) || !strings.Contains(err.Error(), "no space left on device") {
		t.Fatalf("backup into a full file system: %v, want ENOSPC said", err)
	}
	pts, _ := r.Points(ctx, nil)
	if len(pts) != 1 {
		t.Fatalf("%d points after the failed backup, want the first only", len(pts))
	}
	if rep, err := r.Check(ctx, target.CheckOptions{ReadData: true}); err != nil || !rep.OK() {
		t.Fatalf("check after ENOSPC: %v %v", rep, err)
	}
	restoreEquals(t, r, first.ID, small)
	if _, err := r.GC(ctx, target.GCOptions{Grace: -1}); err != nil {
		t.Fatalf("gc after ENOSPC: %v", err)
	}
	other, _ := testenv.NewContent(8<<20, 83, testenv.Fill{Random: 1})
	if _, err := tryWrite(r, other); err != nil {
		t.Fatalf("backup once GC made room: %v", err)
	}

	if out, err := exec.Command("mount", "-o", "remount,ro", mnt).CombinedOutput(); err != nil {
		t.Fatalf("remount ro: %v %s", err, out)
	}
	third, _ := testenv.NewContent(8<<20, 84, testenv.Fill{Random: 1})
	_, err = tryWrite(r, third)
	if !errors.Is(err, syscall.EROFS) || !strings.Contains(err.Error(), "read-only file system") {
		t.Fatalf("backup into a read-only file system: %v, want EROFS said", err)
	}
	restoreEquals(t, r, first.ID, small)
	if out, err := exec.Command("mount", "-o", "remount,rw", mnt).CombinedOutput(); err != nil {
		t.Fatalf("remount rw: %v %s", err, out)
	}
	if _, err := tryWrite(r, third); err != nil {
		t.Fatalf("backup after the file system is writable again: %v", err)
	}
	if rep, err := r.Check(ctx, target.CheckOptions{ReadData: true}); err != nil || !rep.OK() {
		t.Fatalf("check at the end: %v %v", rep, err)
	}
}
