package layout

import (
	"bytes"
	"context"
	"encoding/binary"
	"testing"

	"github.com/virtkeep/virtkeep/nbd"
)

// FuzzMetadata: any metadata text parses or fails with an error; mapped
// volumes always lie inside their physical volume.
func FuzzMetadata(f *testing.F) {
	f.Add([]byte(vgText))
	f.Add([]byte("vg { extent_size = 1 physical_volumes { pv0 { id = \"A\" pe_start = 1 pe_count = 2 } } logical_volumes { a { status = [\"VISIBLE\"] segment1 { start_extent = 0 extent_count = 2 type = \"striped\" stripe_count = 1 stripes = [\"pv0\", 0] } } } }"))
	f.Fuzz(func(t *testing.T, text []byte) {
		p := pv{uuid: "A", off: 4096, size: 1 << 20, text: text}
		lvs, err := volumes([]pv{p})
		if err != nil {
			return
		}
		for _, lv := range lvs {
			for _, s := range lv.Segments {
				if s.Len <= 0 || s.DiskOff < p.off || s.DiskOff+s.Len > p.off+p.size || s.Off < 0 || s.Off+s.Len > lv.Size {
					t.Fatalf("%s: segment %+v outside [%d, +%d) or the volume of %d", lv.Name, s, p.off, p.size, lv.Size)
				}
			}
		}
	})
}

// FuzzDisk: any disk image (its first sectors fuzzed, as a partition table,
// an LVM label or metadata) yields a layout inside the disk or an error.
func FuzzDisk(f *testing.F) {
	mbr := make([]byte, 4096)
	mbr[510], mbr[511] = 0x55, 0xaa
	mbr[446+4] = 0x83
	binary.LittleEndian.PutUint32(mbr[446+8:], 2)
	binary.LittleEndian.PutUint32(mbr[446+12:], 4)
	f.Add(mbr)
	gpt := bytes.Clone(mbr)
	gpt[446+4] = 0xee
	copy(gpt[512:], "EFI PART")
	binary.LittleEndian.PutUint64(gpt[512+72:], 2)
	binary.LittleEndian.PutUint32(gpt[512+80:], 4)
	binary.LittleEndian.PutUint32(gpt[512+84:], 128)
	f.Add(gpt)
	label := make([]byte, 4096)
	copy(label[512:], "LABELONE")
	label[512+8] = 1
	copy(label[512+24:], "LVM2 001")
	f.Add(label)
	f.Fuzz(func(t *testing.T, head []byte) {
		disk := make([]byte, 1<<20)
		copy(disk, head)
		src := nbd.ReaderAtSource(bytes.NewReader(disk), int64(len(disk)))
		ctx := context.Background()
		parts, err := Partitions(ctx, src)
		if err != nil {
			return
		}
		for _, p := range parts {
			if p.Off <= 0 || p.Len <= 0 || p.Off+p.Len > int64(len(disk)) {
				t.Fatalf("partition %+v outside the disk", p)
			}
		}
		lvs, err := LVs(ctx, src, parts)
		if err != nil {
			return
		}
		for _, lv := range lvs {
			if v, err := NewView(src, lv); err == nil {
				b := make([]byte, min(v.Size(), 1<<16))
				if err := v.ReadAt(ctx, b, 0); err != nil {
					t.Fatalf("read of mapped volume %s: %v", lv.Name, err)
				}
			}
		}
	})
}
