package bitmap_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/virtkeep/virtkeep/bitmap"
	"github.com/virtkeep/virtkeep/nbd"
	"github.com/virtkeep/virtkeep/testenv"
	"github.com/virtkeep/virtkeep/testenv/vm"
)

// pullBackup starts a libvirt pull-mode backup of vda, incremental since
// checkpoint since ("" for full), and returns the NBD socket. The job is
// aborted when the test ends.
func pullBackup(t *testing.T, dom *vm.Domain, since string) string {
	t.Helper()
	rt := filepath.Join(dom.Dir, "run")
	if err := os.MkdirAll(rt, 0o777); err != nil {
		t.Fatal(err)
	}
	_ = os.Chmod(rt, 0o777) // QEMU runs as libvirt-qemu and creates the socket here
	sock := filepath.Join(rt, "backup.sock")
	inc := ""
	if since != "" {
		inc = "<incremental>" + since + "</incremental>"
	}
	xml := fmt.Sprintf(`<domainbackup mode='pull'>%s<server transport='unix' socket='%s'/>
<disks><disk name='vda' backup='yes' type='file'><scratch file='%s'/></disk></disks></domainbackup>`,
		inc, sock, filepath.Join(rt, "scratch-vda.qcow2"))
	if err := dom.Dom.BackupBegin(xml, "", 0); err != nil {
		t.Fatalf("backup begin: %v\n%s", err, xml)
	}
	t.Cleanup(func() { _ = dom.Dom.AbortJob() })
	return sock
}

func TestPullModeBackupDirtyMap(t *testing.T) {
	env := vm.Libvirt(t)
	dom := env.NewDomain(t, vm.DomainSpec{Disks: []vm.DiskSpec{{Size: 64 << 20}}, Start: true})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cp, err := dom.Dom.CreateCheckpointXML(`<domaincheckpoint><name>cp1</name><disks><disk name='vda' checkpoint='bitmap'/></disks></domaincheckpoint>`, 0)
	if err != nil {
		t.Fatal(err)
	}
	cp.Free()
	vda, _ := dom.Disk("vda")
	writes := []testenv.Write{
		{Off: 0, Len: 512 << 10, Pattern: 3},
		{Off: 10<<20 + 4096, Len: 100 << 10, Pattern: 4}, // unaligned: dirties two granules
		{Off: 50 << 20, Len: 2 << 20, Pattern: 5},
		{Off: 60 << 20, Len: 1 << 20, Zero: true},
	}
	for _, w := range writes {
		if w.Zero {
			err = dom.WriteZeroes(ctx, "vda", w.Off, w.Len)
		} else {
			err = dom.Write(ctx, "vda", w.Off, w.Len, w.Pattern)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	atStart := vda.Content.Snapshot()
	sock := pullBackup(t, dom, "cp1")

	dirtyCtx := nbd.ContextDirtyBitmapPrefix + "backup-vda"
	c, err := nbd.Dial(ctx, "unix", sock, nbd.Options{Export: "vda", MetaContexts: []string{nbd.ContextBaseAllocation, dirtyCtx}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if !c.HasContext(dirtyCtx) || !c.HasContext(nbd.ContextBaseAllocation) {
		t.Fatalf("contexts %v", c.Contexts())
	}
	alloc, err := bitmap.Allocation(ctx, c, c.Size())
	if err != nil {
		t.Fatal(err)
	}
	dirty, err := bitmap.DirtyMap(ctx, c, dirtyCtx, c.Size())
	if err != nil {
		t.Fatal(err)
	}
	// The dirty map is exactly the granules written since the checkpoint.
	const g = 64 << 10
	var want int64
	marked := map[int64]bool{}
	for _, w := range writes {
		for i := w.Off / g; i <= (w.Off+w.Len-1)/g; i++ {
			if !marked[i] {
				marked[i] = true
				want += g
			}
		}
	}
	if got := dirty.Count(bitmap.Dirty); got != want {
		t.Fatalf("dirty bytes %d, want %d: %v", got, want, dirty.Extents())
	}
	for _, e := range dirty.Extents() {
		for o := e.Off; o < e.Off+e.Len; o += g {
			if marked[o/g] != (e.State&bitmap.Dirty != 0) {
				t.Fatalf("granule at %d: dirty=%v", o, e.State&bitmap.Dirty != 0)
			}
		}
	}
	m, err := bitmap.Overlay(alloc, dirty)
	if err != nil {
		t.Fatal(err)
	}
	// Plan an incremental at 64 KiB chunks: the zeroed region is not read.
	var read, zero int64
	err = m.Walk(g, true, func(p bitmap.Piece) error {
		switch p.Action {
		case bitmap.Read:
			for _, r := range p.Reads {
				read += r.Len
			}
		case bitmap.Zeroes:
			zero += p.Len
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if zero < 1<<20 || read+zero != want {
		t.Fatalf("plan reads %d and zeroes %d of %d dirty bytes", read, zero, want)
	}

	// Point in time: the guest overwrites the dirty regions while we read;
	// the export still shows the disk as it was when the backup began.
	for _, w := range writes[:3] {
		if err := dom.Write(ctx, "vda", w.Off, w.Len, 0xee); err != nil {
			t.Fatal(err)
		}
	}
	got := make([]byte, c.Size())
	if err := c.Read(ctx, got, 0); err != nil {
		t.Fatal(err)
	}
	exp := make([]byte, c.Size())
	_, _ = atStart.ReadAt(exp, 0)
	for i := range got {
		if got[i] != exp[i] {
			t.Fatalf("byte %d: export has %#x, disk at backup start had %#x", i, got[i], exp[i])
		}
	}
	// Allocation agrees with what testenv wrote: every range reported as
	// zeroes is zero, and every generated data segment is reported as data.
	for _, e := range alloc.Extents() {
		if e.State&bitmap.Zero == 0 {
			continue
		}
		for i := e.Off; i < e.Off+e.Len; i++ {
			if exp[i] != 0 {
				t.Fatalf("extent %+v reported zero, byte %d is %#x", e, i, exp[i])
			}
		}
	}
	for _, seg := range atStart.Segments() {
		if seg.Kind != testenv.KindRandom && seg.Kind != testenv.KindText {
			continue
		}
		for _, e := range alloc.Extents() {
			if e.Off < seg.Off+seg.Len && seg.Off < e.Off+e.Len && e.State&bitmap.Zero != 0 && !zeroWritten(writes, e) {
				t.Fatalf("data segment %+v reported as %v in %+v", seg, e.State, e)
			}
		}
	}
	if err := dom.Dom.AbortJob(); err != nil {
		t.Fatal(err)
	}
	// After the backup, the disk holds the later writes.
	if h, err := vda.ActualSHA256(ctx); err != nil || h != vda.ExpectedSHA256() {
		t.Fatalf("disk after backup: %s %v", h, err)
	}
}

func zeroWritten(ws []testenv.Write, e bitmap.Extent) bool {
	for _, w := range ws {
		if w.Zero && w.Off <= e.Off && e.Off+e.Len <= w.Off+w.Len {
			return true
		}
	}
	return false
}
