package nbd_test

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/virtkeep/virtkeep/nbd"
	"github.com/virtkeep/virtkeep/testenv"
)

// qemuIO runs qemu-io commands on an image that no one else has open.
func qemuIO(t *testing.T, image, format string, cmds ...string) {
	t.Helper()
	args := []string{"-f", format}
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	out, err := exec.Command("qemu-io", append(args, image)...).CombinedOutput()
	if err != nil || bytes.Contains(out, []byte("failed")) {
		t.Fatalf("qemu-io %v: %v: %s", cmds, err, out)
	}
}

// expectedAllocation is base:allocation of a qcow2 made by testenv from c,
// with 64 KiB-aligned writes since: data is 0, holes and zero clusters 3.
func expectedAllocation(c *testenv.Content) []nbd.Extent {
	var out []nbd.Extent
	written := map[int64]bool{}
	for _, w := range c.Writes() {
		for o := w.Off; o < w.Off+w.Len; o += testenv.SegmentAlign {
			written[o/testenv.SegmentAlign] = !w.Zero
		}
	}
	for _, s := range c.Segments() {
		for o := s.Off; o < s.Off+s.Len; o += testenv.SegmentAlign {
			fl := uint32(0)
			if s.Kind == testenv.KindHole || s.Kind == testenv.KindZero {
				fl = nbd.StateHole | nbd.StateZero
			}
			if data, ok := written[o/testenv.SegmentAlign]; ok {
				fl = 0
				if !data {
					fl = nbd.StateHole | nbd.StateZero
				}
			}
			out = appendMerged(out, nbd.Extent{Off: o, Len: testenv.SegmentAlign, Flags: fl})
		}
	}
	return out
}

// dirtyExtents is the dirty map written regions make at granularity g.
func dirtyExtents(size int64, writes []testenv.Write, g int64) []nbd.Extent {
	dirty := make([]bool, (size+g-1)/g)
	for _, w := range writes {
		for i := w.Off / g; i <= (w.Off+w.Len-1)/g; i++ {
			dirty[i] = true
		}
	}
	var out []nbd.Extent
	for i, d := range dirty {
		fl := uint32(0)
		if d {
			fl = nbd.StateDirty
		}
		out = appendMerged(out, nbd.Extent{Off: int64(i) * g, Len: g, Flags: fl})
	}
	return out
}

func TestQemuNBDBitmapAndExtents(t *testing.T) {
	testenv.Integration(t)
	testenv.RequireCommands(t, "qemu-img", "qemu-io", "qemu-nbd")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	content, err := testenv.NewContent(128<<20, 21, testenv.Fill{})
	if err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(testenv.TempDir(t), "d.qcow2")
	if err := testenv.WriteImage(ctx, content, img, "qcow2"); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("qemu-img", "bitmap", "--add", img, "bm0").CombinedOutput(); err != nil {
		t.Fatalf("qemu-img bitmap: %v: %s", err, out)
	}
	// Writes after the bitmap: some over data, some over holes, one zero write.
	writes := []testenv.Write{
		{Off: 0, Len: 512 << 10, Pattern: 7},
		{Off: 40 << 20, Len: 64 << 10, Pattern: 8},
		{Off: 100<<20 + 128<<10, Len: 3 << 20, Pattern: 9},
		{Off: 127 << 20, Len: 1 << 20, Zero: true},
	}
	var cmds []string
	for _, w := range writes {
		if w.Zero {
			cmds = append(cmds, fmt.Sprintf("write -z %d %d", w.Off, w.Len))
		} else {
			cmds = append(cmds, fmt.Sprintf("write -P %d %d %d", w.Pattern, w.Off, w.Len))
		}
		if err := content.Record(w); err != nil {
			t.Fatal(err)
		}
	}
	qemuIO(t, img, "qcow2", cmds...)

	sock, _ := testenv.QemuNBD(t, img, "qcow2", "--bitmap=bm0", "-A", "-x", "vda")
	c, err := nbd.Dial(ctx, "unix", sock, nbd.Options{Export: "vda", MetaContexts: []string{
		nbd.ContextBaseAllocation, nbd.ContextDirtyBitmapPrefix + "bm0", nbd.ContextAllocationDepth}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if len(c.Contexts()) != 3 {
		t.Fatalf("contexts %v", c.Contexts())
	}
	if c.Size() != content.Size() {
		t.Fatalf("size %d, want %d", c.Size(), content.Size())
	}
	// Data equals the model, hole chunks included.
	got := make([]byte, c.Size())
	if err := c.Read(ctx, got, 0); err != nil {
		t.Fatal(err)
	}
	want := make([]byte, content.Size())
	_, _ = content.ReadAt(want, 0)
	if !bytes.Equal(got, want) {
		t.Fatal("data read through qemu-nbd differs from the model")
	}
	if ext, want := mapAll(t, c, nbd.ContextBaseAllocation), expectedAllocation(content); !equalExtents(ext, want) {
		t.Fatalf("base:allocation\n got %v\nwant %v", ext, want)
	}
	if ext, want := mapAll(t, c, nbd.ContextDirtyBitmapPrefix+"bm0"), dirtyExtents(content.Size(), writes, 64<<10); !equalExtents(ext, want) {
		t.Fatalf("dirty map\n got %v\nwant %v", ext, want)
	}
	// allocation-depth: holes never written are depth 0, the rest depth 1.
	for _, e := range mapAll(t, c, nbd.ContextAllocationDepth) {
		for _, s := range content.Segments() {
			if s.Kind != testenv.KindHole || e.Off >= s.Off+s.Len || s.Off >= e.Off+e.Len {
				continue
			}
			if e.Flags != 0 && !overlapsWrite(e, writes) {
				t.Errorf("allocation depth %d over hole segment %+v", e.Flags, s)
			}
		}
	}
}

func overlapsWrite(e nbd.Extent, ws []testenv.Write) bool {
	for _, w := range ws {
		if w.Off < e.Off+e.Len && e.Off < w.Off+w.Len {
			return true
		}
	}
	return false
}

func TestQemuNBDHugeSparseMap(t *testing.T) {
	testenv.Integration(t)
	testenv.RequireCommands(t, "qemu-img", "qemu-io", "qemu-nbd")
	img := filepath.Join(testenv.TempDir(t), "huge.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-f", "qcow2", img, "1T").CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	qemuIO(t, img, "qcow2", "write -P 1 0 1M", "write -P 2 300G 64k", "write -P 3 1023G 2M")
	sock, _ := testenv.QemuNBD(t, img, "qcow2")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := nbd.Dial(ctx, "unix", sock, nbd.Options{MetaContexts: []string{nbd.ContextBaseAllocation}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	ext := mapAll(t, c, nbd.ContextBaseAllocation)
	took := time.Since(start)
	var data int64
	for _, e := range ext {
		if e.Flags&nbd.StateZero == 0 {
			data += e.Len
		}
	}
	if data != 1<<20+64<<10+2<<20 {
		t.Fatalf("data %d bytes in %v", data, ext)
	}
	t.Logf("mapped a 1 TiB sparse export in %v (%d extents)", took, len(ext))
	// Not a benchmark: a sanity bound far above the expected ~0.1 s, far
	// below the 18 minutes others take for 800 GiB.
	if took > 20*time.Second {
		t.Errorf("mapping 1 TiB took %v", took)
	}
}
