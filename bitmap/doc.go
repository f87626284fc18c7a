// Package bitmap implements changed-block tracking: libvirt checkpoints and
// QEMU dirty bitmaps, their validation, and the extent maps (allocated, zero,
// hole, dirty) that decide which parts of a disk a backup reads.
package bitmap
