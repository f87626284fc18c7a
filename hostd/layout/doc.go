// Package layout reads how a guest laid out a disk image, from the image's
// bytes alone: its partition table (MBR with logical partitions, or GPT)
// and the LVM2 physical volumes on it, whose logical volumes it maps to
// byte ranges of the disk.
//
// It exists so that file-level restore can reach filesystems inside LVM
// without the host's LVM and device-mapper: the host's LVM would have to
// be told to ignore its own volume groups (a guest's VG is often named like
// the host's), would cache the guest's metadata, and needs device-mapper,
// which some kernels lack. Here a logical volume becomes a View, a
// read-only byte range served over NBD like the disk itself. Only linear
// volumes (striped segments with one stripe, on physical volumes of this
// disk) are mapped; others are listed with the reason they are not.
//
// Everything read is untrusted guest data: every offset and count is
// checked against the disk's size, and the parsers are fuzzed.
package layout
