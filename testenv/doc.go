// Package testenv gives tests real components to work against: libvirt
// domains on qemu:///system and plain QEMU processes with disks of
// deterministic content, writes made the way a guest makes them (HMP qemu-io),
// a model of what every disk must hold at any moment, and hashes of what it
// really holds, read from the outside.
//
// On a developer's machine a missing component skips the test. With CI=true
// or VIRTKEEP_REQUIRE_REAL=1 it fails it. Every test that reached a real
// component is counted in the file named by VIRTKEEP_ITEST_LOG, so make test
// can say how many ran. Only tests import testenv.
package testenv
