package engine

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"libvirt.org/go/libvirt"
	"libvirt.org/go/libvirtxml"

	"github.com/virtkeep/virtkeep/target"
	"github.com/virtkeep/virtkeep/testenv"
	"github.com/virtkeep/virtkeep/testenv/vm"
)

// hostileDomainXML is a saved definition as an attacker who can write the
// target would make it: each marked part hands the host to the guest.
const hostileDomainXML = `<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>vk-hostile</name>
  <uuid>2b5c8f3e-0000-4000-8000-000000000001</uuid>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='q35'>hvm</type>
    <loader readonly='no' type='pflash'>/etc/passwd</loader>
    <kernel>/etc/shadow</kernel><initrd>/root/.ssh/id_rsa</initrd></os>
  <seclabel type='none'/>
  <devices>
    <emulator>/tmp/evil-qemu</emulator>
    <disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='/var/lib/elsewhere/vda.raw'/>
      <backingStore type='file'><format type='raw'/><source file='/etc/hostname'/></backingStore>
      <target dev='vda' bus='virtio'/></disk>
    <disk type='block' device='cdrom'><driver name='qemu' type='raw'/><source dev='/dev/sda'/><target dev='sda' bus='sata'/><readonly/></disk>
    <disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='/etc/shadow'/><target dev='vdb' bus='virtio'/></disk>
    <filesystem type='mount' accessmode='passthrough'><source dir='/'/><target dir='hostroot'/></filesystem>
    <hostdev mode='subsystem' type='pci' managed='yes'><source><address domain='0x0000' bus='0x00' slot='0x1f' function='0x3'/></source></hostdev>
    <interface type='ethernet'><script path='/tmp/evil-script'/><target dev='vk-tap0'/></interface>
    <interface type='network'><source network='default'/><model type='virtio'/><script path='/tmp/evil-script2'/></interface>
    <serial type='dev'><source path='/dev/ttyS0'/><target port='0'/></serial>
    <channel type='unix'><source mode='bind' path='/tmp/evil.sock'/><target type='virtio' name='org.qemu.guest_agent.0'/></channel>
    <channel type='unix'><source mode='connect' path='/run/libvirt/libvirt-sock'/><target type='virtio' name='org.evil.0'/></channel>
    <graphics type='vnc' port='5900' listen='0.0.0.0' passwd='letmein'/>
    <tpm model='tpm-tis'><backend type='passthrough'><device path='/dev/tpm0'/></backend></tpm>
    <rng model='virtio'><backend model='random'>/dev/mem</backend></rng>
    <memballoon model='none'/>
    <controller type='usb' model='none'/>
  </devices>
  <qemu:commandline><qemu:arg value='-device'/><qemu:arg value='evil'/></qemu:commandline>
</domain>`

var hostileMarks = []string{"/etc/passwd", "/etc/shadow", "id_rsa", "seclabel", "/tmp/evil", "/etc/hostname", "/dev/sda",
	"hostroot", "hostdev", "ethernet", "/dev/ttyS0", "libvirt-sock", "org.evil", "0.0.0.0", "letmein", "/dev/tpm0", "/dev/mem",
	"commandline", "/var/lib/elsewhere", "vk-tap0"}

func TestSafeDomainHostile(t *testing.T) {
	dx, f, err := safeDomain(hostileDomainXML, DefaultBootFileDirs)
	if err != nil {
		t.Fatal(err)
	}
	m := &target.Manifest{ID: "p", Disks: []target.DiskManifest{{Name: "vda"}, {Name: "vdb"}}}
	if err := rewriteDisks(dx, m, f, func(xd *libvirtxml.DomainDisk, dm target.DiskManifest) error {
		setDiskFile(xd, "/restored/"+dm.Name+".raw", "raw")
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	freshIdentity(dx, "vk-new", "/restored")
	xml, err := dx.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	for _, mark := range hostileMarks {
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
	if len(f.dropped) == 0 || !errors.Is(f.report(slog.New(slog.NewTextHandler(io.Discard, nil)), "p", true), ErrUnsafeDomain) {
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

// TestRestoreHostileDomain: restore --as from a point whose saved
// definition is hostile defines a domain without any of it in libvirt;
// with Strict it is refused and nothing is left.
func TestRestoreHostileDomain(t *testing.T) {
	env := vm.Libvirt(t)
	r, m := hostileDomainPoint(t, nil, strings.Replace(hostileDomainXML, "<disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='/etc/shadow'/><target dev='vdb' bus='virtio'/></disk>", "", 1))
	e := &Engine{Conn: env.Conn, StateDir: t.TempDir(), Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	dir := testenv.TempDir(t)
	name := "vk-" + filepath.Base(dir)
	if _, err := e.RestoreDomain(testCtx(t), r, m.ID, DomainRestore{Name: name, Dir: filepath.Join(dir, "strict"), Strict: true}); !errors.Is(err, ErrUnsafeDomain) || !strings.Contains(err.Error(), "hostdev") {
		t.Fatalf("strict restore of a hostile definition: %v", err)
	}
	if d, err := env.Conn.LookupDomainByName(name); err == nil {
		d.Free()
		t.Fatal("a strict refusal defined the domain")
	}
	if ents, _ := os.ReadDir(filepath.Join(dir, "strict")); len(ents) != 0 {
		t.Fatalf("a strict refusal left %v", ents)
	}
	uuid, err := e.RestoreDomain(testCtx(t), r, m.ID, DomainRestore{Name: name, Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	dom, err := env.Conn.LookupDomainByUUIDString(uuid)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = dom.Undefine()
		dom.Free()
	})
	xml, err := dom.GetXMLDesc(libvirt.DOMAIN_XML_INACTIVE | libvirt.DOMAIN_XML_SECURE)
	if err != nil {
		t.Fatal(err)
	}
	for _, mark := range hostileMarks {
		if strings.Contains(xml, mark) {
			t.Errorf("%q reached libvirt:\n%s", mark, xml)
		}
	}
	if !strings.Contains(xml, filepath.Join(dir, "vda.qcow2")) {
		t.Fatalf("the restored disk is not the domain's:\n%s", xml)
	}
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}
