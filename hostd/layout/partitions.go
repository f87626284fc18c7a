package layout

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
)

// Source is a read-only disk image.
type Source interface {
	Size() int64
	ReadAt(ctx context.Context, p []byte, off int64) error
}

// Partition is one partition of a disk, in bytes.
type Partition struct {
	Number int // as the guest's kernel numbers it: 1-4 primary, 5+ logical
	Off    int64
	Len    int64
}

// ErrBadTable is wrapped by errors for a partition table that makes no
// sense (entries outside the disk, loops in the logical chain).
var ErrBadTable = errors.New("malformed partition table")

const sector = 512

func read(ctx context.Context, src Source, off, n int64) ([]byte, error) {
	if off < 0 || n < 0 || off+n > src.Size() || off+n < off {
		return nil, fmt.Errorf("read [%d, +%d) outside the disk of %d bytes: %w", off, n, src.Size(), ErrBadTable)
	}
	b := make([]byte, n)
	if err := src.ReadAt(ctx, b, off); err != nil {
		return nil, err
	}
	return b, nil
}

// Partitions reads the disk's partition table: GPT (behind a protective
// MBR) or MBR with primary and logical partitions. A disk without a table
// has none (nil, nil). Sectors are 512 bytes.
func Partitions(ctx context.Context, src Source) ([]Partition, error) {
	if src.Size() < 2*sector {
		return nil, nil
	}
	mbr, err := read(ctx, src, 0, sector)
	if err != nil {
		return nil, err
	}
	if mbr[510] != 0x55 || mbr[511] != 0xaa {
		return nil, nil
	}
	for i := 0; i < 4; i++ {
		if mbr[446+16*i+4] == 0xee {
			return gpt(ctx, src)
		}
	}
	// A filesystem's boot sector (FAT, NTFS) also ends in 55 AA: accept
	// the table only if every entry is sane.
	var out []Partition
	size := src.Size()
	for i := 0; i < 4; i++ {
		e := mbr[446+16*i : 446+16*i+16]
		if e[0] != 0 && e[0] != 0x80 {
			return nil, nil
		}
		typ := e[4]
		start := int64(binary.LittleEndian.Uint32(e[8:])) * sector
		n := int64(binary.LittleEndian.Uint32(e[12:])) * sector
		if typ == 0 || n == 0 {
			continue
		}
		if start == 0 || start+n > size {
			return nil, fmt.Errorf("MBR entry %d [%d, +%d) outside the disk of %d bytes: %w", i+1, start, n, size, ErrBadTable)
		}
		if typ == 0x05 || typ == 0x0f || typ == 0x85 {
			logical, err := ebr(ctx, src, start, n)
			if err != nil {
				return nil, err
			}
			out = append(out, logical...)
			continue
		}
		out = append(out, Partition{Number: i + 1, Off: start, Len: n})
	}
	return out, nil
}

// ebr follows the chain of extended boot records of the extended
// partition at [ext, ext+extLen).
func ebr(ctx context.Context, src Source, ext, extLen int64) ([]Partition, error) {
	var out []Partition
	seen := map[int64]bool{}
	for at := ext; ; {
		if seen[at] || len(out) >= 128 {
			return nil, fmt.Errorf("logical partition chain loops or is too long: %w", ErrBadTable)
		}
		seen[at] = true
		b, err := read(ctx, src, at, sector)
		if err != nil {
			return nil, err
		}
		if b[510] != 0x55 || b[511] != 0xaa {
			return nil, fmt.Errorf("extended boot record at %d has no signature: %w", at, ErrBadTable)
		}
		e1, e2 := b[446:462], b[462:478]
		if e1[4] != 0 {
			start := at + int64(binary.LittleEndian.Uint32(e1[8:]))*sector
			n := int64(binary.LittleEndian.Uint32(e1[12:])) * sector
			if start <= at || start+n > ext+extLen || n == 0 {
				return nil, fmt.Errorf("logical partition [%d, +%d) outside its extended partition: %w", start, n, ErrBadTable)
			}
			out = append(out, Partition{Number: 5 + len(out), Off: start, Len: n})
		}
		if e2[4] == 0 {
			return out, nil
		}
		next := ext + int64(binary.LittleEndian.Uint32(e2[8:]))*sector
		if next <= ext || next >= ext+extLen {
			return nil, fmt.Errorf("next extended boot record at %d outside its extended partition: %w", next, ErrBadTable)
		}
		at = next
	}
}

var gptSig = []byte("EFI PART")

// gpt reads the primary GPT header and its entries.
func gpt(ctx context.Context, src Source) ([]Partition, error) {
	h, err := read(ctx, src, sector, sector)
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(h[:8], gptSig) {
		return nil, fmt.Errorf("protective MBR but no GPT header: %w", ErrBadTable)
	}
	entriesLBA := int64(binary.LittleEndian.Uint64(h[72:]))
	count := int64(binary.LittleEndian.Uint32(h[80:]))
	esize := int64(binary.LittleEndian.Uint32(h[84:]))
	if esize < 128 || esize > 4096 || count > 1024 || entriesLBA < 2 {
		return nil, fmt.Errorf("GPT header: %d entries of %d bytes at LBA %d: %w", count, esize, entriesLBA, ErrBadTable)
	}
	tab, err := read(ctx, src, entriesLBA*sector, count*esize)
	if err != nil {
		return nil, err
	}
	var out []Partition
	size := src.Size()
	for i := int64(0); i < count; i++ {
		e := tab[i*esize : (i+1)*esize]
		if isZero(e[:16]) { // unused entry
			continue
		}
		first := int64(binary.LittleEndian.Uint64(e[32:]))
		last := int64(binary.LittleEndian.Uint64(e[40:]))
		if first < 1 || last < first || last >= size/sector {
			return nil, fmt.Errorf("GPT entry %d: LBA %d-%d outside the disk: %w", i+1, first, last, ErrBadTable)
		}
		out = append(out, Partition{Number: int(i) + 1, Off: first * sector, Len: (last - first + 1) * sector})
	}
	return out, nil
}

func isZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
