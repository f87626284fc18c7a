package restore_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/virtkeep/virtkeep/hostd/fixture"
	"github.com/virtkeep/virtkeep/hostd/restore"
	"github.com/virtkeep/virtkeep/target"
	"github.com/virtkeep/virtkeep/testenv"
)

// hostilePoint writes a one-disk point of 1 MiB (a pattern in its first
// chunk) whose manifest carries details, as an attacker who can write the
// target would.
func hostilePoint(t *testing.T, details map[string]any) (*target.Repository, *target.Manifest) {
	return hostileDomainPoint(t, details, "")
}

// hostileDomainPoint is hostilePoint with domainXML saved in the manifest.
func hostileDomainPoint(t *testing.T, details map[string]any, domainXML string) (*target.Repository, *target.Manifest) {
	t.Helper()
	ctx := context.Background()
	r := fixture.Repo(t, filepath.Join(t.TempDir(), "repo"))
	pw, err := r.NewPoint(ctx, target.PointSpec{Domain: "vk-hostile", Level: target.LevelFull, DomainXMLInactive: domainXML})
	if err != nil {
		t.Fatal(err)
	}
	dw, err := pw.AddDisk(ctx, target.DiskSpec{Name: "vda", Format: "qcow2", VirtualSize: 1 << 20, FormatDetails: details})
	if err != nil {
		t.Fatal(err)
	}
	if err := dw.WriteChunk(ctx, 0, bytes.Repeat([]byte{7}, r.ChunkSize())); err != nil {
		t.Fatal(err)
	}
	if err := dw.Close(ctx); err != nil {
		t.Fatal(err)
	}
	m, err := pw.Commit(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// Read it back as a restore does: the details went through JSON.
	if m, err = r.Point(ctx, m.ID); err != nil {
		t.Fatal(err)
	}
	return r, m
}

// TestRestoreHostileFormatDetails: a manifest's qcow2 details reach
// qemu-img's command line only through an allow-list; "1.1,data_file=X"
// once made qemu-img create X as root.
func TestRestoreHostileFormatDetails(t *testing.T) {
	testenv.Integration(t)
	testenv.RequireCommands(t, "qemu-img")
	ctx := context.Background()
	victim := filepath.Join(t.TempDir(), "victim")
	for _, details := range []map[string]any{
		{"compat": "1.1,data_file=" + victim},
		{"compression_type": "zstd,data_file=" + victim},
		{"cluster_size": float64(65537)},
		{"cluster_size": "65536,data_file=" + victim},
		{"data_file": victim},
		{"lazy_refcounts": "on,data_file=" + victim},
	} {
		r, m := hostilePoint(t, details)
		dir := t.TempDir()
		err := restore.Disk(ctx, r, m.ID, "vda", filepath.Join(dir, "vda.qcow2"), restore.Options{Format: "qcow2"})
		if !errors.Is(err, restore.ErrFormatDetails) || !strings.Contains(err.Error(), m.ID) || !strings.Contains(err.Error(), "format_details.") {
			t.Fatalf("details %v: want an error naming the point and the field, got %v", details, err)
		}
		if _, err := os.Stat(victim); err == nil {
			t.Fatalf("details %v: qemu-img created %s", details, victim)
		}
		if ents, _ := os.ReadDir(dir); len(ents) != 0 {
			t.Fatalf("details %v: a refused restore left %v", details, ents)
		}
	}
	// What the backup saves is accepted and used.
	r, m := hostilePoint(t, map[string]any{"cluster_size": float64(131072), "compat": "1.1", "compression_type": "zlib", "lazy_refcounts": true, "extended_l2": false})
	dst := filepath.Join(t.TempDir(), "vda.qcow2")
	if err := restore.Disk(ctx, r, m.ID, "vda", dst, restore.Options{Format: "qcow2", Verify: true}); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("qemu-img", "info", dst).CombinedOutput()
	if err != nil || !bytes.Contains(out, []byte("cluster_size: 131072")) || !bytes.Contains(out, []byte("lazy refcounts: true")) {
		t.Fatalf("restored qcow2 lacks the saved options: %v\n%s", err, out)
	}
	if fi, _ := os.Stat(dst); fi.Mode().Perm() != 0o600 {
		t.Fatalf("restored qcow2 has mode %v, want 0600", fi.Mode().Perm())
	}
}

// TestRestoreDestinations: a symlink planted at the destination is never
// followed, files come out 0600, a failed forced restore keeps the old
// file, and a block device in use is refused.
func TestRestoreDestinations(t *testing.T) {
	testenv.Integration(t)
	testenv.RequireCommands(t, "qemu-img", "losetup", "mkfs.ext4", "mount", "umount")
	ctx := context.Background()
	r, m := hostilePoint(t, nil)
	dir := t.TempDir()
	elsewhere := filepath.Join(t.TempDir(), "planted")
	for _, format := range []string{"raw", "qcow2"} {
		dst := filepath.Join(dir, "vda."+format)
		if err := os.Symlink(elsewhere, dst); err != nil {
			t.Fatal(err)
		}
		if err := restore.Disk(ctx, r, m.ID, "vda", dst, restore.Options{Format: format}); !errors.Is(err, restore.ErrExists) {
			t.Fatalf("%s onto a dangling symlink: %v", format, err)
		}
		if err := restore.Disk(ctx, r, m.ID, "vda", dst, restore.Options{Format: format, Force: true}); !errors.Is(err, restore.ErrDestination) {
			t.Fatalf("%s --force onto a dangling symlink: %v", format, err)
		}
		if _, err := os.Lstat(elsewhere); err == nil {
			t.Fatalf("%s: the symlink was followed", format)
		}
		os.Remove(dst)
		if err := restore.Disk(ctx, r, m.ID, "vda", dst, restore.Options{Format: format, Verify: true}); err != nil {
			t.Fatal(err)
		}
		if fi, _ := os.Stat(dst); fi.Mode().Perm() != 0o600 {
			t.Fatalf("%s restored with mode %v, want 0600", format, fi.Mode().Perm())
		}
	}
	// A forced restore that fails keeps the file it would have replaced.
	dst := filepath.Join(dir, "old.raw")
	if err := os.WriteFile(dst, []byte("the old disk"), 0o640); err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if err := restore.Disk(cctx, r, m.ID, "vda", dst, restore.Options{Format: "raw", Force: true}); err == nil {
		t.Fatal("a cancelled restore succeeded")
	}
	if b, _ := os.ReadFile(dst); string(b) != "the old disk" {
		t.Fatalf("a failed forced restore changed the old file: %q", b)
	}
	if err := restore.Disk(ctx, r, m.ID, "vda", dst, restore.Options{Format: "raw", Force: true}); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(dst); fi.Mode().Perm() != 0o640 || fi.Size() != 1<<20 {
		t.Fatalf("forced restore over a file: mode %v size %d, want the old mode 0640 and 1 MiB", fi.Mode().Perm(), fi.Size())
	}
	if ents, _ := filepath.Glob(filepath.Join(dir, ".vk-restore-*")); len(ents) != 0 {
		t.Fatalf("temporary directories left: %v", ents)
	}

	// A mounted block device is refused (O_EXCL), an unused one is written.
	img := filepath.Join(t.TempDir(), "dev.img")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 8<<20); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("losetup", "-f", "--show", img).Output()
	if err != nil {
		testenv.Unavailable(t, "losetup: %v", err)
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() { _ = exec.Command("losetup", "-d", dev).Run() })
	fixture.Run(t, "mkfs.ext4", "-q", dev)
	mnt := t.TempDir()
	fixture.Run(t, "mount", dev, mnt)
	mounted := true
	defer func() {
		if mounted {
			_ = syscall.Unmount(mnt, 0)
		}
	}()
	if err := restore.Disk(ctx, r, m.ID, "vda", dev, restore.Options{Format: "raw", Force: true}); !errors.Is(err, restore.ErrDestination) {
		t.Fatalf("restore onto a mounted device: %v", err)
	}
	if err := syscall.Unmount(mnt, 0); err != nil {
		t.Fatal(err)
	}
	mounted = false
	time.Sleep(10 * time.Millisecond)
	if err := restore.Disk(ctx, r, m.ID, "vda", dev, restore.Options{Format: "raw", Force: true, Verify: true}); err != nil {
		t.Fatalf("restore onto an unused device: %v", err)
	}
}
