package layout

import (
	"context"
	"fmt"

	"github.com/virtkeep/virtkeep/nbd"
)

// View is a logical volume as a read-only disk of its own: reads go to the
// disk's bytes the volume's segments map. It is an nbd.Source, and an
// nbd.Mapper when the disk is one (holes stay holes).
type View struct {
	disk Source
	lv   LV
}

// NewView returns lv of disk as a Source; lv must be mapped.
func NewView(disk Source, lv LV) (*View, error) {
	if lv.Unsupported != "" || len(lv.Segments) == 0 {
		return nil, fmt.Errorf("logical volume %s/%s cannot be mapped: %s", lv.VG, lv.Name, lv.Unsupported)
	}
	return &View{disk: disk, lv: lv}, nil
}

// Size is the volume's size.
func (v *View) Size() int64 { return v.lv.Size }

// pieces calls fn for the parts of [off, off+n) in each segment.
func (v *View) pieces(off, n int64, fn func(at, diskOff, length int64) error) error {
	if off < 0 || n < 0 || off+n > v.lv.Size {
		return fmt.Errorf("read [%d, +%d) outside the volume of %d bytes", off, n, v.lv.Size)
	}
	for _, s := range v.lv.Segments {
		lo, hi := max(off, s.Off), min(off+n, s.Off+s.Len)
		if lo >= hi {
			continue
		}
		if err := fn(lo, s.DiskOff+lo-s.Off, hi-lo); err != nil {
			return err
		}
	}
	return nil
}

// ReadAt reads the volume's bytes at off.
func (v *View) ReadAt(ctx context.Context, p []byte, off int64) error {
	return v.pieces(off, int64(len(p)), func(at, diskOff, n int64) error {
		return v.disk.ReadAt(ctx, p[at-off:at-off+n], diskOff)
	})
}

var _ nbd.Mapper = (*View)(nil)

// Extents reports the volume's allocation from the disk's.
func (v *View) Extents(ctx context.Context, off, length int64, fn func(nbd.Extent) error) error {
	m, ok := v.disk.(nbd.Mapper)
	if !ok {
		return fn(nbd.Extent{Off: off, Len: length})
	}
	return v.pieces(off, length, func(at, diskOff, n int64) error {
		return m.Extents(ctx, diskOff, n, func(e nbd.Extent) error {
			return fn(nbd.Extent{Off: at + e.Off - diskOff, Len: e.Len, Flags: e.Flags})
		})
	})
}
