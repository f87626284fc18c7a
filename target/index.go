package target

import (
	"encoding/binary"
	"fmt"
)

// root is a disk's index root: the page IDs of a disk.
type root struct {
	size      int64
	chunkSize int
	pages     []ID
}

func (rt *root) chunks() int64 { return (rt.size + int64(rt.chunkSize) - 1) / int64(rt.chunkSize) }

func numPages(chunks int64) int64 { return (chunks + pageEntries - 1) / pageEntries }

func (rt *root) encode() []byte {
	b := make([]byte, 16, 16+32*len(rt.pages))
	binary.BigEndian.PutUint64(b[0:], uint64(rt.size))
	binary.BigEndian.PutUint32(b[8:], uint32(rt.chunkSize))
	binary.BigEndian.PutUint32(b[12:], pageEntries)
	for _, p := range rt.pages {
		b = append(b, p[:]...)
	}
	return b
}

// decodeRoot parses a root; chunkSize is the repository's.
func decodeRoot(b []byte, chunkSize int) (*root, error) {
	if len(b) < 16 || (len(b)-16)%32 != 0 {
		return nil, corrupt("index root of %d bytes", len(b))
	}
	size := binary.BigEndian.Uint64(b[0:])
	cs := int(binary.BigEndian.Uint32(b[8:]))
	pe := binary.BigEndian.Uint32(b[12:])
	if cs != chunkSize || pe != pageEntries || size > 1<<56 {
		return nil, corrupt("index root: size %d, chunk size %d, %d entries per page", size, cs, pe)
	}
	rt := &root{size: int64(size), chunkSize: cs}
	if n := int64(len(b)-16) / 32; n != numPages(rt.chunks()) {
		return nil, corrupt("index root of a %d-byte disk has %d pages, want %d", size, n, numPages(rt.chunks()))
	}
	rt.pages = make([]ID, (len(b)-16)/32)
	for i := range rt.pages {
		copy(rt.pages[i][:], b[16+32*i:])
	}
	return rt, nil
}

// pageLen is how many chunks page p of a disk with n chunks holds.
func pageLen(p, chunks int64) int {
	return int(min(pageEntries, chunks-p*pageEntries))
}

func encodePage(ids []ID) []byte {
	b := make([]byte, 0, 32*len(ids))
	for _, id := range ids {
		b = append(b, id[:]...)
	}
	return b
}

func decodePage(b []byte, want int) ([]ID, error) {
	if len(b) != 32*want {
		return nil, corrupt("index page of %d bytes, want %d entries", len(b), want)
	}
	ids := make([]ID, want)
	for i := range ids {
		copy(ids[i][:], b[32*i:])
	}
	return ids, nil
}

func allZero(ids []ID) bool {
	for _, id := range ids {
		if !id.IsZero() {
			return false
		}
	}
	return true
}

func (rt *root) String() string {
	return fmt.Sprintf("root(%d bytes, %d pages)", rt.size, len(rt.pages))
}
