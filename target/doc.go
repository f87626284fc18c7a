// Package target defines the virtkeep repository: its on-disk format
// (docs/FORMAT.md), the backend contract every storage target implements, and
// the operations on backup points: write, read, check (sampled or whole),
// retention and prune, GC, and copy between repositories. Backends live in
// sub-packages; target/limit bounds a backend's bandwidth and requests.
// target never imports libvirt or QMP.
package target
