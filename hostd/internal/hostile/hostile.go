// Package hostile holds a domain definition as an attacker who can write a
// repository would save it, for the tests of restores and boots.
package hostile

// DomainXML is a saved definition as an attacker who can write the
// target would make it: each marked part hands the host to the guest.
const DomainXML = `<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
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

// Marks are strings of DomainXML none of which may reach a restored or
// booted domain.
var Marks = []string{"/etc/passwd", "/etc/shadow", "id_rsa", "seclabel", "/tmp/evil", "/etc/hostname", "/dev/sda",
	"hostroot", "hostdev", "ethernet", "/dev/ttyS0", "libvirt-sock", "org.evil", "0.0.0.0", "letmein", "/dev/tpm0", "/dev/mem",
	"commandline", "/var/lib/elsewhere", "vk-tap0"}
