package domain

import (
	"strings"
	"testing"

	"libvirt.org/go/libvirtxml"

	"github.com/virtkeep/virtkeep/hostd/fixture/hostile"
	"github.com/virtkeep/virtkeep/target"
)

// FuzzSafeDomain: whatever a repository's saved domain XML holds, the
// domain a restore defines has no host passthrough of any kind, and
// qcow2 options never carry a second option.
func FuzzSafeDomain(f *testing.F) {
	f.Add(hostile.DomainXML)
	f.Add(`<domain type='kvm'><name>a</name><devices><hostdev mode='subsystem' type='usb'/><disk device='cdrom'><source file='/etc/shadow'/><target dev='hdc'/></disk></devices></domain>`)
	f.Add(`<domain type='qemu'><os><kernel>/usr/share/qemu/../../../etc/shadow</kernel></os></domain>`)
	f.Fuzz(func(t *testing.T, src string) {
		dx, flt, err := safeDomain(src, DefaultBootFileDirs)
		if err != nil {
			return
		}
		m := &target.Manifest{ID: "p", Disks: []target.DiskManifest{{Name: "vda"}}}
		if err := RewriteDisks(dx, m, flt, func(xd *libvirtxml.DomainDisk, dm target.DiskManifest) error {
			SetDiskFile(xd, "/restored/"+dm.Name+".raw", "raw")
			return nil
		}); err != nil {
			return
		}
		xml, err := dx.Marshal()
		if err != nil {
			return
		}
		for _, bad := range []string{"<hostdev", "<filesystem", "commandline", "<seclabel", "<script", "/etc/", "<smartcard", "<redirdev", "<shmem"} {
			if strings.Contains(xml, bad) {
				t.Fatalf("%s survived:\n%s", bad, xml)
			}
		}
	})
}
