// Package target defines the virtkeep repository: its on-disk format
// (docs/FORMAT.md), the backend contract every storage target implements, and
// the operations on backup points. Backends live in sub-packages. target never
// imports libvirt or QMP.
package target
