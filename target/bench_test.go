package target_test

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/virtkeep/virtkeep/target"
	"github.com/virtkeep/virtkeep/target/local"
	"github.com/virtkeep/virtkeep/testenv"
)

// benchWriter (a child process) writes the raw file VIRTKEEP_BENCH_INPUT
// into a new local repository as one full point, and prints the bytes stored.
func benchWriter() int {
	ctx := context.Background()
	if p := os.Getenv("VIRTKEEP_BENCH_PROFILE"); p != "" {
		f, _ := os.Create(p)
		_ = pprof.StartCPUProfile(f)
		defer pprof.StopCPUProfile()
	}
	in, repo := os.Getenv("VIRTKEEP_BENCH_INPUT"), os.Getenv("VIRTKEEP_REPO")
	comp := target.Compression(os.Getenv("VIRTKEEP_BENCH_COMPRESSION"))
	b, err := local.Open(local.Config{Path: repo})
	if err == nil {
		err = target.Init(ctx, b, target.InitOptions{Compression: comp})
	}
	r, err2 := target.Open(ctx, b, target.OpenOptions{})
	if err != nil || err2 != nil {
		fmt.Fprintln(os.Stderr, err, err2)
		return 1
	}
	f, err := os.Open(in)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fi, _ := f.Stat()
	// With VIRTKEEP_BENCH_TWICE, a second full of the unchanged input
	// follows: it must store almost nothing.
	var stored, took []string
	for round := 0; round < 1+len(os.Getenv("VIRTKEEP_BENCH_TWICE")); round++ {
		start := time.Now()
		pw, err := r.NewPoint(ctx, target.PointSpec{Domain: "bench", Level: target.LevelFull})
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		dw, _ := pw.AddDisk(ctx, target.DiskSpec{Name: "vda", VirtualSize: fi.Size()})
		buf := make([]byte, dw.ChunkSize())
		for idx := int64(0); idx < dw.Chunks(); idx++ {
			n, err := f.ReadAt(buf, idx*int64(len(buf)))
			if err != nil && err != io.EOF {
				fmt.Fprintln(os.Stderr, err)
				return 1
			}
			if err := dw.WriteChunk(ctx, idx, buf[:n]); err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 1
			}
		}
		if err := dw.Close(ctx); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		if _, err := pw.Commit(ctx); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		stored = append(stored, fmt.Sprint(dw.Stats().BytesStored))
		took = append(took, fmt.Sprint(time.Since(start).Seconds()))
	}
	// bytes stored by each round, then the seconds each round took
	fmt.Println(strings.Join(append(stored, took...), " "))
	return 0
}

// BenchmarkRepositoryWrite writes 2 GiB of testenv's mixed data (random,
// text, zeroes, holes) from a file into a local repository with and without
// compression, each in a child process whose peak RSS is measured, beside
// sha256sum and zstd -1 over the same file in the same run. Run with
// -benchtime 1x (make bench).
func BenchmarkRepositoryWrite(b *testing.B) {
	testenv.RequireCommands(b, "sha256sum", "zstd")
	size := int64(2 << 30)
	if s := os.Getenv("VIRTKEEP_BENCH_SIZE_MIB"); s != "" {
		var mib int64
		fmt.Sscan(s, &mib)
		size = mib << 20
	}
	dir := b.TempDir()
	in := filepath.Join(dir, "input.raw")
	c, _ := testenv.NewContent(size, 2026, testenv.Fill{Random: 0.35, Text: 0.35, Zero: 0.1, Hole: 0.2})
	if err := testenv.WriteImage(context.Background(), c, in, "raw"); err != nil {
		b.Fatal(err)
	}
	exe, _ := os.Executable()
	type result struct {
		name   string
		dur    time.Duration
		rssMiB int64
		stored string
	}
	var results []result
	run := func(name string, cmd *exec.Cmd) {
		var out strings.Builder
		cmd.Stdout = &out
		cmd.Stderr = os.Stderr
		start := time.Now()
		if err := cmd.Run(); err != nil {
			b.Fatalf("%s: %v", name, err)
		}
		ru := cmd.ProcessState.SysUsage().(*syscall.Rusage)
		results = append(results, result{name, time.Since(start), ru.Maxrss / 1024, strings.TrimSpace(out.String())})
	}
	// Warm the page cache once, so every contender reads from memory.
	_ = exec.Command("cat", in).Run()
	for i, comp := range []string{"zstd", "none"} {
		cmd := exec.Command(exe, "-test.run=^$")
		cmd.Env = append(os.Environ(), "VIRTKEEP_TARGET_CHILD=bench-writer", "VIRTKEEP_BENCH_INPUT="+in,
			"VIRTKEEP_REPO="+filepath.Join(dir, fmt.Sprint("repo", i)), "VIRTKEEP_BENCH_COMPRESSION="+comp)
		if comp == "zstd" {
			cmd.Env = append(cmd.Env, "VIRTKEEP_BENCH_TWICE=1")
		}
		name := "virtkeep " + comp
		if comp == "zstd" {
			name += " (x2)"
		}
		run(name, cmd)
	}
	run("sha256sum", exec.Command("sha256sum", in))
	run("zstd -1", exec.Command("sh", "-c", "zstd -1 -c -T1 '"+in+"' | wc -c"))
	mbs := func(d time.Duration) float64 { return float64(size) / d.Seconds() / 1e6 }
	for i := range results {
		r := &results[i]
		if f := strings.Fields(r.stored); strings.HasPrefix(r.name, "virtkeep") && len(f) >= 2 {
			// The writer timed its first full itself (process start-up and
			// repository init excluded); a second one is printed below.
			var d1 float64
			fmt.Sscan(f[len(f)/2], &d1)
			r.dur = time.Duration(d1 * float64(time.Second))
			if len(f) == 4 {
				r.name = "virtkeep zstd"
				defer b.Logf("second full of the unchanged data took %ss", f[3])
			}
		}
		b.Logf("%-18s %7.0f MB/s  %6v  peak RSS %4d MiB  output %s", r.name, mbs(r.dur), r.dur.Round(time.Millisecond), r.rssMiB, r.stored)
		b.ReportMetric(mbs(r.dur), strings.ReplaceAll(r.name, " ", "-")+"-MB/s")
	}
	b.ReportMetric(float64(max(results[0].rssMiB, results[1].rssMiB)), "peak-RSS-MiB")
	var first, second float64
	fmt.Sscan(results[0].stored, &first, &second)
	b.Logf("second full of the unchanged %d MiB stored %.0f bytes: %.4f%% of the first (%.0f)", size>>20, second, 100*second/first, first)
	if second >= first/100 {
		b.Errorf("second full stored %.0f bytes, not under 1%% of %.0f", second, first)
	}
	if results[0].rssMiB >= 128 || results[1].rssMiB >= 128 {
		b.Errorf("peak RSS %d / %d MiB: over 128 MiB", results[0].rssMiB, results[1].rssMiB)
	}
}
