// Package qmp is virtkeep's QEMU Machine Protocol client. It is built on the
// Monitor interface of github.com/digitalocean/go-qemu/qmp and comes with two
// monitors: SocketMonitor for a plain QEMU process's QMP unix socket, and
// LibvirtMonitor for a libvirt domain (virDomainQemuMonitorCommand). Client
// adds contexts, keeps QMP error classes in typed errors (*Error), and has
// typed helpers for what backups need: block nodes, dirty bitmaps and bitmap
// transactions.
package qmp
