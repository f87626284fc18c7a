// Package testenv gives tests real components to work against. This package
// is pure Go: disks of deterministic content (Content) written as raw or
// qcow2 images, a model of what a disk must hold after writes, its hash read
// from the outside through qemu-nbd, and the rules for real-component tests.
// Its sub-package vm adds libvirt domains and plain QEMU processes.
//
// On a developer's machine a missing component skips the test. With CI=true
// or VIRTKEEP_REQUIRE_REAL=1 it fails it. Every test that reached a real
// component is counted in the file named by VIRTKEEP_ITEST_LOG, so make test
// can say how many ran. Only tests import testenv.
package testenv
