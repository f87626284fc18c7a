// Package vm starts what backups are taken of: persistent libvirt domains on
// qemu:///system and plain QEMU processes with QMP sockets, with disks of
// deterministic content (testenv.Content). Writes reach a running disk the
// way a guest's do, through HMP qemu-io, and are recorded so tests know what
// every disk must hold. Domains and processes are removed when the test
// ends, with their state and logs dumped if it failed. Only tests import it.
package vm
