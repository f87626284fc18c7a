package mount

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/virtkeep/virtkeep/testenv"
)

// TestReusedLoopDeviceType: a loop device that held xfs and now holds
// btrfs is probed as btrfs: blkid's cache remembers the device's old type
// ("no filesystem found" when the second point was mounted).
func TestReusedLoopDeviceType(t *testing.T) {
	testenv.Integration(t)
	testenv.RequireCommands(t, "losetup", "blkid", "mkfs.xfs", "mkfs.btrfs")
	dir := testenv.TempDir(t)
	img := func(name string, mkfs ...string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(p, 320<<20); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command(mkfs[0], append(mkfs[1:], p)...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v %s", mkfs[0], err, out)
		}
		return p
	}
	xfs, btrfs := img("xfs.img", "mkfs.xfs", "-q"), img("btrfs.img", "mkfs.btrfs", "-q")
	out, err := exec.Command("losetup", "-f", "--show", "-r", xfs).Output()
	if err != nil {
		t.Fatal(err)
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() { exec.Command("losetup", "-d", dev).Run() })
	ctx := context.Background()
	_ = exec.Command("blkid", dev).Run() // as a first mount's tools would: the cache learns xfs
	if got := blkType(ctx, dev); got != "xfs" {
		t.Fatalf("first image: %q, want xfs", got)
	}
	if out, err := exec.Command("losetup", "-d", dev).CombinedOutput(); err != nil {
		t.Fatalf("losetup -d: %v %s", err, out)
	}
	if out, err := exec.Command("losetup", "-r", dev, btrfs).CombinedOutput(); err != nil {
		t.Fatalf("losetup %s: %v %s", dev, err, out)
	}
	if got := blkType(ctx, dev); got != "btrfs" {
		t.Fatalf("the reused loop device: %q, want btrfs", got)
	}
}
