package testenv

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// LVMImage is what WriteLVMImage made: a 64 MiB raw disk with a GPT,
// partition 1 an ext4 filesystem and partition 2 an LVM2 physical volume
// of volume group "vkvg" (1 MiB extents) holding two ext4 logical volumes:
// "data" (12 MiB in two segments, the second after "logs", as lvextend
// leaves it) and "logs" (8 MiB).
type LVMImage struct {
	Path string
	// Files per filesystem: "p1", "vkvg/data", "vkvg/logs".
	Files map[string]map[string]string
	// Segments of each LV on the disk: {offset in the LV, on the disk, length}.
	Segments map[string][][3]int64
	P2Off    int64
}

// WriteLVMImage builds the image with the real tools (sfdisk, mkfs.ext4 -d,
// pvcreate/vgcreate and vgcfgrestore, which need no device-mapper). The
// host's LVM configuration and caches are not touched: LVM runs with a
// system directory of its own and sees only the image's loop device.
func WriteLVMImage(t testing.TB, path string) *LVMImage {
	t.Helper()
	Integration(t)
	RequireCommands(t, "sfdisk", "mkfs.ext4", "losetup", "pvcreate", "vgcreate", "vgcfgrestore", "vgcfgbackup")
	const mib = 1 << 20
	img := &LVMImage{Path: path, P2Off: 9 * mib, Files: map[string]map[string]string{
		"p1":        {"boot.txt": "the boot partition\n"},
		"vkvg/data": {"db/records.csv": strings.Repeat("id,value\n", 3000), "hello.txt": "hello from an LV\n"},
		"vkvg/logs": {"app.log": "log line\n"},
	}}
	dir := t.TempDir()
	run := func(env []string, name string, args ...string) string {
		t.Helper()
		cmd := exec.Command(name, args...)
		cmd.Env = append(os.Environ(), env...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("testenv: %s %v: %v\n%s", name, args, err, out)
		}
		return string(out)
	}
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	f.Truncate(64 * mib)
	f.Close()
	cmd := exec.Command("sfdisk", "-q", path)
	cmd.Stdin = strings.NewReader("label: gpt\nstart=2048, size=16384, type=linux\nstart=18432, size=110592, type=lvm\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("testenv: sfdisk: %v\n%s", err, out)
	}
	mkfs := func(name string, size int64) string {
		src := filepath.Join(dir, strings.ReplaceAll(name, "/", "-")+".files")
		for p, c := range img.Files[name] {
			os.MkdirAll(filepath.Dir(filepath.Join(src, p)), 0o755)
			if err := os.WriteFile(filepath.Join(src, p), []byte(c), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		fs := filepath.Join(dir, strings.ReplaceAll(name, "/", "-")+".fs")
		ft, _ := os.Create(fs)
		ft.Truncate(size)
		ft.Close()
		run(nil, "mkfs.ext4", "-q", "-F", "-d", src, fs)
		return fs
	}
	place := func(fs string, segs [][3]int64) {
		b, err := os.ReadFile(fs)
		if err != nil {
			t.Fatal(err)
		}
		out, err := os.OpenFile(path, os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer out.Close()
		for _, s := range segs {
			if _, err := out.WriteAt(b[s[0]:s[0]+s[2]], s[1]); err != nil {
				t.Fatal(err)
			}
		}
	}
	place(mkfs("p1", 8*mib), [][3]int64{{0, 1 * mib, 8 * mib}})

	// The PV, through a loop device over partition 2, with LVM kept away
	// from the host's configuration.
	lvmDir := filepath.Join(dir, "lvm")
	os.MkdirAll(lvmDir, 0o700)
	loop := strings.TrimSpace(run(nil, "losetup", "--find", "--show", "--offset", fmt.Sprint(img.P2Off), "--sizelimit", fmt.Sprint(54*mib), path))
	defer exec.Command("losetup", "-d", loop).Run()
	conf := fmt.Sprintf("devices { filter = [ \"a|^%s$|\", \"r|.*|\" ] use_devicesfile = 0 }\nbackup { backup = 0 archive = 0 }\n", loop)
	os.WriteFile(filepath.Join(lvmDir, "lvm.conf"), []byte(conf), 0o600)
	env := []string{"LVM_SYSTEM_DIR=" + lvmDir, "LVM_SUPPRESS_FD_WARNINGS=1"}
	run(env, "pvcreate", "-q", "-y", "--dataalignment", "1m", loop)
	run(env, "vgcreate", "-q", "-s", "1m", "vkvg", loop)
	backup := filepath.Join(dir, "vkvg.vg")
	run(env, "vgcfgbackup", "-q", "-f", backup, "vkvg")
	meta, err := os.ReadFile(backup)
	if err != nil {
		t.Fatal(err)
	}
	seg := func(n, start, count, pe int) string {
		return fmt.Sprintf("\t\t\tsegment%d {\n\t\t\t\tstart_extent = %d\n\t\t\t\textent_count = %d\n\t\t\t\ttype = \"striped\"\n\t\t\t\tstripe_count = 1\n\t\t\t\tstripes = [\n\t\t\t\t\t\"pv0\", %d\n\t\t\t\t]\n\t\t\t}\n", n, start, count, pe)
	}
	lv := func(name, id string, segs ...string) string {
		return fmt.Sprintf("\t\t%s {\n\t\t\tid = %q\n\t\t\tstatus = [\"READ\", \"WRITE\", \"VISIBLE\"]\n\t\t\tflags = []\n\t\t\tsegment_count = %d\n%s\t\t}\n", name, id, len(segs), strings.Join(segs, ""))
	}
	lvs := "\n\tlogical_volumes {\n" +
		lv("data", "dddddd-dddd-dddd-dddd-dddd-dddd-dddddd", seg(1, 0, 8, 0), seg(2, 8, 4, 16)) +
		lv("logs", "llllll-llll-llll-llll-llll-llll-llllll", seg(1, 0, 8, 8)) +
		"\t}\n"
	s := string(meta)
	i := strings.LastIndex(s, "}")
	os.WriteFile(backup, []byte(s[:i]+lvs+s[i:]), 0o600)
	run(env, "vgcfgrestore", "-q", "-f", backup, "vkvg")
	// pe_start is 1 MiB (dataalignment): extent e is at P2Off + 1 MiB + e MiB.
	pe := func(e int64) int64 { return img.P2Off + mib + e*mib }
	img.Segments = map[string][][3]int64{
		"vkvg/data": {{0, pe(0), 8 * mib}, {8 * mib, pe(16), 4 * mib}},
		"vkvg/logs": {{0, pe(8), 8 * mib}},
	}
	place(mkfs("vkvg/data", 12*mib), img.Segments["vkvg/data"])
	place(mkfs("vkvg/logs", 8*mib), img.Segments["vkvg/logs"])
	return img
}
