package layout

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/virtkeep/virtkeep/nbd"
	"github.com/virtkeep/virtkeep/testenv"
)

type fileSource struct {
	f    *os.File
	size int64
}

func (s fileSource) Size() int64 { return s.size }
func (s fileSource) ReadAt(_ context.Context, p []byte, off int64) error {
	_, err := s.f.ReadAt(p, off)
	return err
}

func openImage(t *testing.T, path string) fileSource {
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	fi, _ := f.Stat()
	return fileSource{f, fi.Size()}
}

// TestRealLVM: an image made with sfdisk, pvcreate, vgcreate and
// vgcfgrestore: partitions, volumes and their segments are found where
// the tools put them, and each volume's View reads the bytes mkfs wrote.
func TestRealLVM(t *testing.T) {
	img := testenv.WriteLVMImage(t, filepath.Join(t.TempDir(), "disk.raw"))
	src := openImage(t, img.Path)
	ctx := context.Background()
	parts, err := Partitions(ctx, src)
	if err != nil {
		t.Fatal(err)
	}
	want := []Partition{{1, 1 << 20, 8 << 20}, {2, img.P2Off, 54 << 20}}
	if len(parts) != 2 || parts[0] != want[0] || parts[1] != want[1] {
		t.Fatalf("partitions %+v, want %+v", parts, want)
	}
	lvs, err := LVs(ctx, src, parts)
	if err != nil {
		t.Fatal(err)
	}
	if len(lvs) != 2 {
		t.Fatalf("volumes %+v", lvs)
	}
	for _, lv := range lvs {
		name := lv.VG + "/" + lv.Name
		segs := img.Segments[name]
		if lv.Unsupported != "" || len(lv.Segments) != len(segs) {
			t.Fatalf("%s: %+v, want segments %v", name, lv, segs)
		}
		var size int64
		for i, s := range segs {
			if lv.Segments[i] != (Segment{s[0], s[1], s[2]}) {
				t.Errorf("%s segment %d: %+v, want %v", name, i, lv.Segments[i], s)
			}
			size += s[2]
		}
		if lv.Size != size {
			t.Errorf("%s: size %d, want %d", name, lv.Size, size)
		}
		v, err := NewView(src, lv)
		if err != nil {
			t.Fatal(err)
		}
		got := make([]byte, v.Size())
		if err := v.ReadAt(ctx, got, 0); err != nil {
			t.Fatal(err)
		}
		exp := make([]byte, v.Size())
		for _, s := range segs {
			src.ReadAt(ctx, exp[s[0]:s[0]+s[2]], s[1])
		}
		if !bytes.Equal(got, exp) {
			t.Errorf("%s: view differs from its segments", name)
		}
		// ext4's superblock magic at 1024+56 of the volume.
		if got[1080] != 0x53 || got[1081] != 0xef {
			t.Errorf("%s: no ext4 superblock", name)
		}
		// Extents without a Mapper underneath: all data.
		var n int64
		v.Extents(ctx, 0, v.Size(), func(e nbd.Extent) error { n += e.Len; return nil })
		if n != v.Size() {
			t.Errorf("%s: extents cover %d of %d", name, n, v.Size())
		}
	}
}

const vgText = `contents = "Text Format Volume Group"
version = 1
vg0 {
	id = "vgid"
	seqno = 3
	extent_size = 8192
	physical_volumes {
		pv0 { id = "AAAAAA-AAAA-AAAA-AAAA-AAAA-AAAA-AAAAAA" pe_start = 2048 pe_count = 100 }
		pv1 { id = "BBBBBB-BBBB-BBBB-BBBB-BBBB-BBBB-BBBBBB" pe_start = 2048 pe_count = 100 }
	}
	logical_volumes {
		root { status = ["READ", "WRITE", "VISIBLE"]
			segment1 { start_extent = 0 extent_count = 10 type = "striped" stripe_count = 1 stripes = [ "pv0", 5 ] } }
		wide { status = ["READ", "WRITE", "VISIBLE"]
			segment1 { start_extent = 0 extent_count = 10 type = "striped" stripe_count = 2 stripes = [ "pv0", 20, "pv1", 0 ] } }
		elsewhere { status = ["VISIBLE"]
			segment1 { start_extent = 0 extent_count = 4 type = "striped" stripe_count = 1 stripes = [ "pv1", 0 ] } }
		pool { status = ["VISIBLE"]
			segment1 { start_extent = 0 extent_count = 4 type = "thin-pool" } }
		hidden_tmeta { status = ["READ"]
			segment1 { start_extent = 0 extent_count = 1 type = "striped" stripe_count = 1 stripes = [ "pv0", 90 ] } }
		gap { status = ["VISIBLE"]
			segment1 { start_extent = 0 extent_count = 1 type = "striped" stripe_count = 1 stripes = [ "pv0", 30 ] }
			segment2 { start_extent = 2 extent_count = 1 type = "striped" stripe_count = 1 stripes = [ "pv0", 31 ] } }
		outside { status = ["VISIBLE"]
			segment1 { start_extent = 0 extent_count = 10 type = "striped" stripe_count = 1 stripes = [ "pv0", 95 ] } }
	}
}
`

// TestVolumesFromText: linear volumes are mapped; striped, thin, partial,
// gapped and out-of-range ones are listed with the reason; hidden ones are
// not listed.
func TestVolumesFromText(t *testing.T) {
	p := pv{uuid: "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", off: 1 << 20, size: 1 << 30, text: []byte(vgText)}
	lvs, err := volumes([]pv{p})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]LV{}
	for _, lv := range lvs {
		got[lv.Name] = lv
	}
	if _, ok := got["hidden_tmeta"]; ok || len(lvs) != 6 {
		t.Fatalf("volumes %+v", lvs)
	}
	const ext = 8192 * 512
	if r := got["root"]; r.Unsupported != "" || r.Size != 10*ext || len(r.Segments) != 1 || r.Segments[0] != (Segment{0, 1<<20 + 2048*512 + 5*ext, 10 * ext}) {
		t.Errorf("root %+v", r)
	}
	for _, n := range []string{"wide", "elsewhere", "pool", "gap", "outside"} {
		if lv := got[n]; lv.Unsupported == "" || lv.Segments != nil {
			t.Errorf("%s mapped: %+v", n, lv)
		} else {
			t.Logf("%s: %s", n, lv.Unsupported)
		}
	}
	if _, err := NewView(nil, got["pool"]); err == nil {
		t.Error("a view of an unmapped volume")
	}
}

func TestBadInput(t *testing.T) {
	for _, text := range []string{"vg {", "a = [1, 2", `a = "x`, "a = b c", "}", "a = ", "a { b { c { d { e { f { g { h { i { j { k { l { m { n { o { p { q { r {"} {
		if _, err := parseConfig([]byte(text)); !errors.Is(err, ErrBadLVM) {
			t.Errorf("parse %q: %v", text, err)
		}
	}
	// A disk smaller than a sector, a disk of zeroes: no layout.
	ctx := context.Background()
	for _, b := range [][]byte{nil, make([]byte, 100), make([]byte, 1<<20)} {
		src := nbd.ReaderAtSource(bytes.NewReader(b), int64(len(b)))
		if p, err := Partitions(ctx, src); p != nil || err != nil {
			t.Errorf("partitions of %d zero bytes: %v %v", len(b), p, err)
		}
		if l, err := LVs(ctx, src, nil); l != nil || err != nil {
			t.Errorf("volumes of %d zero bytes: %v %v", len(b), l, err)
		}
	}
}
