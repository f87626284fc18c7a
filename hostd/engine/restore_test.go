package engine

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/virtkeep/virtkeep/target"
	"github.com/virtkeep/virtkeep/testenv"
	"github.com/virtkeep/virtkeep/testenv/vm"
)

func allocated(t *testing.T, path string) int64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}

// TestRestoreChain: every point of a chain (full + 5 incrementals with
// random writes between) restores to raw and qcow2 files equal to the disk
// at backup time, sparse; --verify passes; nothing is overwritten without
// Force; a failed restore leaves nothing behind; a block device restore.
func TestRestoreChain(t *testing.T) {
	f := newFixture(t, vm.DomainSpec{Disks: []vm.DiskSpec{{Size: 48 << 20, Fill: testenv.Fill{Random: 1, Text: 1, Hole: 6}}}, Start: true})
	tg := f.target("t")
	rng := rand.New(rand.NewPCG(7, 7))
	var points []*target.Manifest
	var states []*testenv.Content
	vda, _ := f.dom.Disk("vda")
	for i := 0; i < 6; i++ {
		if i > 0 {
			for j := 0; j < 8; j++ {
				f.write("vda", rng.Int64N(47<<20)&^511, (1+rng.Int64N(128))*512, byte(rng.IntN(250)+1))
			}
		}
		states = append(states, vda.Content.Snapshot())
		points = append(points, f.backup(tg, LevelAuto).Manifest)
	}
	dir := t.TempDir()
	for i, m := range points {
		for _, format := range []string{"raw", "qcow2"} {
			dst := filepath.Join(dir, m.ID+"."+format)
			if err := RestoreDisk(f.ctx, tg.Repo, m.ID, "vda", dst, RestoreOptions{Format: format, Verify: true}); err != nil {
				t.Fatalf("point %d %s: %v", i, format, err)
			}
			got, err := testenv.ImageSHA256(f.ctx, dst, format)
			if err != nil {
				t.Fatal(err)
			}
			if want := states[i].SHA256(); got != want {
				t.Fatalf("point %d restored to %s differs from the disk at backup time", i, format)
			}
			// Sparse: a 48 MiB disk with ~12 MiB of data.
			if a := allocated(t, dst); a > 2*states[i].Allocated()+4<<20 {
				t.Errorf("point %d %s allocates %d bytes for %d of data", i, format, a, states[i].Allocated())
			}
		}
	}
	last := points[len(points)-1]
	dst := filepath.Join(dir, last.ID+".raw")
	if err := RestoreDisk(f.ctx, tg.Repo, last.ID, "vda", dst, RestoreOptions{Format: "raw"}); !errors.Is(err, ErrExists) {
		t.Fatalf("overwrite without force: %v", err)
	}
	if err := RestoreDisk(f.ctx, tg.Repo, last.ID, "vda", dst, RestoreOptions{Format: "raw", Force: true}); err != nil {
		t.Fatalf("overwrite with force: %v", err)
	}
	if _, err := RestorePath(dir, "../../etc/passwd", "raw"); err == nil {
		t.Fatal("a disk name with .. was accepted as a path")
	}
	if err := RestoreDisk(f.ctx, tg.Repo, last.ID, "vdz", filepath.Join(dir, "x.raw"), RestoreOptions{}); !errors.Is(err, target.ErrNotFound) {
		t.Fatalf("unknown disk: %v", err)
	}
	// Damage a chunk: the restore fails and removes its file.
	d, _ := tg.Repo.OpenDisk(f.ctx, last.ID, "vda")
	var victim target.ID
	for i := int64(0); victim.IsZero(); i++ {
		victim, _ = d.ChunkID(f.ctx, i)
	}
	chunk := filepath.Join(f.dom.Dir, "repo-t", "chunks", victim.String()[:2], victim.String())
	orig, _ := os.ReadFile(chunk)
	os.WriteFile(chunk, append(bytes.Clone(orig[:len(orig)-1]), orig[len(orig)-1]^1), 0o600)
	bad := filepath.Join(dir, "bad.qcow2")
	if err := RestoreDisk(f.ctx, tg.Repo, last.ID, "vda", bad, RestoreOptions{Format: "qcow2"}); !errors.Is(err, target.ErrCorrupt) {
		t.Fatalf("restore of a damaged point: %v", err)
	}
	if _, err := os.Stat(bad); !os.IsNotExist(err) {
		t.Fatal("a failed restore left its file")
	}
	os.WriteFile(chunk, orig, 0o600)
	// A block device (a loop device here), only raw and only with Force.
	backing := filepath.Join(dir, "dev.img")
	os.WriteFile(backing, bytes.Repeat([]byte{0xaa}, 48<<20), 0o600)
	out, err := exec.Command("losetup", "-f", "--show", backing).Output()
	if err != nil {
		t.Fatalf("losetup: %v", err)
	}
	dev := strings.TrimSpace(string(out))
	defer exec.Command("losetup", "-d", dev).Run()
	if err := RestoreDisk(f.ctx, tg.Repo, last.ID, "vda", dev, RestoreOptions{Format: "raw"}); !errors.Is(err, ErrExists) {
		t.Fatalf("device without force: %v", err)
	}
	if err := RestoreDisk(f.ctx, tg.Repo, last.ID, "vda", dev, RestoreOptions{Format: "raw", Force: true, Verify: true}); err != nil {
		t.Fatalf("device restore: %v", err)
	}
	if got, _ := testenv.ImageSHA256(f.ctx, backing, "raw"); got != states[len(states)-1].SHA256() {
		t.Fatal("device restore differs (old data not zeroed?)")
	}
}

// TestRestoreInPlace: a shut-off domain's disks are restored in place, only
// with Force; a running domain is refused.
func TestRestoreInPlace(t *testing.T) {
	f := newFixture(t, vm.DomainSpec{Disks: []vm.DiskSpec{{Size: 16 << 20}}, Start: true})
	tg := f.target("t")
	vda, _ := f.dom.Disk("vda")
	want := vda.Content.Snapshot()
	res := f.backup(tg, LevelFull)
	f.write("vda", 0, 1<<20, 0x55)
	r := DomainRestore{Name: f.dom.Name, InPlace: true, Force: true}
	if _, err := f.e.RestoreDomain(f.ctx, tg.Repo, res.Manifest.ID, r); err == nil || !strings.Contains(err.Error(), "running") {
		t.Fatalf("in place on a running domain: %v", err)
	}
	if err := f.dom.Destroy(); err != nil {
		t.Fatal(err)
	}
	if _, err := f.e.RestoreDomain(f.ctx, tg.Repo, res.Manifest.ID, DomainRestore{Name: f.dom.Name, InPlace: true}); err == nil || !strings.Contains(err.Error(), "--force") {
		t.Fatalf("in place without force: %v", err)
	}
	if _, err := f.e.RestoreDomain(f.ctx, tg.Repo, res.Manifest.ID, r); err != nil {
		t.Fatal(err)
	}
	if got, _ := testenv.ImageSHA256(f.ctx, vda.Path, "qcow2"); got != want.SHA256() {
		t.Fatal("in-place restore differs from the point")
	}
	// The domain starts and the next backup heals the chain by itself.
	if err := f.dom.Start(true); err != nil {
		t.Fatal(err)
	}
	vda.Content = want
	f.backup(tg, LevelInc)
}
