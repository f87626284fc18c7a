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
	name   string
	dur    time.Duration
	rssMiB int64
	stored int64
	out    string
}

func measure(b *testing.B, name string, cmd *exec.Cmd, outDir string) benchRun {
	b.Helper()
	before := duBytes(outDir)
	start := time.Now()
	out, err := cmd.CombinedOutput()
	d := time.Since(start)
	if err != nil {
		b.Fatalf("%s: %v\n%s", name, err, out)
	}
	ru := cmd.ProcessState.SysUsage().(*syscall.Rusage)
	return benchRun{name, d, ru.Maxrss / 1024, duBytes(outDir) - before, string(out)}
}

// duBytes is the space a directory tree allocates.
func duBytes(dir string) int64 {
	var n int64
	_ = filepath.Walk(dir, func(_ string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() {
			n += fi.Sys().(*syscall.Stat_t).Blocks * 512
		}
		return nil
	})
	return n
}

// BenchmarkVsVirtnbdbackup backs up the reference VM (8 GiB virtual qcow2,
// 1 GiB random and 1 GiB text allocated; twin paused domains) with the
// virtkeep CLI and with virtnbdbackup (Debian's 1.9.15) side by side in one
// run: full without compression, full compressed (zstd vs lz4 -z), and an
// incremental after 64 MiB written as 128 scattered 512 KiB pieces. Then a
// 64 GiB sparse disk with 4 GiB of data, for memory. Run with -benchtime 1x.
func BenchmarkVsVirtnbdbackup(b *testing.B) {
	env := vm.Libvirt(b)
	testenv.RequireCommands(b, "virtnbdbackup", "go")
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
	vk := func(args ...string) *exec.Cmd {
		return exec.Command(bin, append([]string{"--config", cfg}, args...)...)
	}
	vnb := func(args ...string) *exec.Cmd {
		return exec.Command("virtnbdbackup", append([]string{"-d", theirs.Name, "-n", "-U", vm.URI()}, args...)...)
	}
	var runs []benchRun
	runs = append(runs, measure(b, "virtkeep full", vk("backup", ours.Name, "--level", "full", "--target", "plain"), dir+"/r-plain"))
	runs = append(runs, measure(b, "virtnbdbackup full", vnb("-l", "full", "-o", dir+"/v-plain"), dir+"/v-plain"))
	runs = append(runs, measure(b, "virtkeep full zstd", vk("backup", ours.Name, "--level", "full", "--target", "zstd"), dir+"/r-zstd"))
	runs = append(runs, measure(b, "virtnbdbackup full -z", vnb("-l", "full", "-z", "-o", dir+"/v-z"), dir+"/v-z"))
	rng := rand.New(rand.NewPCG(128, 512))
	for i := 0; i < 128; i++ {
		off := rng.Int64N(ref.Size-512<<10) &^ 4095
		for _, d := range []*vm.Domain{ours, theirs} {
			if err := d.Write(ctx, "vda", off, 512<<10, byte(i+1)); err != nil {
				b.Fatal(err)
			}
		}
	}
	runs = append(runs, measure(b, "virtkeep inc zstd", vk("backup", ours.Name, "--level", "inc", "--target", "zstd"), dir+"/r-zstd"))
	runs = append(runs, measure(b, "virtnbdbackup inc -z", vnb("-l", "inc", "-z", "-o", dir+"/v-z"), dir+"/v-z"))
	// Restore of the uncompressed fulls to qcow2 files.
	fullID := strings.TrimSpace(runs[0].out)
	runs = append(runs, measure(b, "virtkeep restore", vk("restore", fullID, "--to", dir+"/rest-vk", "--format", "qcow2"), dir+"/rest-vk"))
	runs = append(runs, measure(b, "virtnbdrestore", exec.Command("virtnbdrestore", "-n", "-i", dir+"/v-plain", "-o", dir+"/rest-vnb"), dir+"/rest-vnb"))
	if a, c := duBytes(dir+"/rest-vk"), duBytes(dir+"/rest-vnb"); a > c+c/4 {
		b.Errorf("restored image allocates %d bytes, virtnbdrestore's %d", a, c)
	}

	// Memory on a large sparse disk.
	big := env.NewDomain(b, vm.DomainSpec{Disks: []vm.DiskSpec{{Size: 64 << 30, Seed: 64, Fill: testenv.Fill{Random: 1.0 / 32, Text: 1.0 / 32, Hole: 30.0 / 32}}}, Start: true})
	runs = append(runs, measure(b, "virtkeep full 64G/4G", vk("backup", big.Name, "--level", "full", "--target", "zstd"), dir+"/r-zstd"))

	var sb strings.Builder
	fmt.Fprintf(&sb, "\n%-24s %9s %9s %12s\n", "run", "wall", "peak RSS", "stored")
	for _, r := range runs {
		fmt.Fprintf(&sb, "%-24s %8.2fs %6d MiB %8.0f MiB\n", r.name, r.dur.Seconds(), r.rssMiB, float64(r.stored)/(1<<20))
	}
	ratio := func(a, c int) float64 { return runs[c].dur.Seconds() / runs[a].dur.Seconds() }
	fmt.Fprintf(&sb, "full: virtkeep %.2fx faster than virtnbdbackup (target >= 2x)\n", ratio(0, 1))
	fmt.Fprintf(&sb, "full compressed: virtkeep zstd %.2fx faster than virtnbdbackup -z (target >= 2.5x)\n", ratio(2, 3))
	fmt.Fprintf(&sb, "incremental: virtkeep takes %.2fx virtnbdbackup's time (target <= 0.5x)\n", 1/ratio(4, 5))
	fmt.Fprintf(&sb, "restore: virtkeep %.2fx faster than virtnbdrestore (target >= 1.5x)\n", ratio(6, 7))
	maxRSS := int64(0)
	for _, r := range runs {
		if strings.HasPrefix(r.name, "virtkeep") {
			maxRSS = max(maxRSS, r.rssMiB)
		}
	}
	fmt.Fprintf(&sb, "virtkeep peak RSS %d MiB (target < 150 MiB, 64 GiB disk included)\n", maxRSS)
	b.Log(sb.String())
	b.ReportMetric(ratio(0, 1), "full-speedup")
	b.ReportMetric(ratio(2, 3), "zfull-speedup")
	b.ReportMetric(1/ratio(4, 5), "inc-time-ratio")
	b.ReportMetric(ratio(6, 7), "restore-speedup")
	b.ReportMetric(float64(maxRSS), "peak-RSS-MiB")
}
