package layout

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"sort"
	"strings"
)

// LV is a logical volume found on the disk.
type LV struct {
	VG, Name string
	Size     int64
	// Segments map the volume onto the disk, in order; empty when the
	// volume cannot be mapped (see Unsupported).
	Segments []Segment
	// Unsupported says why the volume is not mapped ("" when it is).
	Unsupported string
}

// Segment maps [Off, Off+Len) of a volume to [DiskOff, DiskOff+Len) of
// the disk.
type Segment struct{ Off, DiskOff, Len int64 }

// ErrBadLVM is wrapped by errors for LVM2 labels or metadata that cannot
// be read.
var ErrBadLVM = errors.New("malformed LVM2 metadata")

const (
	initialCRC   = 0xf597a6cf
	mdaHeaderLen = 512
	maxMetadata  = 16 << 20
)

var (
	labelID   = []byte("LABELONE")
	labelType = []byte("LVM2 001")
	mdaMagic  = []byte(" LVM2 x[5A%r0N*>")
)

// lvmCRC is LVM2's calc_crc: CRC-32 (IEEE) from a given start value,
// without the final inversion.
func lvmCRC(init uint32, b []byte) uint32 {
	return ^crc32.Update(^init, crc32.IEEETable, b)
}

// pv is a physical volume found at off of the disk.
type pv struct {
	uuid string // 32 characters, no dashes
	off  int64
	size int64  // bytes from off the volume may cover
	text []byte // its current metadata
}

// Read reads the disk's partition table and the logical volumes on it.
// When only the volumes cannot be read, the partitions come with the error.
func Read(ctx context.Context, src Source) ([]Partition, []LV, error) {
	parts, err := Partitions(ctx, src)
	if err != nil {
		return nil, nil, err
	}
	lvs, err := LVs(ctx, src, parts)
	return parts, lvs, err
}

// LVs scans the partitions of the disk (as Partitions returned them; none:
// the whole disk) for LVM2 physical volumes and returns the logical
// volumes of their volume groups, sorted by VG and name. A disk without
// LVM has none.
func LVs(ctx context.Context, src Source, parts []Partition) ([]LV, error) {
	areas := []Partition{{Off: 0, Len: src.Size()}}
	if len(parts) > 0 {
		areas = parts
	}
	var pvs []pv
	for _, a := range areas {
		p, ok, err := readPV(ctx, src, a.Off, a.Len)
		if err != nil {
			return nil, err
		}
		if ok {
			pvs = append(pvs, p)
		}
	}
	return volumes(pvs)
}

// readPV reads the label, header and current metadata of a PV at off.
func readPV(ctx context.Context, src Source, off, length int64) (pv, bool, error) {
	if length < 4*sector {
		return pv{}, false, nil
	}
	head, err := read(ctx, src, off, 4*sector)
	if err != nil {
		return pv{}, false, err
	}
	for s := int64(0); s < 4; s++ {
		l := head[s*sector : (s+1)*sector]
		if !bytes.Equal(l[:8], labelID) || !bytes.Equal(l[24:32], labelType) {
			continue
		}
		if binary.LittleEndian.Uint64(l[8:]) != uint64(s) {
			continue
		}
		if lvmCRC(initialCRC, l[20:]) != binary.LittleEndian.Uint32(l[16:]) {
			return pv{}, false, fmt.Errorf("LVM2 label at %d: checksum mismatch: %w", off+s*sector, ErrBadLVM)
		}
		ho := int64(binary.LittleEndian.Uint32(l[20:]))
		if ho < 32 || ho+32+8+16 > sector {
			return pv{}, false, fmt.Errorf("LVM2 label at %d: header offset %d: %w", off+s*sector, ho, ErrBadLVM)
		}
		h := l[ho:]
		p := pv{uuid: string(h[:32]), off: off, size: length}
		// Data areas, then metadata areas, each list ending in a zero entry.
		locs := h[40:]
		next := func() (int64, int64, bool) {
			if len(locs) < 16 {
				return 0, 0, false
			}
			o, n := int64(binary.LittleEndian.Uint64(locs)), int64(binary.LittleEndian.Uint64(locs[8:]))
			locs = locs[16:]
			return o, n, o != 0
		}
		for _, _, ok := next(); ok; _, _, ok = next() {
		}
		for o, n, ok := next(); ok; o, n, ok = next() {
			text, err := readMetadata(ctx, src, off, length, o, n)
			if err != nil {
				return pv{}, false, err
			}
			if text != nil {
				p.text = text
				return p, true, nil
			}
		}
		return pv{}, false, fmt.Errorf("LVM2 physical volume at %d: no readable metadata area: %w", off, ErrBadLVM)
	}
	return pv{}, false, nil
}

// readMetadata reads the current metadata text of the metadata area at
// [mdaOff, +mdaLen) of the PV at pvOff.
func readMetadata(ctx context.Context, src Source, pvOff, pvLen, mdaOff, mdaLen int64) ([]byte, error) {
	if mdaOff < 0 || mdaLen < 2*mdaHeaderLen || mdaOff+mdaLen > pvLen || mdaLen > maxMetadata+mdaHeaderLen {
		return nil, fmt.Errorf("LVM2 metadata area [%d, +%d) outside its volume: %w", mdaOff, mdaLen, ErrBadLVM)
	}
	h, err := read(ctx, src, pvOff+mdaOff, mdaHeaderLen)
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(h[4:20], mdaMagic) {
		return nil, nil
	}
	if lvmCRC(initialCRC, h[4:]) != binary.LittleEndian.Uint32(h) {
		return nil, fmt.Errorf("LVM2 metadata area header at %d: checksum mismatch: %w", pvOff+mdaOff, ErrBadLVM)
	}
	o := int64(binary.LittleEndian.Uint64(h[40:]))
	n := int64(binary.LittleEndian.Uint64(h[48:]))
	sum := binary.LittleEndian.Uint32(h[56:])
	if n == 0 {
		return nil, nil // an empty area
	}
	if o < mdaHeaderLen || o >= mdaLen || n > mdaLen-mdaHeaderLen {
		return nil, fmt.Errorf("LVM2 metadata [%d, +%d) outside its area of %d bytes: %w", o, n, mdaLen, ErrBadLVM)
	}
	// The area is a ring after its header: the text may wrap.
	first := min(n, mdaLen-o)
	text, err := read(ctx, src, pvOff+mdaOff+o, first)
	if err != nil {
		return nil, err
	}
	if first < n {
		rest, err := read(ctx, src, pvOff+mdaOff+mdaHeaderLen, n-first)
		if err != nil {
			return nil, err
		}
		text = append(text, rest...)
	}
	if lvmCRC(initialCRC, text) != sum {
		return nil, fmt.Errorf("LVM2 metadata text at %d: checksum mismatch: %w", pvOff+mdaOff+o, ErrBadLVM)
	}
	return bytes.TrimRight(text, "\x00"), nil
}

// volumes maps the LVs of the VGs whose metadata the PVs hold.
func volumes(pvs []pv) ([]LV, error) {
	byUUID := map[string]pv{}
	type vgMeta struct {
		name  string
		seqno int64
		sec   *section
	}
	vgs := map[string]vgMeta{} // by VG id: the newest metadata wins
	for _, p := range pvs {
		byUUID[p.uuid] = p
		top, err := parseConfig(p.text)
		if err != nil {
			return nil, fmt.Errorf("LVM2 metadata of the volume at %d: %w", p.off, err)
		}
		for _, name := range top.order {
			sec := top.sections[name]
			id, _ := sec.str("id")
			seq, _ := sec.num("seqno")
			if old, ok := vgs[id]; !ok || seq > old.seqno {
				vgs[id] = vgMeta{name, seq, sec}
			}
		}
	}
	var out []LV
	for _, vg := range vgs {
		lvs, err := vgVolumes(vg.name, vg.sec, byUUID)
		if err != nil {
			return nil, fmt.Errorf("volume group %s: %w", vg.name, err)
		}
		out = append(out, lvs...)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].VG != out[j].VG {
			return out[i].VG < out[j].VG
		}
		return out[i].Name < out[j].Name
	})
	return out, nil
}

func vgVolumes(vgName string, vg *section, byUUID map[string]pv) ([]LV, error) {
	es, ok := vg.num("extent_size")
	if !ok || es <= 0 || es > 1<<32 {
		return nil, fmt.Errorf("extent_size: %w", ErrBadLVM)
	}
	extent := es * sector
	// PV names in this VG's metadata (pv0, pv1, ...) → where they are.
	type where struct {
		p       pv
		peStart int64
		peCount int64
		found   bool
	}
	pvByName := map[string]where{}
	if pvs := vg.sections["physical_volumes"]; pvs != nil {
		for _, name := range pvs.order {
			s := pvs.sections[name]
			id, _ := s.str("id")
			peStart, _ := s.num("pe_start")
			peCount, _ := s.num("pe_count")
			p, found := byUUID[strings.ReplaceAll(id, "-", "")]
			pvByName[name] = where{p, peStart * sector, peCount, found}
		}
	}
	var out []LV
	lvs := vg.sections["logical_volumes"]
	if lvs == nil {
		return nil, nil
	}
	for _, name := range lvs.order {
		s := lvs.sections[name]
		if !s.has("status", "VISIBLE") {
			continue // internal volumes (thin pool data, mirror logs, ...)
		}
		lv := LV{VG: vgName, Name: name}
		segs, size, why := mapSegments(s, extent, func(pvName string, pe, count int64) (int64, string) {
			w, ok := pvByName[pvName]
			switch {
			case !ok:
				return 0, "names an unknown physical volume " + pvName
			case !w.found:
				return 0, "lies on a physical volume of another disk"
			case pe < 0 || count <= 0 || pe+count > w.peCount:
				return 0, fmt.Sprintf("extents %d+%d outside %s", pe, count, pvName)
			}
			at := w.p.off + w.peStart + pe*extent
			if w.peStart < 0 || at+count*extent > w.p.off+w.p.size {
				return 0, fmt.Sprintf("extents %d+%d of %s outside the disk", pe, count, pvName)
			}
			return at, ""
		})
		lv.Size = size
		if why != "" {
			lv.Unsupported = why
		} else {
			lv.Segments = segs
		}
		out = append(out, lv)
	}
	return out, nil
}

// mapSegments maps an LV's segments; locate returns where extent pe of a
// PV is on the disk, or why it cannot.
func mapSegments(lv *section, extent int64, locate func(pv string, pe, count int64) (int64, string)) ([]Segment, int64, string) {
	var segs []Segment
	var size int64
	why := ""
	for _, name := range lv.order {
		s := lv.sections[name]
		if !strings.HasPrefix(name, "segment") {
			continue
		}
		start, _ := s.num("start_extent")
		count, _ := s.num("extent_count")
		if count <= 0 || count > 1<<40/extent || start < 0 {
			return nil, 0, fmt.Sprintf("%s has %d extents", name, count)
		}
		size += count * extent
		typ, _ := s.str("type")
		stripes, _ := s.num("stripe_count")
		if why != "" {
			continue
		}
		if typ != "striped" {
			why = fmt.Sprintf("%s is of type %s (only linear volumes are mapped without device-mapper)", name, typ)
			continue
		}
		if stripes != 1 {
			why = fmt.Sprintf("%s is striped over %d volumes (only linear volumes are mapped without device-mapper)", name, stripes)
			continue
		}
		list := s.list("stripes")
		if len(list) != 2 {
			why = name + ": malformed stripes"
			continue
		}
		pvName, ok1 := list[0].(string)
		pe, ok2 := list[1].(int64)
		if !ok1 || !ok2 {
			why = name + ": malformed stripes"
			continue
		}
		at, w := locate(pvName, pe, count)
		if w != "" {
			why = name + " " + w
			continue
		}
		segs = append(segs, Segment{Off: start * extent, DiskOff: at, Len: count * extent})
	}
	sort.Slice(segs, func(i, j int) bool { return segs[i].Off < segs[j].Off })
	var at int64
	for _, sg := range segs {
		if sg.Off != at && why == "" {
			why = fmt.Sprintf("segments leave a gap at %d", at)
		}
		at = sg.Off + sg.Len
	}
	if why == "" && at != size {
		why = "segments do not cover the volume"
	}
	if len(segs) == 0 && why == "" {
		why = "no segments"
	}
	return segs, size, why
}
