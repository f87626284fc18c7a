package backup_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/virtkeep/virtkeep/testenv"
	"github.com/virtkeep/virtkeep/testenv/vm"
)

type benchRun struct {
	name    string
	dur     time.Duration
	cpu     time.Duration // user+sys of the command and its children
	rssMiB  int64
	stored  int64
	objects int
	out     string // standard output
	log     string // standard error
}

// measure runs cmd (through sh -c when it is a string) and what it
// stored under outDir.
func measure(b *testing.B, name string, cmd *exec.Cmd, outDir string) benchRun {
	b.Helper()
	before, objs := duBytes(outDir)
	var out, log strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &log
	start := time.Now()
	err := cmd.Run()
	d := time.Since(start)
	if err != nil {
		b.Fatalf("%s: %v\n%s%s", name, err, out.String(), log.String())
	}
	ru := cmd.ProcessState.SysUsage().(*syscall.Rusage)
	after, objs2 := duBytes(outDir)
	cpu := time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	return benchRun{name, d, cpu, ru.Maxrss / 1024, after - before, objs2 - objs, out.String(), log.String()}
}

func sh(script string) *exec.Cmd { return exec.Command("sh", "-c", script) }

// duBytes is the space a directory tree allocates and how many files it
// holds.
func duBytes(dir string) (int64, int) {
	var n int64
	var files int
	_ = filepath.Walk(dir, func(_ string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() {
			n += fi.Sys().(*syscall.Stat_t).Blocks * 512
			files++
		}
		return nil
	})
	return n, files
}

// BenchmarkVsVirtnbdbackup backs up the reference VM (8 GiB virtual qcow2,
// 1 GiB random and 1 GiB text allocated; twin running domains) with the
// virtkeep CLI and with virtnbdbackup (Debian's 1.9.15), and measures the
// floor in the same run: nbdcopy of the same pull-mode export to a file +
// sync (through zstd -1 -T0 for the compressed floor), and qemu-img convert
// of the export to qcow2 + sync for restores. Rows: full, full zstd,
// incremental after 128 scattered 512 KiB writes, restore; then a 1 TiB
// disk holding 8 GiB scattered (full and an incremental after 100 MiB of
// scattered writes). Every restore is compared byte for byte and each
// repository passes verify --read-data. Run with -benchtime 1x; -v logs
// the table and virtkeep's per-phase times.
func BenchmarkVsVirtnbdbackup(b *testing.B) {
	env := vm.Libvirt(b)
	testenv.RequireCommands(b, "virtnbdbackup", "virtnbdrestore", "nbdcopy", "zstd", "go")
	ctx := context.Background()
	ref := vm.DiskSpec{Size: 8 << 30, Seed: 8, Fill: testenv.Fill{Random: 0.125, Text: 0.125, Hole: 0.75}}
	ours := env.NewDomain(b, vm.DomainSpec{Disks: []vm.DiskSpec{ref}, Start: true})
	theirs := env.NewDomain(b, vm.DomainSpec{Disks: []vm.DiskSpec{ref}, Start: true})
	dir := ours.Dir
	bin := filepath.Join(dir, "virtkeep")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/virtkeep/virtkeep/cmd/virtkeep").CombinedOutput(); err != nil {
		b.Fatalf("build: %v %s", err, out)
	}
	cfg := filepath.Join(dir, "virtkeep.yaml")
	os.WriteFile(cfg, []byte(fmt.Sprintf("version: 1\nstate_dir: %s/st\nlibvirt_uri: %s\ntargets:\n  - {name: plain, kind: local, path: %s/r-plain, compression: none}\n  - {name: zstd, kind: local, path: %s/r-zstd}\n", dir, vm.URI(), dir, dir)), 0o600)
	profile := os.Getenv("VIRTKEEP_BENCH_PROFILE") // a directory for CPU profiles
	vk := func(name string, args ...string) *exec.Cmd {
		pre := []string{"--config", cfg, "-v"}
		if profile != "" {
			pre = append(pre, "--cpu-profile", filepath.Join(profile, strings.ReplaceAll(name, " ", "-")+".pprof"))
		}
		return exec.Command(bin, append(pre, args...)...)
	}
	vnb := func(args ...string) *exec.Cmd {
		return exec.Command("virtnbdbackup", append([]string{"-d", theirs.Name, "-n", "-U", vm.URI()}, args...)...)
	}
	floor := func(name, script string, d *vm.Domain) benchRun {
		uris, stop, err := d.PullExport()
		if err != nil {
			b.Fatal(err)
		}
		defer stop()
		out := filepath.Join(dir, "floor")
		os.RemoveAll(out)
		os.MkdirAll(out, 0o700)
		defer os.RemoveAll(out)
		return measure(b, name, sh(strings.NewReplacer("URI", "'"+uris["vda"]+"'", "OUT", out).Replace(script)), out)
	}
	var runs []benchRun
	add := func(r benchRun) benchRun { runs = append(runs, r); return r }
	fullFloor := add(floor("floor full", "nbdcopy URI OUT/disk.raw && sync", ours))
	vkFull := add(measure(b, "virtkeep full", vk("full", "backup", ours.Name, "--level", "full", "--target", "plain"), dir+"/r-plain"))
	fullSHA := ours.Disks[0].ExpectedSHA256()
	vnbFull := add(measure(b, "virtnbdbackup full", vnb("-l", "full", "-o", dir+"/v-plain"), dir+"/v-plain"))
	zFloor := add(floor("floor full zstd", "nbdcopy URI - | zstd -q -1 -T0 -o OUT/disk.zst && sync", ours))
	vkZ := add(measure(b, "virtkeep full zstd", vk("full zstd", "backup", ours.Name, "--level", "full", "--target", "zstd"), dir+"/r-zstd"))
	vnbZ := add(measure(b, "virtnbdbackup full -z", vnb("-l", "full", "-z", "-o", dir+"/v-z"), dir+"/v-z"))
	rng := rand.New(rand.NewPCG(128, 512))
	for i := 0; i < 128; i++ {
		off := rng.Int64N(ref.Size-512<<10) &^ 4095
		for _, d := range []*vm.Domain{ours, theirs} {
			if err := d.Write(ctx, "vda", off, 512<<10, byte(i+1)); err != nil {
				b.Fatal(err)
			}
		}
	}
	vkInc := add(measure(b, "virtkeep inc zstd", vk("inc", "backup", ours.Name, "--level", "inc", "--target", "zstd"), dir+"/r-zstd"))
	vnbInc := add(measure(b, "virtnbdbackup inc -z", vnb("-l", "inc", "-z", "-o", dir+"/v-z"), dir+"/v-z"))
	// Restores of the uncompressed fulls to qcow2 files.
	restFloor := add(floor("floor restore", "qemu-img convert -f raw -O qcow2 URI OUT/disk.qcow2 && sync", theirs))
	fullID := strings.TrimSpace(lastLine(vkFull.out))
	vkRest := add(measure(b, "virtkeep restore", sh(fmt.Sprintf("%s --config %s restore %s --to %s/rest-vk --format qcow2 && sync", bin, cfg, fullID, dir)), dir+"/rest-vk"))
	vnbRest := add(measure(b, "virtnbdrestore", sh(fmt.Sprintf("virtnbdrestore -n -i %s/v-plain -o %s/rest-vnb && sync", dir, dir)), dir+"/rest-vnb"))
	restored, _ := filepath.Glob(dir + "/rest-vk/*")
	if len(restored) != 1 {
		b.Fatalf("restore wrote %v", restored)
	}
	if got, _ := testenv.ImageSHA256(ctx, restored[0], "qcow2"); got != fullSHA {
		b.Errorf("restored image differs from the disk at the full backup")
	}

	// Real files: an ext4 filesystem holding a copy of the host's
	// /usr/share, compressed.
	img := filepath.Join(dir, "files.qcow2")
	if err := testenv.FilesImage(ctx, "/usr/share", img, 2<<30); err != nil {
		b.Fatal(err)
	}
	filesSHA, err := testenv.ImageSHA256(ctx, img, "qcow2")
	if err != nil {
		b.Fatal(err)
	}
	files := vm.DiskSpec{Image: img}
	oursF := env.NewDomain(b, vm.DomainSpec{Disks: []vm.DiskSpec{files}, Start: true})
	theirsF := env.NewDomain(b, vm.DomainSpec{Disks: []vm.DiskSpec{files}, Start: true})
	os.Remove(img)
	fFloor := add(floor("floor zstd /usr/share", "nbdcopy URI - | zstd -q -1 -T0 -o OUT/disk.zst && sync", oursF))
	vkF := add(measure(b, "virtkeep zstd /usr/share", vk("files", "backup", oursF.Name, "--level", "full", "--target", "zstd"), dir+"/r-zstd"))
	vnbF := add(measure(b, "virtnbdbackup -z /usr/share", exec.Command("virtnbdbackup", "-d", theirsF.Name, "-n", "-U", vm.URI(), "-l", "full", "-z", "-o", dir+"/v-files"), dir+"/v-files"))
	restF := filepath.Join(dir, "rest-files")
	if out, err := exec.Command(bin, "--config", cfg, "restore", strings.TrimSpace(lastLine(vkF.out)), "--to", restF, "--format", "qcow2").CombinedOutput(); err != nil {
		b.Fatalf("restore files: %v %s", err, out)
	}
	if got, _ := testenv.ImageSHA256(ctx, filepath.Join(restF, "vda.qcow2"), "qcow2"); got != filesSHA {
		b.Errorf("restored files image differs from the original")
	}
	os.RemoveAll(restF)

	// A 1 TiB disk holding 8 GiB in scattered runs.
	huge := vm.DiskSpec{Size: 1 << 40, Seed: 1024, Fill: testenv.Fill{Random: 4.0 / 1024, Text: 4.0 / 1024, Hole: 1016.0 / 1024}}
	big := env.NewDomain(b, vm.DomainSpec{Disks: []vm.DiskSpec{huge}, Start: true})
	bigFloor := add(floor("floor full 1T/8G", "nbdcopy URI OUT/disk.raw && sync", big))
	bigFull := add(measure(b, "virtkeep full 1T/8G", vk("full 1T", "backup", big.Name, "--level", "full", "--target", "plain"), dir+"/r-plain"))
	for i := 0; i < 200; i++ {
		off := rng.Int64N(huge.Size-512<<10) &^ 4095
		if err := big.Write(ctx, "vda", off, 512<<10, byte(i+1)); err != nil {
			b.Fatal(err)
		}
	}
	bigInc := add(measure(b, "virtkeep inc 1T +100M", vk("inc 1T", "backup", big.Name, "--level", "inc", "--target", "plain"), dir+"/r-plain"))
	for _, t := range []string{"plain", "zstd"} {
		if out, err := vk("verify "+t, "verify", "--all", "--read-data", "--target", t).CombinedOutput(); err != nil {
			b.Fatalf("verify --read-data %s: %v\n%s", t, err, out)
		}
	}

	var sb strings.Builder
	fmt.Fprintf(&sb, "\n%-24s %8s %9s %9s %10s %8s\n", "run", "wall", "CPU s/GiB", "peak RSS", "stored", "objects")
	for _, r := range runs {
		gib := 2.0 // allocated data of the disk
		switch {
		case strings.Contains(r.name, "1T"):
			gib = 8
		case strings.Contains(r.name, "/usr/share"):
			gib = 0.7
		}
		fmt.Fprintf(&sb, "%-24s %7.2fs %9.2f %5d MiB %6.0f MiB %8d\n", r.name, r.dur.Seconds(), r.cpu.Seconds()/gib, r.rssMiB, float64(r.stored)/(1<<20), r.objects)
	}
	x := func(a, c benchRun) float64 { return a.dur.Seconds() / c.dur.Seconds() }
	fmt.Fprintf(&sb, "full:        %.2fx the floor (goal <= 1.3), %.2fx virtnbdbackup (goal <= 0.5)\n", x(vkFull, fullFloor), x(vkFull, vnbFull))
	fmt.Fprintf(&sb, "full zstd:   %.2fx the zstd floor (goal <= 1.3), %.2fx virtnbdbackup -z (goal <= 0.4)\n", x(vkZ, zFloor), x(vkZ, vnbZ))
	fmt.Fprintf(&sb, "zstd, files: %.2fx the zstd floor (goal <= 1.3), %.2fx virtnbdbackup -z (goal <= 0.4)\n", x(vkF, fFloor), x(vkF, vnbF))
	fmt.Fprintf(&sb, "incremental: %.2fx virtnbdbackup (goal <= 0.25)\n", x(vkInc, vnbInc))
	fmt.Fprintf(&sb, "restore:     %.2fx its floor (goal <= 1.5), %.2fx virtnbdrestore (goal <= 0.5)\n", x(vkRest, restFloor), x(vkRest, vnbRest))
	// The incremental's floor: the full floor's rate over the 100 MiB the
	// incremental reads (nbdcopy cannot copy by dirty bitmap).
	incFloor := bigFloor.dur.Seconds() * 100 / 8192
	fmt.Fprintf(&sb, "1 TiB/8 GiB: full %.2fx its floor (goal <= 1.3); incremental +100 MiB %.2fs, %.1fx the floor's rate over 100 MiB (%.2fs; goal < 3x)\n",
		x(bigFull, bigFloor), bigInc.dur.Seconds(), bigInc.dur.Seconds()/incFloor, incFloor)
	maxRSS := int64(0)
	for _, r := range runs {
		if strings.HasPrefix(r.name, "virtkeep") {
			maxRSS = max(maxRSS, r.rssMiB)
		}
	}
	fmt.Fprintf(&sb, "virtkeep peak RSS %d MiB (goal <= 150 MiB)\n", maxRSS)
	if testing.Verbose() {
		for _, r := range []benchRun{vkFull, vkZ, vkInc, bigFull, bigInc} {
			fmt.Fprintf(&sb, "\n%s phases:\n%s", r.name, phases(r.log))
		}
	}
	b.Log(sb.String())
	b.ReportMetric(x(vkFull, fullFloor), "full/floor")
	b.ReportMetric(x(vkFull, vnbFull), "full/peer")
	b.ReportMetric(x(vkZ, zFloor), "zfull/floor")
	b.ReportMetric(x(vkZ, vnbZ), "zfull/peer")
	b.ReportMetric(x(vkF, fFloor), "files-zstd/floor")
	b.ReportMetric(x(vkF, vnbF), "files-zstd/peer")
	b.ReportMetric(x(vkInc, vnbInc), "inc/peer")
	b.ReportMetric(x(vkRest, restFloor), "restore/floor")
	b.ReportMetric(x(vkRest, vnbRest), "restore/peer")
	b.ReportMetric(float64(maxRSS), "peak-RSS-MiB")
}

// phases picks the per-phase times out of a verbose backup's log.
func phases(out string) string {
	var sb strings.Builder
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, "phase") {
			sb.WriteString("  " + l + "\n")
		}
	}
	return sb.String()
}

func lastLine(s string) string {
	ls := strings.Split(strings.TrimSpace(s), "\n")
	return ls[len(ls)-1]
}
