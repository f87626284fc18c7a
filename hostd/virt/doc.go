// Package virt holds the libvirt and QEMU helpers the operations share:
// domain lookups, which disks of a domain a backup reads, checkpoint XML
// (built once, through libvirtxml), qemu-img, and starting a helper
// process (qemu-nbd, an NBD server) and waiting until it listens.
package virt
