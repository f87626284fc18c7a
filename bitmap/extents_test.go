package bitmap

import (
	"context"
	"errors"
	"math/rand/v2"
	"testing"

	"github.com/virtkeep/virtkeep/nbd"
)

// randomStates is a model: one state per unit of u bytes.
func randomStates(r *rand.Rand, units int, allowed []State) []State {
	s := make([]State, units)
	for i := 0; i < units; {
		n := 1 + r.IntN(20)
		st := allowed[r.IntN(len(allowed))]
		for ; n > 0 && i < units; n-- {
			s[i] = st
			i++
		}
	}
	return s
}

// fromModel builds a Map from per-unit states, in randomly split extents.
func fromModel(t *testing.T, r *rand.Rand, s []State, u, size int64) *Map {
	t.Helper()
	b := NewBuilder(size)
	for i := 0; i < len(s); {
		j := i + 1
		for j < len(s) && s[j] == s[i] && r.IntN(4) != 0 {
			j++
		}
		l := int64(j-i) * u
		if int64(j)*u > size {
			l = size - int64(i)*u
		}
		if err := b.Add(Extent{int64(i) * u, l, s[i]}); err != nil {
			t.Fatal(err)
		}
		i = j
	}
	m, err := b.Map()
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func checkInvariants(t *testing.T, m *Map) {
	t.Helper()
	var at int64
	for i, e := range m.Extents() {
		if e.Off != at || e.Len <= 0 {
			t.Fatalf("extent %d %+v not contiguous at %d", i, e, at)
		}
		if i > 0 && m.Extents()[i-1].State == e.State {
			t.Fatalf("extents %d and %d both %v: not merged", i-1, i, e.State)
		}
		at += e.Len
	}
	if at != m.Size() {
		t.Fatalf("extents end at %d, size %d", at, m.Size())
	}
}

func stateAt(m *Map, off int64) State {
	for _, e := range m.Extents() {
		if off >= e.Off && off < e.Off+e.Len {
			return e.State
		}
	}
	panic("offset outside map")
}

func TestOverlayProperty(t *testing.T) {
	for seed := uint64(0); seed < 300; seed++ {
		r := rand.New(rand.NewPCG(seed, 1))
		const u = 512
		units := 1 + r.IntN(200)
		size := int64(units)*u - int64(r.IntN(u)) // last unit may be short
		a := randomStates(r, units, []State{0, Zero, Zero | Hole, Hole})
		d := randomStates(r, units, []State{0, Dirty})
		ma, md := fromModel(t, r, a, u, size), fromModel(t, r, d, u, size)
		checkInvariants(t, ma)
		checkInvariants(t, md)
		o, err := Overlay(ma, md)
		if err != nil {
			t.Fatal(err)
		}
		checkInvariants(t, o)
		for i := 0; i < units; i++ {
			if got, want := stateAt(o, int64(i)*u), a[i]|d[i]; got != want {
				t.Fatalf("seed %d unit %d: %v, want %v", seed, i, got, want)
			}
		}
		if o.Count(Dirty) != countModel(d, Dirty, u, size) {
			t.Fatalf("seed %d: dirty count %d", seed, o.Count(Dirty))
		}
	}
}

func countModel(s []State, want State, u, size int64) int64 {
	var n int64
	for i, st := range s {
		if st&want == want {
			n += min(u, size-int64(i)*u)
		}
	}
	return n
}

func TestWalkProperty(t *testing.T) {
	for seed := uint64(0); seed < 300; seed++ {
		r := rand.New(rand.NewPCG(seed, 2))
		const u = 512
		units := 1 + r.IntN(300)
		size := int64(units)*u - int64(r.IntN(u))
		a := randomStates(r, units, []State{0, Zero, Zero | Hole, Hole})
		d := randomStates(r, units, []State{0, Dirty})
		m, _ := Overlay(fromModel(t, r, a, u, size), fromModel(t, r, d, u, size))
		chunk := int64(u) * int64(1+r.IntN(8))
		for _, incremental := range []bool{true, false} {
			var at int64
			var lastAct Action = 255
			err := m.Walk(chunk, incremental, func(p Piece) error {
				if p.Off != at || p.Off%chunk != 0 || p.Len <= 0 {
					t.Fatalf("seed %d: piece %+v at %d", seed, p, at)
				}
				if p.Action != Read && p.Action == lastAct {
					t.Fatalf("seed %d: two %v runs in a row", seed, p.Action)
				}
				if p.Action == Read && p.Len != min(chunk, size-p.Off) {
					t.Fatalf("seed %d: read piece of %d bytes", seed, p.Len)
				}
				lastAct = p.Action
				at += p.Len
				// Check every unit of the piece against the model.
				inRead := func(off int64) bool {
					for _, rg := range p.Reads {
						if off >= rg.Off && off < rg.Off+rg.Len {
							return true
						}
					}
					return false
				}
				for c := p.Off; c < p.Off+p.Len; c += chunk {
					dirty, data := !incremental, false
					for o := c; o < min(c+chunk, size); o += u {
						st := a[o/u] | d[o/u]
						dirty = dirty || st&Dirty != 0
						data = data || st&Zero == 0
					}
					want := Read
					if !dirty {
						want = Skip
					} else if !data {
						want = Zeroes
					}
					if want != p.Action {
						t.Fatalf("seed %d: chunk at %d is %v, want %v", seed, c, p.Action, want)
					}
				}
				if p.Action == Read {
					for o := p.Off; o < p.Off+p.Len; o += u {
						if inRead(o) != (a[o/u]&Zero == 0) {
							t.Fatalf("seed %d: unit at %d read=%v, state %v", seed, o, inRead(o), a[o/u])
						}
					}
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			if at != size {
				t.Fatalf("seed %d: walk ended at %d of %d", seed, at, size)
			}
		}
	}
}

func TestBuilderRejects(t *testing.T) {
	b := NewBuilder(100)
	if err := b.Add(Extent{Off: 10, Len: 5, State: 0}); err == nil {
		t.Error("gap accepted")
	}
	if err := b.Add(Extent{Off: 0, Len: 0, State: 0}); err == nil {
		t.Error("empty extent accepted")
	}
	if err := b.Add(Extent{Off: 0, Len: 50, State: 0}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Map(); err == nil {
		t.Error("partial map accepted")
	}
	if err := b.Add(Extent{50, 500, Zero}); err != nil { // clipped
		t.Fatal(err)
	}
	if err := b.Add(Extent{Off: 100, Len: 1, State: 0}); err == nil {
		t.Error("extent past the end accepted")
	}
	m, err := b.Map()
	if err != nil || m.Count(Zero) != 50 {
		t.Fatalf("%v %v", m, err)
	}
	if _, err := Overlay(NewMap(10, 0), NewMap(11, 0)); err == nil {
		t.Error("overlay of different sizes accepted")
	}
	if err := m.Walk(0, false, func(Piece) error { return nil }); err == nil {
		t.Error("zero chunk size accepted")
	}
	stop := errors.New("stop")
	if err := m.Walk(10, false, func(Piece) error { return stop }); !errors.Is(err, stop) {
		t.Errorf("callback error lost: %v", err)
	}
}

// fakeMapper serves fixed extents for a context.
type fakeMapper map[string][]nbd.Extent

func (f fakeMapper) Map(_ context.Context, name string, off, length int64, fn func(nbd.Extent) error) error {
	exts, ok := f[name]
	if !ok {
		return nbd.ErrUnsupported
	}
	for _, e := range exts {
		if err := fn(e); err != nil {
			return err
		}
	}
	return nil
}

func TestFromNBD(t *testing.T) {
	f := fakeMapper{
		nbd.ContextBaseAllocation: {{Off: 0, Len: 4096, Flags: 0}, {Off: 4096, Len: 4096, Flags: nbd.StateZero}, {Off: 8192, Len: 8192, Flags: nbd.StateHole | nbd.StateZero}},
		"qemu:dirty-bitmap:b":     {{Off: 0, Len: 8192, Flags: 0}, {Off: 8192, Len: 8192, Flags: nbd.StateDirty}},
	}
	ctx := context.Background()
	a, err := Allocation(ctx, f, 16384)
	if err != nil {
		t.Fatal(err)
	}
	d, err := DirtyMap(ctx, f, "qemu:dirty-bitmap:b", 16384)
	if err != nil {
		t.Fatal(err)
	}
	o, _ := Overlay(a, d)
	want := []Extent{{Off: 0, Len: 4096, State: 0}, {4096, 4096, Zero}, {8192, 8192, Zero | Hole | Dirty}}
	if got := o.Extents(); len(got) != 3 || got[0] != want[0] || got[1] != want[1] || got[2] != want[2] {
		t.Fatalf("got %v", got)
	}
	if _, err := DirtyMap(ctx, f, "qemu:dirty-bitmap:nope", 16384); !errors.Is(err, nbd.ErrUnsupported) {
		t.Errorf("missing context: %v", err)
	}
	if _, err := Allocation(ctx, f, 20000); err == nil {
		t.Error("short map accepted")
	}
}

// rangeMapper serves a whole-disk allocation map range by range, as an NBD
// server does, counting the ranges asked for.
type rangeMapper struct {
	exts  []nbd.Extent
	asked int64
}

func (f *rangeMapper) Map(_ context.Context, _ string, off, length int64, fn func(nbd.Extent) error) error {
	f.asked += length
	for _, e := range f.exts {
		if e.Off+e.Len <= off || e.Off >= off+length {
			continue
		}
		s := max(e.Off, off)
		// The last extent may run past the range, as servers may report.
		if err := fn(nbd.Extent{Off: s, Len: e.Off + e.Len - s, Flags: e.Flags}); err != nil {
			return err
		}
	}
	return nil
}

// TestAllocationOf: asked only where the bitmap is dirty, the plan is the
// same as the whole-disk one wherever it matters (the dirty ranges), and
// the rest of the disk is never mapped.
func TestAllocationOf(t *testing.T) {
	ctx := context.Background()
	f := &rangeMapper{exts: []nbd.Extent{{Off: 0, Len: 4096}, {Off: 4096, Len: 12288, Flags: nbd.StateZero | nbd.StateHole}, {Off: 16384, Len: 16384}}}
	dirty, _ := DirtyMap(ctx, fakeMapper{"d": {{Off: 0, Len: 2048}, {Off: 2048, Len: 8192, Flags: nbd.StateDirty}, {Off: 10240, Len: 22528}}}, "d", 32768)
	got, err := AllocationOf(ctx, f, dirty)
	if err != nil {
		t.Fatal(err)
	}
	if f.asked != 8192 {
		t.Errorf("mapped %d bytes, want only the 8192 dirty ones", f.asked)
	}
	whole, _ := Allocation(ctx, &rangeMapper{exts: f.exts}, 32768)
	a, _ := Overlay(got, dirty)
	b, _ := Overlay(whole, dirty)
	for _, e := range a.Extents() {
		if e.State&Dirty == 0 {
			continue
		}
		for _, w := range b.Extents() {
			if w.Off < e.Off+e.Len && e.Off < w.Off+w.Len && w.State != e.State {
				t.Errorf("dirty extent %v, whole-disk plan says %v", e, w)
			}
		}
	}
}
