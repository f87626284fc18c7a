package domain

import (
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"

	"libvirt.org/go/libvirtxml"

	"github.com/virtkeep/virtkeep/hostd/fixture/hostile"
	"github.com/virtkeep/virtkeep/target"
)

func TestSafeDomainHostile(t *testing.T) {
	dx, f, err := safeDomain(hostile.DomainXML, DefaultBootFileDirs)
	if err != nil {
		t.Fatal(err)
	}
	m := &target.Manifest{ID: "p", Disks: []target.DiskManifest{{Name: "vda"}, {Name: "vdb"}}}
	if err := RewriteDisks(dx, m, f, func(xd *libvirtxml.DomainDisk, dm target.DiskManifest) error {
		SetDiskFile(xd, "/restored/"+dm.Name+".raw", "raw")
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	FreshIdentity(dx, "vk-new", "/restored")
	xml, err := dx.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	for _, mark := range hostile.Marks {
		if strings.Contains(xml, mark) {
			t.Errorf("%q survived:\n%s", mark, xml)
		}
	}
	for _, want := range []string{"/restored/vda.raw", "/restored/vdb.raw", "network='default'", "127.0.0.1", "org.qemu.guest_agent.0", "device=\"cdrom\""} {
		if !strings.Contains(strings.ReplaceAll(xml, `"`, "'"), strings.ReplaceAll(want, `"`, "'")) {
			t.Errorf("%q missing:\n%s", want, xml)
		}
	}
	all := strings.Join(f.dropped, "\n")
	for _, named := range []string{"hostdev", "filesystem", "seclabel", "kernel", "loader", "ethernet", "/dev/sda", "tpm", "rng", "org.evil"} {
		if !strings.Contains(all, named) {
			t.Errorf("the drops do not name %s:\n%s", named, all)
		}
	}
	if len(f.dropped) == 0 || !errors.Is(f.Report(slog.New(slog.NewTextHandler(io.Discard, nil)), "p", true), ErrUnsafeDomain) {
		t.Fatal("strict accepted a hostile definition")
	}
	// An ordinary definition passes strict.
	_, f2, err := safeDomain(`<domain type='kvm'><name>a</name><memory>65536</memory><os><type>hvm</type><loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE.fd</loader></os>
  <devices><interface type='bridge'><source bridge='br0'/><model type='virtio'/></interface><graphics type='vnc' port='-1'/><video><model type='virtio'/></video>
  <input type='tablet' bus='usb'/><channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel><serial type='pty'/></devices></domain>`, DefaultBootFileDirs)
	if err != nil || len(f2.dropped) != 0 {
		t.Fatalf("an ordinary definition: %v %v", err, f2.dropped)
	}
}
