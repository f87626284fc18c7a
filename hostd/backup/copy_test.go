package backup_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/virtkeep/virtkeep/bitmap"
	"github.com/virtkeep/virtkeep/hostd/backup"
	"github.com/virtkeep/virtkeep/hostd/fixture"
	"github.com/virtkeep/virtkeep/nbd"
	"github.com/virtkeep/virtkeep/target"
	"github.com/virtkeep/virtkeep/testenv"
)

func run(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %v: %v: %s", name, args, err, out)
	}
}

// backupImage backs up the image served by qemu-nbd at sock into r. With
// dirtyBitmap set it is an incremental on base.
func backupImage(t *testing.T, r *target.Repository, sock, dirtyBitmap, base string) (*target.Manifest, backup.CopyStats) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	contexts := []string{nbd.ContextBaseAllocation}
	if dirtyBitmap != "" {
		contexts = append(contexts, nbd.ContextDirtyBitmapPrefix+dirtyBitmap)
	}
	pool, err := nbd.DialPool(ctx, 2, "unix", sock, nbd.Options{MetaContexts: contexts})
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	c := pool.Client()
	plan, err := bitmap.Allocation(ctx, c, c.Size())
	if err != nil {
		t.Fatal(err)
	}
	level := target.LevelFull
	if dirtyBitmap != "" {
		level = target.LevelInc
		dirty, err := bitmap.DirtyMap(ctx, c, nbd.ContextDirtyBitmapPrefix+dirtyBitmap, c.Size())
		if err != nil {
			t.Fatal(err)
		}
		if plan, err = bitmap.Overlay(plan, dirty); err != nil {
			t.Fatal(err)
		}
	}
	pw, err := r.NewPoint(ctx, target.PointSpec{Domain: "img", Level: level, Parent: base})
	if err != nil {
		t.Fatal(err)
	}
	dw, err := pw.AddDisk(ctx, target.DiskSpec{Name: "vda", Format: "qcow2", VirtualSize: c.Size(), Base: base})
	if err != nil {
		t.Fatal(err)
	}
	var calls int
	st, err := backup.CopyDisk(ctx, pool, plan, dirtyBitmap != "", dw, backup.CopyOptions{Progress: func(done, total int64) {
		calls++
		if done > total {
			t.Errorf("progress %d of %d", done, total)
		}
	}})
	if err != nil {
		t.Fatal(err)
	}
	if calls == 0 {
		t.Error("no progress reported")
	}
	if err := dw.Close(ctx); err != nil {
		t.Fatal(err)
	}
	m, err := pw.Commit(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return m, st
}

// TestImageChainRoundTrip: a qcow2 image from testenv is backed up full,
// then five times incrementally through qemu-nbd's dirty bitmap export with
// random writes between; every point restores byte-exact, and the last one,
// served by our NBD server, is identical to the image for qemu-img compare.
func TestImageChainRoundTrip(t *testing.T) {
	testenv.Integration(t)
	testenv.RequireCommands(t, "qemu-img", "qemu-io", "qemu-nbd")
	ctx := context.Background()
	dir := testenv.TempDir(t)
	content, _ := testenv.NewContent(96<<20, 31, testenv.Fill{})
	img := filepath.Join(dir, "vda.qcow2")
	if err := testenv.WriteImage(ctx, content, img, "qcow2"); err != nil {
		t.Fatal(err)
	}
	r := fixture.Repo(t, filepath.Join(dir, "repo"))
	run(t, "qemu-img", "bitmap", "--add", img, "b0")
	sock, stop := testenv.QemuNBD(t, img, "qcow2")
	full, st := backupImage(t, r, sock, "", "")
	stop()
	if st.BytesRead != content.Allocated()-zeroBytes(content) {
		t.Errorf("full read %d bytes, image holds %d of data", st.BytesRead, content.Allocated()-zeroBytes(content))
	}
	points := []*target.Manifest{full}
	states := []*testenv.Content{content.Snapshot()}
	rng := rand.New(rand.NewPCG(3, 4))
	for i := 1; i <= 5; i++ {
		var cmds []string
		var written int64
		for j := 0; j < 12; j++ {
			w := testenv.Write{Off: rng.Int64N(content.Size()-200000) &^ 511, Len: (1 + rng.Int64N(300)) * 512, Pattern: byte(rng.IntN(255) + 1)}
			if j == 0 {
				w.Zero, w.Pattern = true, 0
			}
			_ = content.Record(w)
			written += w.Len
			if w.Zero {
				cmds = append(cmds, "-c", fmt.Sprintf("write -z %d %d", w.Off, w.Len))
			} else {
				cmds = append(cmds, "-c", fmt.Sprintf("write -P %d %d %d", w.Pattern, w.Off, w.Len))
			}
		}
		run(t, "qemu-io", append(append([]string{"-f", "qcow2"}, cmds...), img)...)
		run(t, "qemu-img", "bitmap", "--add", img, fmt.Sprintf("b%d", i))
		sock, stop := testenv.QemuNBD(t, img, "qcow2", fmt.Sprintf("--bitmap=b%d", i-1))
		m, st := backupImage(t, r, sock, fmt.Sprintf("b%d", i-1), points[len(points)-1].ID)
		stop()
		// Only dirty chunks are read: a few 256 KiB chunks per write.
		if st.BytesRead > 12*3*256<<10 || st.BytesSkipped < content.Size()/2 {
			t.Errorf("incremental %d: %+v for %d bytes written", i, st, written)
		}
		points = append(points, m)
		states = append(states, content.Snapshot())
	}
	for i, m := range points {
		d, err := r.OpenDisk(ctx, m.ID, "vda")
		if err != nil {
			t.Fatal(err)
		}
		got := make([]byte, d.Size())
		if err := d.ReadAt(ctx, got, 0); err != nil {
			t.Fatal(err)
		}
		want := make([]byte, d.Size())
		_, _ = states[i].ReadAt(want, 0)
		if string(got) != string(want) {
			t.Fatalf("point %d (%s) differs from the disk at its time", i, m.Level)
		}
	}
	if rep, err := r.Check(ctx, target.CheckOptions{ReadData: true}); err != nil || !rep.OK() {
		t.Fatalf("check: %v %v", err, rep)
	}
	// Serve the newest point and let qemu-img compare it with the image.
	d, _ := r.OpenDisk(ctx, points[len(points)-1].ID, "vda")
	srv := &nbd.Server{Exports: []nbd.Export{{Name: "vda", Source: d}}}
	ln, err := net.Listen("unix", filepath.Join(dir, "serve.sock"))
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()
	run(t, "qemu-img", "compare", "-f", "raw", "-F", "qcow2", "nbd+unix:///vda?socket="+filepath.Join(dir, "serve.sock"), img)
}

func zeroBytes(c *testenv.Content) int64 {
	var n int64
	for _, s := range c.Segments() {
		if s.Kind == testenv.KindZero {
			n += s.Len
		}
	}
	return n
}
