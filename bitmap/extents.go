package bitmap

import (
	"cmp"
	"context"
	"fmt"
	"strings"

	"github.com/virtkeep/virtkeep/nbd"
)

// State describes a run of a disk.
type State uint8

// States of an extent. An extent with neither Zero nor Hole holds data.
const (
	// Zero means the range reads as zeroes: there is nothing to read.
	Zero State = 1 << iota
	// Hole means the range is not allocated in the image (it may still read
	// as data from a backing file, unless Zero is set too).
	Hole
	// Dirty means the range changed since the checkpoint the map was made
	// against.
	Dirty
)

func (s State) String() string {
	var parts []string
	if s&Zero != 0 {
		parts = append(parts, "zero")
	}
	if s&Hole != 0 {
		parts = append(parts, "hole")
	}
	if s&Dirty != 0 {
		parts = append(parts, "dirty")
	}
	if len(parts) == 0 {
		return "data"
	}
	return strings.Join(parts, "+")
}

// Extent is a run of bytes [Off, Off+Len) in one state.
type Extent struct {
	Off, Len int64
	State    State
}

// Map is a disk's extent map: extents sorted by offset, contiguous, covering
// [0, Size) exactly, each non-empty, neighbours always in different states.
// A Map is immutable once built.
type Map struct {
	size int64
	ext  []Extent
}

// NewMap returns a map of a disk of size bytes, all in state s.
func NewMap(size int64, s State) *Map {
	if size <= 0 {
		return &Map{}
	}
	return &Map{size: size, ext: []Extent{{0, size, s}}}
}

// Size is the disk size the map covers.
func (m *Map) Size() int64 { return m.size }

// Extents returns the map's extents. The caller must not modify them.
func (m *Map) Extents() []Extent { return m.ext }

// Count returns the bytes whose state has all the bits of s set.
func (m *Map) Count(s State) int64 {
	var n int64
	for _, e := range m.ext {
		if e.State&s == s {
			n += e.Len
		}
	}
	return n
}

// Builder makes a Map from extents given in order.
type Builder struct {
	size int64
	ext  []Extent
	end  int64
}

// NewBuilder starts a map of a disk of size bytes.
func NewBuilder(size int64) *Builder { return &Builder{size: size} }

// Add appends the next extent. It must start where the previous one ended;
// a final extent past the disk size is clipped.
func (b *Builder) Add(e Extent) error {
	if e.Off != b.end {
		return fmt.Errorf("bitmap: extent at %d, expected one at %d", e.Off, b.end)
	}
	if e.Len <= 0 {
		return fmt.Errorf("bitmap: extent at %d has length %d", e.Off, e.Len)
	}
	if b.end >= b.size {
		return fmt.Errorf("bitmap: extent at %d past the disk size %d", e.Off, b.size)
	}
	e.Len = min(e.Len, b.size-e.Off)
	b.end += e.Len
	if n := len(b.ext); n > 0 && b.ext[n-1].State == e.State {
		b.ext[n-1].Len += e.Len
		return nil
	}
	b.ext = append(b.ext, e)
	return nil
}

// Map returns the finished map; the extents must cover the whole disk.
func (b *Builder) Map() (*Map, error) {
	if b.end != b.size {
		return nil, fmt.Errorf("bitmap: extents cover [0, %d) of a disk of %d bytes", b.end, b.size)
	}
	return &Map{size: b.size, ext: b.ext}, nil
}

// Overlay combines two maps of the same disk: every byte's state is the
// union of its states in a and b. With a the allocation map and b the dirty
// map, the result tells for each byte whether it changed and whether it must
// be read.
func Overlay(a, b *Map) (*Map, error) {
	if a.size != b.size {
		return nil, fmt.Errorf("bitmap: overlay of maps of %d and %d bytes", a.size, b.size)
	}
	bl := NewBuilder(a.size)
	i, j := 0, 0
	var at int64
	for at < a.size {
		ea, eb := a.ext[i], b.ext[j]
		end := min(ea.Off+ea.Len, eb.Off+eb.Len)
		_ = bl.Add(Extent{at, end - at, ea.State | eb.State})
		at = end
		if at == ea.Off+ea.Len {
			i++
		}
		if at == eb.Off+eb.Len {
			j++
		}
	}
	return bl.Map()
}

// ExtentMapper walks the block status of a meta context, as nbd.Client does.
type ExtentMapper interface {
	Map(ctx context.Context, metaContext string, off, length int64, fn func(nbd.Extent) error) error
}

// Allocation maps a disk through base:allocation: zeroes and holes as the
// server reports them, data everywhere else.
func Allocation(ctx context.Context, m ExtentMapper, size int64) (*Map, error) {
	b := NewBuilder(size)
	err := m.Map(ctx, nbd.ContextBaseAllocation, 0, size, func(e nbd.Extent) error {
		return b.Add(Extent{e.Off, e.Len, allocState(e.Flags)})
	})
	if err != nil {
		return nil, fmt.Errorf("bitmap: map allocation: %w", err)
	}
	return b.Map()
}

// AllocationOf is Allocation asked only over the Dirty extents of dirty:
// elsewhere the map says data, which an incremental keeps from its base
// without reading. On a large disk with few changes most of the image's
// metadata is then never walked (1 TiB: seconds). The dirty extents are
// asked about several at once.
func AllocationOf(ctx context.Context, m ExtentMapper, dirty *Map) (*Map, error) {
	type asked struct {
		d    Extent
		exts []Extent
		err  error
		done chan struct{}
	}
	var all []*asked
	sem := make(chan struct{}, allocationQueries)
	for _, d := range dirty.Extents() {
		a := &asked{d: d, done: make(chan struct{})}
		all = append(all, a)
		if d.State&Dirty == 0 {
			a.exts = []Extent{{d.Off, d.Len, 0}}
			close(a.done)
			continue
		}
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; close(a.done) }()
			end := d.Off + d.Len
			a.err = m.Map(ctx, nbd.ContextBaseAllocation, d.Off, d.Len, func(e nbd.Extent) error {
				if e.Off < end { // a last extent may run past the range asked
					a.exts = append(a.exts, Extent{e.Off, min(e.Len, end-e.Off), allocState(e.Flags)})
				}
				return nil
			})
		}()
	}
	b := NewBuilder(dirty.Size())
	var err error
	for _, a := range all {
		<-a.done
		err = cmp.Or(err, a.err)
		for _, e := range a.exts {
			if err == nil {
				err = b.Add(e)
			}
		}
	}
	if err != nil {
		return nil, fmt.Errorf("bitmap: map allocation: %w", err)
	}
	return b.Map()
}

// allocationQueries is how many dirty extents AllocationOf asks about at
// once.
const allocationQueries = 8

// allocState is the State of base:allocation flags.
func allocState(flags uint32) State {
	var s State
	if flags&nbd.StateZero != 0 {
		s |= Zero
	}
	if flags&nbd.StateHole != 0 {
		s |= Hole
	}
	return s
}

// DirtyMap maps a disk through a qemu:dirty-bitmap context: Dirty where the
// bitmap's bit is set.
func DirtyMap(ctx context.Context, m ExtentMapper, metaContext string, size int64) (*Map, error) {
	b := NewBuilder(size)
	err := m.Map(ctx, metaContext, 0, size, func(e nbd.Extent) error {
		var s State
		if e.Flags&nbd.StateDirty != 0 {
			s = Dirty
		}
		return b.Add(Extent{e.Off, e.Len, s})
	})
	if err != nil {
		return nil, fmt.Errorf("bitmap: map %s: %w", metaContext, err)
	}
	return b.Map()
}
