package nbd_test

import (
	"context"
	"os/exec"
	"path/filepath"
	"sort"
	"testing"
	"time"

	"github.com/virtkeep/virtkeep/nbd"
	"github.com/virtkeep/virtkeep/testenv"
)

// BenchmarkReadAllocatedVsNbdcopy reads every allocated byte of one qemu-nbd
// export of the reference disk (8 GiB virtual qcow2, 1 GiB random and 1 GiB
// text allocated) with our client and with `nbdcopy SRC null:`, alternating
// in one run, and reports both throughputs and their ratio (ours/nbdcopy).
// Run it with -benchtime 1x (make bench).
func BenchmarkReadAllocatedVsNbdcopy(b *testing.B) {
	testenv.RequireCommands(b, "qemu-img", "qemu-nbd", "nbdcopy")
	ctx := context.Background()
	content, err := testenv.NewContent(8<<30, 77, testenv.Fill{Random: 0.125, Text: 0.125, Hole: 0.75})
	if err != nil {
		b.Fatal(err)
	}
	img := filepath.Join(testenv.TempDir(b), "ref.qcow2")
	if err := testenv.WriteImage(ctx, content, img, "qcow2"); err != nil {
		b.Fatal(err)
	}
	sock, _ := testenv.QemuNBD(b, img, "qcow2")
	uri := "nbd+unix:///?socket=" + sock
	allocated := content.Allocated()

	ours := func() (time.Duration, int64) {
		start := time.Now()
		p, err := nbd.DialPool(ctx, 4, "unix", sock, nbd.Options{MetaContexts: []string{nbd.ContextBaseAllocation}})
		if err != nil {
			b.Fatal(err)
		}
		defer p.Close()
		var data []nbd.Extent
		err = p.Client().Map(ctx, nbd.ContextBaseAllocation, 0, p.Client().Size(), func(e nbd.Extent) error {
			if e.Flags&nbd.StateZero == 0 {
				data = append(data, e)
			}
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
		var n int64
		err = nbd.Fetch(ctx, p, data, nbd.FetchOptions{PieceSize: 2 << 20, InFlight: 16}, func(_ int64, d []byte) error {
			n += int64(len(d))
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
		return time.Since(start), n
	}
	theirs := func() time.Duration {
		start := time.Now()
		if out, err := exec.Command("nbdcopy", uri, "null:").CombinedOutput(); err != nil {
			b.Fatalf("nbdcopy: %v: %s", err, out)
		}
		return time.Since(start)
	}
	const rounds = 5
	var to, tt []time.Duration
	ours() // warm the page cache for both
	for i := 0; i < rounds; i++ {
		d, n := ours()
		if n != allocated {
			b.Fatalf("read %d bytes, %d allocated", n, allocated)
		}
		to = append(to, d)
		tt = append(tt, theirs())
	}
	med := func(ds []time.Duration) time.Duration {
		sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
		return ds[len(ds)/2]
	}
	mo, mt := med(to), med(tt)
	mbs := func(d time.Duration) float64 { return float64(allocated) / d.Seconds() / 1e6 }
	b.ReportMetric(mbs(mo), "ours-MB/s")
	b.ReportMetric(mbs(mt), "nbdcopy-MB/s")
	b.ReportMetric(mt.Seconds()/mo.Seconds(), "ratio")
	b.Logf("read %d MiB allocated of an 8 GiB export: virtkeep %v (%.0f MB/s), nbdcopy %v (%.0f MB/s); virtkeep reaches %.0f%% of nbdcopy's throughput",
		allocated>>20, mo.Round(time.Millisecond), mbs(mo), mt.Round(time.Millisecond), mbs(mt), 100*mt.Seconds()/mo.Seconds())
}
