package bitmap_test

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/virtkeep/virtkeep/bitmap"
	"github.com/virtkeep/virtkeep/nbd"
	"github.com/virtkeep/virtkeep/testenv"
)

// BenchmarkDirtyMapOwnConnection: the extent map of an incremental of a
// 1 TiB qcow2 (64 KiB clusters) after 100 MiB of scattered writes (1,600
// of 64 KiB, each recorded by a persistent bitmap), served by qemu-nbd
// --bitmap: the dirty bitmap walked on a connection that negotiated both
// base:allocation and the bitmap (as virtkeep did), beside one that
// negotiated the bitmap alone (as it does now); then the allocation of
// the dirty extents on the base:allocation connection, as a backup asks
// it. Five alternating runs of each; the maps must agree.
func BenchmarkDirtyMapOwnConnection(b *testing.B) {
	testenv.RequireCommands(b, "qemu-img", "qemu-io", "qemu-nbd")
	ctx := context.Background()
	img := filepath.Join(testenv.TempDir(b), "huge.qcow2")
	run := func(name string, args ...string) {
		if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
			b.Fatalf("%s %v: %v %s", name, args[:min(len(args), 6)], err, out)
		}
	}
	run("qemu-img", "create", "-q", "-f", "qcow2", img, "1T")
	run("qemu-img", "bitmap", "--add", img, "b0")
	var cmds []string
	const writes = 1600
	for i := range writes {
		off := int64(i) * (1 << 40 / writes) &^ (64<<10 - 1)
		cmds = append(cmds, "-c", fmt.Sprintf("write -P %d %d 64k", i%250+1, off))
	}
	run("qemu-io", append(append([]string{"-f", "qcow2"}, cmds...), img)...)
	sock, _ := testenv.QemuNBD(b, img, "qcow2", "--bitmap=b0", "-x", "vda")
	dirtyCtx := nbd.ContextDirtyBitmapPrefix + "b0"
	dial := func(contexts ...string) *nbd.Client {
		c, err := nbd.Dial(ctx, "unix", sock, nbd.Options{Export: "vda", MetaContexts: contexts})
		if err != nil {
			b.Fatal(err)
		}
		return c
	}
	both, own := dial(nbd.ContextBaseAllocation, dirtyCtx), dial(dirtyCtx)
	defer both.Close()
	defer own.Close()
	walk := func(c *nbd.Client) (time.Duration, *bitmap.Map) {
		start := time.Now()
		m, err := bitmap.DirtyMap(ctx, c, dirtyCtx, c.Size())
		if err != nil {
			b.Fatal(err)
		}
		return time.Since(start), m
	}
	var tBoth, tOwn, tAlloc []time.Duration
	for range 5 {
		d1, m1 := walk(both)
		d2, m2 := walk(own)
		if !slices.Equal(m1.Extents(), m2.Extents()) || m1.Count(bitmap.Dirty) < writes*64<<10 {
			b.Fatalf("the dirty maps differ, or miss writes: %d and %d bytes dirty", m1.Count(bitmap.Dirty), m2.Count(bitmap.Dirty))
		}
		start := time.Now()
		if _, err := bitmap.AllocationOf(ctx, both, m2); err != nil {
			b.Fatal(err)
		}
		tBoth, tOwn, tAlloc = append(tBoth, d1), append(tOwn, d2), append(tAlloc, time.Since(start))
	}
	med := func(ds []time.Duration) time.Duration { slices.Sort(ds); return ds[len(ds)/2] }
	var sb strings.Builder
	fmt.Fprintf(&sb, "\n1 TiB qcow2, 100 MiB dirty in 1,600 places, median of 5:\n")
	fmt.Fprintf(&sb, "dirty bitmap on the shared connection (base:allocation too): %v\n", med(tBoth).Round(time.Millisecond))
	fmt.Fprintf(&sb, "dirty bitmap on its own connection:                         %v (%.2fx)\n", med(tOwn).Round(time.Millisecond), med(tOwn).Seconds()/med(tBoth).Seconds())
	fmt.Fprintf(&sb, "allocation of the dirty extents:                            %v\n", med(tAlloc).Round(time.Millisecond))
	fmt.Fprintf(&sb, "extent map now (own + allocation): %v (goal <= 0.3 s)", (med(tOwn) + med(tAlloc)).Round(time.Millisecond))
	b.Log(sb.String())
}
