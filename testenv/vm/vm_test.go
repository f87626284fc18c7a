package vm

import (
	"context"
	"github.com/virtkeep/virtkeep/testenv"
	"strings"
	"testing"
	"time"

	"libvirt.org/go/libvirt"
)

func TestImageFromOutside(t *testing.T) {
	testenv.Integration(t)
	testenv.RequireCommands(t, "qemu-img", "qemu-io", "qemu-nbd", "nbdcopy")
	ctx := context.Background()
	dir := testenv.TempDir(t)
	disks, err := createDisks(ctx, dir, []DiskSpec{{Format: "raw", Size: 16 << 20}, {Format: "qcow2", Size: 16 << 20, Seed: 5}})
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range disks {
		got, err := d.ActualSHA256(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if want := d.ExpectedSHA256(); got != want {
			t.Errorf("%s (%s): outside hash %s, model %s", d.Target, d.Format, got, want)
		}
	}
	if disks[0].ExpectedSHA256() == disks[1].ExpectedSHA256() {
		t.Error("disks with different seeds are identical")
	}
	if _, err := testenv.ImageSHA256(ctx, dir+"/nosuch.qcow2", "qcow2"); err == nil || !strings.Contains(err.Error(), "nosuch.qcow2") {
		t.Errorf("missing image: error %v does not name it", err)
	}
	if err := testenv.WriteImage(ctx, disks[0].Content, dir+"/x.vmdk", "vmdk"); err == nil || !strings.Contains(err.Error(), "vmdk") {
		t.Errorf("unknown format: error %v does not name it", err)
	}
}

func TestDomainTwoDisksWrite(t *testing.T) {
	env := Libvirt(t)
	dom := env.NewDomain(t, DomainSpec{
		Disks: []DiskSpec{{Size: 32 << 20}, {Format: "raw", Size: 16 << 20}},
		Start: true,
	})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if s, err := dom.State(); err != nil || s != libvirt.DOMAIN_PAUSED {
		t.Fatalf("state %v, %v; want paused", s, err)
	}
	writes := []struct {
		disk    string
		off, n  int64
		pattern byte
	}{
		{"vda", 0, 512 << 10, 7},
		{"vda", 5<<20 + 4096, 64 << 10, 8},
		{"vdb", 1 << 20, 1 << 20, 9},
		{"vda", 31 << 20, 1 << 20, 10},
	}
	for _, w := range writes {
		if err := dom.Write(ctx, w.disk, w.off, w.n, w.pattern); err != nil {
			t.Fatal(err)
		}
	}
	if err := dom.WriteZeroes(ctx, "vdb", 0, 256<<10); err != nil {
		t.Fatal(err)
	}
	for _, d := range dom.Disks {
		got, err := d.ActualSHA256(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if want := d.ExpectedSHA256(); got != want {
			t.Errorf("disk %s: outside hash %s, expected %s", d.Target, got, want)
		}
	}
	vda, _ := dom.Disk("vda")
	if len(vda.Content.Writes()) != 3 {
		t.Errorf("vda records %d writes, want 3", len(vda.Content.Writes()))
	}

	// Bad input names what is wrong.
	if err := dom.Write(ctx, "vdz", 0, 512, 1); err == nil || !strings.Contains(err.Error(), `"vdz"`) {
		t.Errorf("unknown disk: %v", err)
	}
	if err := dom.Write(ctx, "vda", 32<<20, 512, 1); err == nil || !strings.Contains(err.Error(), "outside") {
		t.Errorf("write past the end: %v", err)
	}
	if err := dom.Destroy(); err != nil {
		t.Fatal(err)
	}
	if err := dom.Write(ctx, "vda", 0, 512, 1); err == nil || !strings.Contains(err.Error(), "not attached") {
		t.Errorf("write to a stopped domain: %v", err)
	}
	// The content survives a restart.
	if err := dom.Start(true); err != nil {
		t.Fatal(err)
	}
	got, err := vda.ActualSHA256(ctx)
	if err != nil || got != vda.ExpectedSHA256() {
		t.Errorf("after restart: %s, %v; want %s", got, err, vda.ExpectedSHA256())
	}
}

func TestPlainQEMUWrite(t *testing.T) {
	q := StartQEMU(t, QEMUSpec{Disks: []DiskSpec{{Size: 16 << 20}, {Format: "raw", Size: 8 << 20}}})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := q.Write(ctx, "vda", 1<<20, 128<<10, 3); err != nil {
		t.Fatal(err)
	}
	if err := q.Write(ctx, "vdb", 0, 4096, 4); err != nil {
		t.Fatal(err)
	}
	for _, d := range q.Disks {
		got, err := d.ActualSHA256(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if got != d.ExpectedSHA256() {
			t.Errorf("disk %s: outside hash %s, expected %s", d.Target, got, d.ExpectedSHA256())
		}
	}
	if err := q.Write(ctx, "sda", 0, 1, 1); err == nil || !strings.Contains(err.Error(), `"sda"`) {
		t.Errorf("unknown disk: %v", err)
	}
}
