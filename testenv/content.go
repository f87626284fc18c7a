package testenv

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"sort"
	"strings"
	"sync"
)

// SegmentAlign is the alignment and size unit of the content layout. It equals
// the default qcow2 cluster size, so every segment maps onto whole clusters.
const SegmentAlign = 64 << 10

// Kind is what a region of a generated disk holds.
type Kind uint8

// Kinds of content in a generated disk.
const (
	KindHole   Kind = iota // never written: sparse in raw, unallocated in qcow2
	KindZero               // explicitly zero: allocated zeros in raw, zero clusters in qcow2
	KindRandom             // incompressible bytes
	KindText               // compressible text
)

func (k Kind) String() string {
	switch k {
	case KindHole:
		return "hole"
	case KindZero:
		return "zero"
	case KindRandom:
		return "random"
	case KindText:
		return "text"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// Fill is the share of each kind of content in a generated disk. The shares
// are weights; they need not add up to one. The zero value means DefaultFill.
type Fill struct {
	Random, Text, Zero, Hole float64
}

// DefaultFill is a mix of every kind, with most of the disk left sparse.
var DefaultFill = Fill{Random: 0.25, Text: 0.25, Zero: 0.1, Hole: 0.4}

// Segment is a run of content of one kind.
type Segment struct {
	Off, Len int64
	Kind     Kind
}

// Write is a write made after the disk was created: Len bytes of Pattern at
// Off (Pattern is 0 for a write of zeroes).
type Write struct {
	Off, Len int64
	Pattern  byte
	Zero     bool // written as zeroes (qemu-io write -z)
}

// Content is the model of a disk's content: a deterministic layout generated
// from a seed, plus the writes made since. It computes what the disk must hold
// at any moment without reading it. It is safe for concurrent use.
type Content struct {
	size int64
	seed uint64
	segs []Segment

	mu     sync.Mutex
	writes []Write
}

// NewContent lays out a disk of size bytes (rounded up to SegmentAlign) from
// seed with the given fill.
func NewContent(size int64, seed uint64, fill Fill) (*Content, error) {
	if size <= 0 {
		return nil, fmt.Errorf("testenv: disk size %d: must be positive", size)
	}
	if fill == (Fill{}) {
		fill = DefaultFill
	}
	if fill.Random < 0 || fill.Text < 0 || fill.Zero < 0 || fill.Hole < 0 {
		return nil, fmt.Errorf("testenv: fill %+v: shares must not be negative", fill)
	}
	total := fill.Random + fill.Text + fill.Zero + fill.Hole
	size = (size + SegmentAlign - 1) / SegmentAlign * SegmentAlign
	c := &Content{size: size, seed: seed}
	r := rand.New(rand.NewPCG(seed, 0x7669727400000001))
	weights := []struct {
		k Kind
		w float64
	}{{KindRandom, fill.Random}, {KindText, fill.Text}, {KindZero, fill.Zero}, {KindHole, fill.Hole}}
	for off := int64(0); off < size; {
		n := int64(1+r.IntN(32)) * SegmentAlign
		if off+n > size {
			n = size - off
		}
		x := r.Float64() * total
		k := KindHole
		for _, w := range weights {
			if x < w.w {
				k = w.k
				break
			}
			x -= w.w
		}
		if l := len(c.segs); l > 0 && c.segs[l-1].Kind == k {
			c.segs[l-1].Len += n
		} else {
			c.segs = append(c.segs, Segment{Off: off, Len: n, Kind: k})
		}
		off += n
	}
	return c, nil
}

// Size is the disk's virtual size in bytes.
func (c *Content) Size() int64 { return c.sizeNow() }

// Segments returns the generated layout (without later writes).
func (c *Content) Segments() []Segment {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]Segment(nil), c.segs...)
}

// Writes returns the writes recorded so far, in order.
func (c *Content) Writes() []Write {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]Write(nil), c.writes...)
}

// Record adds a write to the model. Callers record a write only after the disk
// acknowledged it.
func (c *Content) Record(w Write) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if w.Off < 0 || w.Len <= 0 || w.Off+w.Len > c.size {
		return fmt.Errorf("testenv: write [%d, +%d) is outside the disk of %d bytes", w.Off, w.Len, c.size)
	}
	c.writes = append(c.writes, w)
	return nil
}

// Grow extends the disk to size bytes (rounded up to SegmentAlign); the new
// part reads as zeroes, as after a resize.
func (c *Content) Grow(size int64) error {
	size = (size + SegmentAlign - 1) / SegmentAlign * SegmentAlign
	c.mu.Lock()
	defer c.mu.Unlock()
	if size < c.size {
		return fmt.Errorf("testenv: shrinking %d to %d is not supported", c.size, size)
	}
	if size > c.size {
		c.segs = append(append([]Segment(nil), c.segs...), Segment{Off: c.size, Len: size - c.size, Kind: KindHole})
		c.size = size
	}
	return nil
}

// Snapshot returns a copy of the model as it is now, unaffected by later writes.
func (c *Content) Snapshot() *Content {
	c.mu.Lock()
	defer c.mu.Unlock()
	return &Content{size: c.size, seed: c.seed, segs: c.segs, writes: append([]Write(nil), c.writes...)}
}

func (c *Content) sizeNow() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.size
}

// ReadAt fills p with the expected content at off. It implements io.ReaderAt.
func (c *Content) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("testenv: negative offset %d", off)
	}
	c.mu.Lock()
	size, segs, writes := c.size, c.segs, c.writes
	c.mu.Unlock()
	if off >= size {
		return 0, io.EOF
	}
	n := len(p)
	var err error
	if int64(n) > size-off {
		n = int(size - off)
		err = io.EOF
	}
	c.readBase(segs, p[:n], off)
	end := off + int64(n)
	for _, w := range writes {
		lo, hi := max(w.Off, off), min(w.Off+w.Len, end)
		if lo >= hi {
			continue
		}
		b := p[lo-off : hi-off]
		for i := range b {
			b[i] = w.Pattern
		}
	}
	return n, err
}

// readBase fills p with the generated content at off.
func (c *Content) readBase(segs []Segment, p []byte, off int64) {
	i := sort.Search(len(segs), func(i int) bool { return segs[i].Off+segs[i].Len > off })
	var block [SegmentAlign]byte
	for len(p) > 0 {
		s := segs[i]
		bi := off / SegmentAlign
		inBlock := off - bi*SegmentAlign
		n := min(int64(len(p)), SegmentAlign-inBlock, s.Off+s.Len-off)
		switch s.Kind {
		case KindHole, KindZero:
			clear(p[:n])
		default:
			c.block(block[:], s.Kind, bi)
			copy(p[:n], block[inBlock:])
		}
		p = p[n:]
		off += n
		if off >= s.Off+s.Len {
			i++
		}
	}
}

// block generates the content of one SegmentAlign block of the given kind.
func (c *Content) block(b []byte, k Kind, index int64) {
	var seed [32]byte
	binary.LittleEndian.PutUint64(seed[0:], c.seed)
	binary.LittleEndian.PutUint64(seed[8:], uint64(index))
	seed[16] = byte(k)
	r := rand.NewChaCha8(seed)
	switch k {
	case KindRandom:
		_, _ = r.Read(b)
	case KindText:
		t := textCorpus()
		start := r.Uint64() % uint64(len(t)-len(b))
		copy(b, t[start:])
	}
}

var textCorpus = sync.OnceValue(func() []byte {
	words := strings.Fields(`the a backup of virtual machine disk block chunk index manifest repository
		checkpoint bitmap dirty extent allocated zero hole read write restore point chain full
		incremental differential guest agent freeze thaw filesystem journal record offset length
		libvirt qemu nbd server client export socket target snapshot retention prune verify hash
		compress encrypt key catalog daemon schedule job progress error retry timeout host domain
		and or not with from into over under after before while until every each some many few`)
	r := rand.New(rand.NewPCG(1, 2))
	var sb strings.Builder
	for sb.Len() < 4<<20 {
		n := 4 + r.IntN(12)
		for i := 0; i < n; i++ {
			if i > 0 {
				sb.WriteByte(' ')
			}
			sb.WriteString(words[r.IntN(len(words))])
		}
		fmt.Fprintf(&sb, ". %d\n", r.IntN(100000))
	}
	return []byte(sb.String())
})

// SHA256 is the hex SHA-256 of the whole expected content.
func (c *Content) SHA256() string { return c.RangeSHA256(0, c.Size()) }

// RangeSHA256 is the hex SHA-256 of the expected content of [off, off+n).
func (c *Content) RangeSHA256(off, n int64) string {
	h := sha256.New()
	_, _ = io.CopyBuffer(h, io.NewSectionReader(c, off, n), make([]byte, 1<<20))
	return fmt.Sprintf("%x", h.Sum(nil))
}

// Allocated is how many bytes of the generated layout hold data or zeros
// (everything but holes), before later writes.
func (c *Content) Allocated() int64 {
	var n int64
	for _, s := range c.Segments() {
		if s.Kind != KindHole {
			n += s.Len
		}
	}
	return n
}
