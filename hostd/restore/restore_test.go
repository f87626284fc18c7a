package restore_test

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/virtkeep/virtkeep/hostd/chain"
	"github.com/virtkeep/virtkeep/hostd/fixture"
	"github.com/virtkeep/virtkeep/hostd/restore"
	"github.com/virtkeep/virtkeep/target"
	"github.com/virtkeep/virtkeep/testenv"
	"github.com/virtkeep/virtkeep/testenv/vm"
)

// TestRestoreChain: every point of a chain (full + 5 incrementals with
// random writes between) restores to raw and qcow2 files equal to the disk
// at backup time, sparse; --verify passes; nothing is overwritten without
// Force; a failed restore leaves nothing behind; a block device restore.
func TestRestoreChain(t *testing.T) {
	f := fixture.New(t, vm.DomainSpec{Disks: []vm.DiskSpec{{Size: 48 << 20, Fill: testenv.Fill{Random: 1, Text: 1, Hole: 6}}}, Start: true})
	tg := f.Target("t")
	rng := rand.New(rand.NewPCG(7, 7))
	var points []*target.Manifest
	var states []*testenv.Content
	vda, _ := f.Dom.Disk("vda")
	for i := 0; i < 6; i++ {
		if i > 0 {
			for j := 0; j < 8; j++ {
				f.Write("vda", rng.Int64N(47<<20)&^511, (1+rng.Int64N(128))*512, byte(rng.IntN(250)+1))
			}
		}
		states = append(states, vda.Content.Snapshot())
		points = append(points, f.Backup(tg, chain.LevelAuto).Manifest)
	}
	dir := t.TempDir()
	for i, m := range points {
		for _, format := range []string{"raw", "qcow2"} {
			dst := filepath.Join(dir, m.ID+"."+format)
			if err := restore.Disk(f.Ctx, tg.Repo, m.ID, "vda", dst, restore.Options{Format: format, Verify: true}); err != nil {
				t.Fatalf("point %d %s: %v", i, format, err)
			}
			got, err := testenv.ImageSHA256(f.Ctx, dst, format)
			if err != nil {
				t.Fatal(err)
			}
			if want := states[i].SHA256(); got != want {
				t.Fatalf("point %d restored to %s differs from the disk at backup time", i, format)
			}
			// Sparse: a 48 MiB disk with ~12 MiB of data.
			if a := fixture.Allocated(t, dst); a > 2*states[i].Allocated()+4<<20 {
				t.Errorf("point %d %s allocates %d bytes for %d of data", i, format, a, states[i].Allocated())
			}
		}
	}
	last := points[len(points)-1]
	dst := filepath.Join(dir, last.ID+".raw")
	if err := restore.Disk(f.Ctx, tg.Repo, last.ID, "vda", dst, restore.Options{Format: "raw"}); !errors.Is(err, restore.ErrExists) {
		t.Fatalf("overwrite without force: %v", err)
	}
	if err := restore.Disk(f.Ctx, tg.Repo, last.ID, "vda", dst, restore.Options{Format: "raw", Force: true}); err != nil {
		t.Fatalf("overwrite with force: %v", err)
	}
	if _, err := restore.Path(dir, "../../etc/passwd", "raw"); err == nil {
		t.Fatal("a disk name with .. was accepted as a path")
	}
	if err := restore.Disk(f.Ctx, tg.Repo, last.ID, "vdz", filepath.Join(dir, "x.raw"), restore.Options{}); !errors.Is(err, target.ErrNotFound) {
		t.Fatalf("unknown disk: %v", err)
	}
	// Damage a chunk: the restore fails and removes its file.
	d, _ := tg.Repo.OpenDisk(f.Ctx, last.ID, "vda")
	var victim target.ID
	for i := int64(0); victim.IsZero(); i++ {
		victim, _ = d.ChunkID(f.Ctx, i)
	}
	key, off, n, err := tg.Repo.ChunkObject(f.Ctx, victim)
	if err != nil {
		t.Fatal(err)
	}
	chunk := filepath.Join(f.Dom.Dir, "repo-t", key)
	orig, _ := os.ReadFile(chunk)
	damaged := bytes.Clone(orig)
	damaged[off+n-1] ^= 1
	os.WriteFile(chunk, damaged, 0o600)
	bad := filepath.Join(dir, "bad.qcow2")
	if err := restore.Disk(f.Ctx, tg.Repo, last.ID, "vda", bad, restore.Options{Format: "qcow2"}); !errors.Is(err, target.ErrCorrupt) {
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
	if err := restore.Disk(f.Ctx, tg.Repo, last.ID, "vda", dev, restore.Options{Format: "raw"}); !errors.Is(err, restore.ErrExists) {
		t.Fatalf("device without force: %v", err)
	}
	if err := restore.Disk(f.Ctx, tg.Repo, last.ID, "vda", dev, restore.Options{Format: "raw", Force: true, Verify: true}); err != nil {
		t.Fatalf("device restore: %v", err)
	}
	if got, _ := testenv.ImageSHA256(f.Ctx, backing, "raw"); got != states[len(states)-1].SHA256() {
		t.Fatal("device restore differs (old data not zeroed?)")
	}
}

// TestRestoreInPlace: a shut-off domain's disks are restored in place, only
// with Force; a running domain is refused.
func TestRestoreInPlace(t *testing.T) {
	f := fixture.New(t, vm.DomainSpec{Disks: []vm.DiskSpec{{Size: 16 << 20}}, Start: true})
	tg := f.Target("t")
	vda, _ := f.Dom.Disk("vda")
	want := vda.Content.Snapshot()
	res := f.Backup(tg, chain.LevelFull)
	f.Write("vda", 0, 1<<20, 0x55)
	r := restore.DomainRequest{Name: f.Dom.Name, InPlace: true, Force: true}
	if _, err := f.Restorer.Domain(f.Ctx, tg.Repo, res.Manifest.ID, r); err == nil || !strings.Contains(err.Error(), "running") {
		t.Fatalf("in place on a running domain: %v", err)
	}
	if err := f.Dom.Destroy(); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Restorer.Domain(f.Ctx, tg.Repo, res.Manifest.ID, restore.DomainRequest{Name: f.Dom.Name, InPlace: true}); !errors.Is(err, restore.ErrExists) {
		t.Fatalf("in place without force: %v", err)
	}
	if _, err := f.Restorer.Domain(f.Ctx, tg.Repo, res.Manifest.ID, r); err != nil {
		t.Fatal(err)
	}
	if got, _ := testenv.ImageSHA256(f.Ctx, vda.Path, "qcow2"); got != want.SHA256() {
		t.Fatal("in-place restore differs from the point")
	}
	// The domain starts and the next backup heals the chain by itself.
	if err := f.Dom.Start(true); err != nil {
		t.Fatal(err)
	}
	vda.Content = want
	f.Backup(tg, chain.LevelInc)
}
