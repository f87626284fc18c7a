package target_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/virtkeep/virtkeep/target"
	"github.com/virtkeep/virtkeep/target/local"
	"github.com/virtkeep/virtkeep/testenv"
)

// BenchmarkCopyVsFloor copies a 1 GiB point (testenv's mixed data) between
// local repositories, plain to plain and plain to encrypted, beside the
// floor measured in the same run: cp -a of the source repository and
// sync. Then a second point with 1% of the disk changed is copied: it must
// store about 1%. Run with -benchtime 1x (make bench).
func BenchmarkCopyVsFloor(b *testing.B) {
	ctx := context.Background()
	size := int64(1 << 30)
	if s := os.Getenv("VIRTKEEP_BENCH_SIZE_MIB"); s != "" {
		var mib int64
		fmt.Sscan(s, &mib)
		size = mib << 20
	}
	dir := testenv.TempDir(b)
	open := func(name string, key *target.Key) *target.Repository {
		be, err := local.Open(local.Config{Path: filepath.Join(dir, name)})
		if err != nil {
			b.Fatal(err)
		}
		return newRepo(b, be, key)
	}
	src := open("src", nil)
	c, _ := testenv.NewContent(size, 2026, testenv.Fill{Random: 0.35, Text: 0.35, Zero: 0.1, Hole: 0.2})
	full, _ := backup(b, src, c, target.LevelFull, "", nil)
	sync := func() { _ = exec.Command("sync").Run() }
	sync()
	timed := func(fn func()) time.Duration {
		start := time.Now()
		fn()
		sync()
		return time.Since(start)
	}
	floor := timed(func() {
		if out, err := exec.Command("cp", "-a", filepath.Join(dir, "src"), filepath.Join(dir, "floor")).CombinedOutput(); err != nil {
			b.Fatalf("cp: %v %s", err, out)
		}
	})
	key, _ := target.NewKey()
	var plain, enc *target.Repository
	var st target.CopyStats
	tPlain := timed(func() {
		plain = open("plain", nil)
		if _, st, _ = target.Copy(ctx, src, plain, full.ID, target.CopyOptions{}); st.ChunksNew == 0 {
			b.Fatal("nothing copied")
		}
	})
	tEnc := timed(func() {
		enc = open("enc", &key)
		if _, _, err := target.Copy(ctx, src, enc, full.ID, target.CopyOptions{}); err != nil {
			b.Fatal(err)
		}
	})
	// 1% of the disk changed, in chunk-sized writes of distinct bytes
	// (each its own chunk: nothing of the change deduplicates).
	var ws []testenv.Write
	for i := int64(0); i < size/100/(256<<10); i++ {
		w := testenv.Write{Off: i * (size / (size / 100 / (256 << 10))) &^ (256<<10 - 1), Len: 256 << 10, Pattern: byte(i + 1)}
		ws = append(ws, w)
		_ = c.Record(w)
	}
	inc, _ := backup(b, src, c, target.LevelInc, full.ID, overlaps(ws))
	var st2 target.CopyStats
	tSecond := timed(func() {
		var err error
		if _, st2, err = target.Copy(ctx, src, plain, inc.ID, target.CopyOptions{}); err != nil {
			b.Fatal(err)
		}
	})
	mbs := func(d time.Duration) float64 { return float64(size) / d.Seconds() / 1e6 }
	b.ReportMetric(mbs(floor), "floor-MB/s")
	b.ReportMetric(mbs(tPlain), "plain-MB/s")
	b.ReportMetric(mbs(tEnc), "encrypted-MB/s")
	b.ReportMetric(tPlain.Seconds()/floor.Seconds(), "plain/floor-time")
	b.ReportMetric(tEnc.Seconds()/floor.Seconds(), "encrypted/floor-time")
	b.ReportMetric(tSecond.Seconds(), "second-copy-s")
	b.ReportMetric(100*float64(st2.ChunksNew)/float64(st2.Chunks), "second-copy-%stored")
	b.Logf("floor (cp -a + sync) %s, copy plain %s, encrypted %s; second copy (1%% changed) %s storing %d of %d chunks (first: %d)",
		floor.Round(time.Millisecond), tPlain.Round(time.Millisecond), tEnc.Round(time.Millisecond), tSecond.Round(time.Millisecond), st2.ChunksNew, st2.Chunks, st.ChunksNew)
}
