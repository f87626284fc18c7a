package qmp_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/virtkeep/virtkeep/qmp"
	"github.com/virtkeep/virtkeep/testenv/vm"
)

// bitmapLifecycle adds a persistent bitmap to node, writes through write and
// checks the dirty count follows; then merges, clears and removes.
func bitmapLifecycle(t *testing.T, c *qmp.Client, node string, write func(off, n int64) error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := c.Transaction(ctx, qmp.AddBitmap(node, "vk-a", qmp.BitmapOptions{Persistent: true})); err != nil {
		t.Fatal(err)
	}
	bm, err := c.Bitmap(ctx, node, "vk-a")
	if err != nil {
		t.Fatal(err)
	}
	if bm.Count != 0 || !bm.Persistent || !bm.Recording || bm.Inconsistent || bm.Granularity != 64<<10 {
		t.Fatalf("new bitmap %+v", bm)
	}
	if err := write(1<<20, 512<<10); err != nil {
		t.Fatal(err)
	}
	if bm, err = c.Bitmap(ctx, node, "vk-a"); err != nil || bm.Count != 512<<10 {
		t.Fatalf("after a 512 KiB write: %+v, %v", bm, err)
	}
	// A write that straddles granules dirties both.
	if err := write(4<<20-512, 1024); err != nil {
		t.Fatal(err)
	}
	if bm, _ = c.Bitmap(ctx, node, "vk-a"); bm.Count != 512<<10+128<<10 {
		t.Fatalf("after a straddling write: count %d", bm.Count)
	}
	// A new bitmap and a merge in one transaction.
	if err := c.Transaction(ctx,
		qmp.AddBitmap(node, "vk-b", qmp.BitmapOptions{Persistent: true, Disabled: true}),
		qmp.MergeBitmaps(node, "vk-b", "vk-a"),
		qmp.ClearBitmap(node, "vk-a"),
	); err != nil {
		t.Fatal(err)
	}
	a, _ := c.Bitmap(ctx, node, "vk-a")
	b, _ := c.Bitmap(ctx, node, "vk-b")
	if a.Count != 0 || b.Count != 640<<10 || b.Recording {
		t.Fatalf("after merge+clear: a=%+v b=%+v", a, b)
	}
	// A failed transaction changes nothing: the add of an existing bitmap
	// fails in QEMU and the clear before it is rolled back.
	if err := write(0, 64<<10); err != nil {
		t.Fatal(err)
	}
	err = c.Transaction(ctx, qmp.ClearBitmap(node, "vk-a"), qmp.AddBitmap(node, "vk-b", qmp.BitmapOptions{}))
	var qe *qmp.Error
	if !errors.As(err, &qe) || !errors.Is(err, qmp.ClassGenericError) {
		t.Fatalf("duplicate bitmap: %v", err)
	}
	if a, _ = c.Bitmap(ctx, node, "vk-a"); a.Count != 64<<10 {
		t.Fatalf("failed transaction was not atomic: %+v", a)
	}
	// Bad names are named.
	if _, err := c.Bitmap(ctx, node, "nosuch"); !errors.Is(err, qmp.ErrBitmapNotFound) || !strings.Contains(err.Error(), "nosuch") {
		t.Errorf("unknown bitmap: %v", err)
	}
	if err := c.Transaction(ctx, qmp.RemoveBitmap("no-node", "vk-a")); !errors.Is(err, qmp.ErrNodeNotFound) || !strings.Contains(err.Error(), "no-node") {
		t.Errorf("unknown node: %v", err)
	}
	if err := c.Transaction(ctx, qmp.RemoveBitmap(node, "vk-a"), qmp.RemoveBitmap(node, "vk-b")); err != nil {
		t.Fatal(err)
	}
	if bms, _ := c.Bitmaps(ctx, node); len(bms) != 0 {
		t.Fatalf("bitmaps left: %+v", bms)
	}
}

func TestRealQEMUSocketBitmaps(t *testing.T) {
	q := vm.StartQEMU(t, vm.QEMUSpec{Disks: []vm.DiskSpec{{Size: 16 << 20}}})
	mon := qmp.NewSocketMonitor("unix", q.QMPPath, 5*time.Second)
	if err := mon.Connect(); err != nil {
		t.Fatal(err)
	}
	defer mon.Disconnect()
	c := qmp.NewClient(mon)
	ctx := context.Background()
	node, err := c.DeviceNode(ctx, "vda")
	if err != nil || node != "vda" {
		t.Fatalf("device node %q, %v", node, err)
	}
	if _, err := c.DeviceNode(ctx, "vdq"); !errors.Is(err, qmp.ErrDeviceNotFound) {
		t.Errorf("unknown device: %v", err)
	}
	n, err := c.BlockNode(ctx, node)
	if err != nil || n.Driver != "qcow2" || n.Image.VirtualSize != 16<<20 {
		t.Fatalf("node %+v, %v", n, err)
	}
	bitmapLifecycle(t, c, node, func(off, n int64) error { return q.Write(ctx, "vda", off, n, 5) })
	if err := c.Execute(ctx, "no-such-command", nil, nil); !errors.Is(err, qmp.ClassCommandNotFound) {
		t.Errorf("unknown command: %v", err)
	}
}

func TestRealLibvirtMonitorBitmaps(t *testing.T) {
	env := vm.Libvirt(t)
	dom := env.NewDomain(t, vm.DomainSpec{Disks: []vm.DiskSpec{{Size: 16 << 20}}, Start: true})
	c := qmp.NewClient(qmp.NewLibvirtMonitor(dom.Dom))
	ctx := context.Background()
	node, err := c.DeviceNode(ctx, "virtio-disk0")
	if err != nil {
		t.Fatal(err)
	}
	bitmapLifecycle(t, c, node, func(off, n int64) error { return dom.Write(ctx, "vda", off, n, 6) })
	// Error classes survive libvirt's passthrough.
	if err := c.Execute(ctx, "no-such-command", nil, nil); !errors.Is(err, qmp.ClassCommandNotFound) {
		t.Errorf("unknown command: %v", err)
	}
}
