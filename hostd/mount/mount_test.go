package mount_test

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/virtkeep/virtkeep/hostd/backup"
	"github.com/virtkeep/virtkeep/hostd/chain"
	"github.com/virtkeep/virtkeep/hostd/fixture"
	"github.com/virtkeep/virtkeep/hostd/mount"
	"github.com/virtkeep/virtkeep/testenv"
	"github.com/virtkeep/virtkeep/testenv/vm"
)

func TestMain(m *testing.M) {
	fixture.ServeChild()
	os.Exit(m.Run())
}

func writeTree(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for p, c := range files {
		fp := filepath.Join(dir, p)
		os.MkdirAll(filepath.Dir(fp), 0o755)
		if err := os.WriteFile(fp, []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func treeSHA(t *testing.T, dir string) string {
	t.Helper()
	h := sha256.New()
	var files []string
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() {
			files = append(files, p)
		}
		return nil
	})
	sort.Strings(files)
	for _, f := range files {
		fmt.Fprintln(h, strings.TrimPrefix(f, dir))
		r, _ := os.Open(f)
		io.Copy(h, r)
		r.Close()
	}
	return fmt.Sprintf("%x", h.Sum(nil))
}

// TestMountPoint: a disk holding one ext4 filesystem, a disk with a GPT
// table and two ext4 partitions, and a disk with an ext4 partition and an
// LVM2 volume group of two ext4 logical volumes (one in two segments) are
// backed up, mounted from the point, and read back; umount (and, for the
// LVM disk, the cleanup a daemon start runs) leaves no loop device, FUSE
// mount or process behind, and the backup's chunks are unchanged.
func TestMountPoint(t *testing.T) {
	testenv.RequireCommands(t, "nbdfuse", "losetup", "sfdisk", "mkfs.ext4", "blkid", "fusermount3")
	f := fixture.New(t, vm.DomainSpec{Disks: []vm.DiskSpec{{Format: "raw", Size: 32 << 20}, {Format: "raw", Size: 64 << 20}, {Format: "raw", Size: 64 << 20}}})
	tg := f.Target("t")
	dir := t.TempDir()
	single := map[string]string{"hello.txt": "hello\n", "etc/app.conf": "key=value\n", "big.bin": strings.Repeat("0123456789abcdef", 40000)}
	p1 := map[string]string{"first/readme": "partition one\n"}
	p2 := map[string]string{"second/data.csv": "a,b\n1,2\n", "second/deep/nested/file": "x"}
	writeTree(t, filepath.Join(dir, "single"), single)
	writeTree(t, filepath.Join(dir, "p1"), p1)
	writeTree(t, filepath.Join(dir, "p2"), p2)
	vda, _ := f.Dom.Disk("vda")
	vdb, _ := f.Dom.Disk("vdb")
	os.Remove(vda.Path)
	os.Truncate(vda.Path, 0)
	fh, _ := os.Create(vda.Path)
	fh.Truncate(32 << 20)
	fh.Close()
	fixture.Run(t, "mkfs.ext4", "-q", "-F", "-d", filepath.Join(dir, "single"), vda.Path)
	os.Remove(vdb.Path)
	fh, _ = os.Create(vdb.Path)
	fh.Truncate(64 << 20)
	fh.Close()
	sf := exec.Command("sfdisk", "-q", vdb.Path)
	sf.Stdin = strings.NewReader("label: gpt\nstart=2048, size=57344\nstart=61440, size=65536\n")
	if out, err := sf.CombinedOutput(); err != nil {
		t.Fatalf("sfdisk: %v %s", err, out)
	}
	fixture.Run(t, "mkfs.ext4", "-q", "-F", "-E", fmt.Sprintf("offset=%d", 2048*512), "-d", filepath.Join(dir, "p1"), vdb.Path, "28M")
	fixture.Run(t, "mkfs.ext4", "-q", "-F", "-E", fmt.Sprintf("offset=%d", 61440*512), "-d", filepath.Join(dir, "p2"), vdb.Path, "32M")
	vdc, _ := f.Dom.Disk("vdc")
	os.Remove(vdc.Path)
	lvm := testenv.WriteLVMImage(t, vdc.Path)
	res, err := f.Driver.Backup(f.Ctx, backup.BackupRequest{Domain: f.Dom.Name, Target: tg, Level: chain.LevelFull})
	if err != nil {
		t.Fatal(err)
	}
	chunksBefore := treeSHA(t, filepath.Join(f.Dom.Dir, "repo-t", "chunks"))
	exe, _ := os.Executable()
	repoDir := filepath.Join(f.Dom.Dir, "repo-t")
	for _, tc := range []struct {
		disk  string
		trees map[string]map[string]string
	}{
		{"vda", map[string]map[string]string{"disk": single}},
		{"vdb", map[string]map[string]string{"p1": p1, "p2": p2}},
		{"vdc", map[string]map[string]string{"p1": lvm.Files["p1"], "vkvg-data": lvm.Files["vkvg/data"], "vkvg-logs": lvm.Files["vkvg/logs"]}},
	} {
		mnt := filepath.Join(dir, "mnt-"+tc.disk)
		os.Setenv("VIRTKEEP_SERVE", repoDir+","+res.Manifest.ID+","+tc.disk)
		st, err := f.Mounter.Mount(f.Ctx, mount.Request{Point: res.Manifest.ID, Disk: tc.disk, Dir: mnt, Serve: []string{exe, "-test.run=^$"}})
		os.Unsetenv("VIRTKEEP_SERVE")
		if err != nil {
			t.Fatalf("mount %s: %v", tc.disk, err)
		}
		if len(st.Mounts) != len(tc.trees) {
			t.Fatalf("%s: mounted %+v", tc.disk, st.Mounts)
		}
		for name, files := range tc.trees {
			for p, want := range files {
				got, err := os.ReadFile(filepath.Join(mnt, name, p))
				if err != nil || string(got) != want {
					t.Fatalf("%s/%s/%s: %v (%d bytes, want %d)", tc.disk, name, p, err, len(got), len(want))
				}
			}
			if err := os.WriteFile(filepath.Join(mnt, name, "new"), []byte("x"), 0o644); err == nil {
				t.Fatalf("%s/%s is writable", tc.disk, name)
			}
		}
		mi, _ := os.ReadFile("/proc/self/mountinfo")
		for _, m := range st.Mounts {
			if !strings.Contains(string(mi), m.Path) {
				t.Fatalf("%s not in mountinfo", m.Path)
			}
		}
		if tc.disk == "vdc" {
			// As if the process that mounted it died: the daemon's start
			// cleanup undoes it from the recorded state.
			if err := f.Mounter.CleanupMounts(f.Ctx); err != nil {
				t.Fatal(err)
			}
		} else if err := f.Mounter.Umount(f.Ctx, mnt); err != nil {
			t.Fatal(err)
		}
		mi, _ = os.ReadFile("/proc/self/mountinfo")
		if strings.Contains(string(mi), mnt) || strings.Contains(string(mi), st.Work) {
			t.Fatalf("mounts left after umount:\n%s", mi)
		}
		if out, _ := exec.Command("losetup", "-a").Output(); strings.Contains(string(out), st.Work) {
			t.Fatalf("loop device left: %s", out)
		}
		if out, _ := exec.Command("pgrep", "-f", st.Work).Output(); len(strings.TrimSpace(string(out))) > 0 {
			t.Fatalf("processes left: %s", out)
		}
		if _, err := os.Stat(st.Work); !os.IsNotExist(err) {
			t.Fatalf("work dir left: %v", err)
		}
	}
	if after := treeSHA(t, filepath.Join(f.Dom.Dir, "repo-t", "chunks")); after != chunksBefore {
		t.Fatal("the backup's chunks changed")
	}
	if err := f.Mounter.Umount(f.Ctx, filepath.Join(dir, "mnt-vda")); err == nil {
		t.Fatal("umount of a directory that is no mount succeeded")
	}
}

// fsPart is one partition of TestMountFilesystems' disk.
type fsPart struct {
	typ         string
	start, size int64 // in MiB
	mkfs        []string
}

// TestMountFilesystems: every filesystem the docs promise mounts with its
// no-replay option on this kernel, read-only, without following the
// guest's symlinks, under a directory only root can enter.
func TestMountFilesystems(t *testing.T) {
	testenv.RequireCommands(t, "nbdfuse", "losetup", "sfdisk", "mkfs.ext4", "mkfs.xfs", "mkfs.btrfs", "blkid", "fusermount3")
	parts := []fsPart{{"ext4", 1, 32, []string{"mkfs.ext4", "-q"}}, {"xfs", 33, 320, []string{"mkfs.xfs", "-q"}}, {"btrfs", 353, 128, []string{"mkfs.btrfs", "-q"}}}
	if fss, _ := os.ReadFile("/proc/filesystems"); strings.Contains(string(fss), "vfat") {
		parts = append(parts, fsPart{"vfat", 481, 32, []string{"mkfs.vfat"}})
	} else {
		t.Log("this kernel has no vfat: not tested")
	}
	f := fixture.New(t, vm.DomainSpec{Disks: []vm.DiskSpec{{Format: "raw", Size: 516 << 20}}})
	vda, _ := f.Dom.Disk("vda")
	var table strings.Builder
	table.WriteString("label: gpt\n")
	for _, p := range parts {
		fmt.Fprintf(&table, "start=%d, size=%d\n", p.start<<11, p.size<<11)
	}
	sf := exec.Command("sfdisk", "-q", vda.Path)
	sf.Stdin = strings.NewReader(table.String())
	if out, err := sf.CombinedOutput(); err != nil {
		t.Fatalf("sfdisk: %v %s", err, out)
	}
	scratch := t.TempDir()
	for _, p := range parts {
		dev := strings.TrimSpace(fixture.Run(t, "losetup", "-f", "--show", "--offset", fmt.Sprint(p.start<<20), "--sizelimit", fmt.Sprint(p.size<<20), vda.Path))
		func() {
			defer exec.Command("losetup", "-d", dev).Run()
			fixture.Run(t, p.mkfs[0], append(p.mkfs[1:], dev)...)
			mnt := filepath.Join(scratch, p.typ)
			os.MkdirAll(mnt, 0o700)
			fixture.Run(t, "mount", dev, mnt)
			defer exec.Command("umount", mnt).Run()
			os.WriteFile(filepath.Join(mnt, "hello.txt"), []byte("hello from "+p.typ+"\n"), 0o644)
			if p.typ != "vfat" {
				os.Symlink("/etc/hostname", filepath.Join(mnt, "escape"))
			}
		}()
	}
	tg := f.Target("t")
	res, err := f.Driver.Backup(f.Ctx, backup.BackupRequest{Domain: f.Dom.Name, Target: tg, Level: chain.LevelFull})
	if err != nil {
		t.Fatal(err)
	}
	exe, _ := os.Executable()
	mnt := filepath.Join(t.TempDir(), "mnt")
	os.Setenv("VIRTKEEP_SERVE", filepath.Join(f.Dom.Dir, "repo-t")+","+res.Manifest.ID+",vda")
	st, err := f.Mounter.Mount(f.Ctx, mount.Request{Point: res.Manifest.ID, Disk: "vda", Dir: mnt, Serve: []string{exe, "-test.run=^$"}})
	os.Unsetenv("VIRTKEEP_SERVE")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Mounter.Umount(context.WithoutCancel(f.Ctx), mnt)
	if fi, _ := os.Stat(mnt); fi.Mode().Perm() != 0o700 {
		t.Fatalf("mount directory has mode %v, want 0700", fi.Mode().Perm())
	}
	byType := map[string]mount.FS{}
	for _, m := range st.Mounts {
		byType[m.Type] = m
	}
	mi, _ := os.ReadFile("/proc/self/mountinfo")
	for _, p := range parts {
		m, ok := byType[p.typ]
		if !ok {
			t.Errorf("%s was not mounted (mounted: %+v)", p.typ, st.Mounts)
			continue
		}
		if b, err := os.ReadFile(filepath.Join(m.Path, "hello.txt")); err != nil || string(b) != "hello from "+p.typ+"\n" {
			t.Errorf("%s: hello.txt: %q %v", p.typ, b, err)
		}
		if p.typ != "vfat" {
			if _, err := os.ReadFile(filepath.Join(m.Path, "escape")); err == nil {
				t.Errorf("%s: the guest's symlink to /etc/hostname was followed", p.typ)
			}
		}
		for _, line := range strings.Split(string(mi), "\n") {
			if strings.Contains(line, " "+m.Path+" ") && !(strings.Contains(line, "ro,") && strings.Contains(line, "nosymfollow")) {
				t.Errorf("%s mounted without ro or nosymfollow: %s", p.typ, line)
			}
		}
		testenv.Report(t, "%s mounts with %s", p.typ, func() string { o, _ := mount.MountOptions(p.typ); return o }())
	}
}
