package testenv

import (
	"bytes"
	"testing"
)

func TestContentDeterministic(t *testing.T) {
	a, err := NewContent(64<<20, 42, Fill{})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := NewContent(64<<20, 42, Fill{})
	c, _ := NewContent(64<<20, 43, Fill{})
	if a.SHA256() != b.SHA256() {
		t.Fatal("same seed gave different content")
	}
	if a.SHA256() == c.SHA256() {
		t.Fatal("different seeds gave the same content")
	}
	kinds := map[Kind]int64{}
	var end int64
	for _, s := range a.Segments() {
		if s.Off != end || s.Off%SegmentAlign != 0 || s.Len%SegmentAlign != 0 {
			t.Fatalf("segment %+v not contiguous and aligned", s)
		}
		end = s.Off + s.Len
		kinds[s.Kind] += s.Len
	}
	if end != a.Size() {
		t.Fatalf("segments end at %d, disk is %d", end, a.Size())
	}
	for _, k := range []Kind{KindHole, KindZero, KindRandom, KindText} {
		if kinds[k] == 0 {
			t.Errorf("default fill has no %s", k)
		}
	}
}

func TestContentWrites(t *testing.T) {
	c, _ := NewContent(4<<20, 7, Fill{Random: 1})
	before := make([]byte, 1<<20)
	if _, err := c.ReadAt(before, 0); err != nil {
		t.Fatal(err)
	}
	snap := c.Snapshot()
	if err := c.Record(Write{Off: 1000, Len: 5000, Pattern: 9}); err != nil {
		t.Fatal(err)
	}
	if err := c.Record(Write{Off: 4 << 20, Len: 1}); err == nil {
		t.Fatal("write past the end was accepted")
	}
	after := make([]byte, 1<<20)
	if _, err := c.ReadAt(after, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(after[:1000], before[:1000]) || !bytes.Equal(after[6000:], before[6000:]) {
		t.Fatal("write changed bytes outside its range")
	}
	if !bytes.Equal(after[1000:6000], bytes.Repeat([]byte{9}, 5000)) {
		t.Fatal("write not applied")
	}
	if snap.SHA256() == c.SHA256() {
		t.Fatal("snapshot followed a later write")
	}
	// Range hashes are consistent with reads at any alignment.
	odd := make([]byte, 77777)
	if _, err := c.ReadAt(odd, 12345); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(odd, after[12345:12345+77777]) {
		t.Fatal("unaligned read differs")
	}
}

func TestContentBadInput(t *testing.T) {
	if _, err := NewContent(0, 1, Fill{}); err == nil {
		t.Error("zero size accepted")
	}
	if _, err := NewContent(1<<20, 1, Fill{Random: -1}); err == nil {
		t.Error("negative fill accepted")
	}
}

func TestContentTextCompressible(t *testing.T) {
	c, _ := NewContent(1<<20, 3, Fill{Text: 1})
	b := make([]byte, 1<<20)
	_, _ = c.ReadAt(b, 0)
	if bytes.Count(b, []byte(" ")) < len(b)/20 {
		t.Fatal("text content does not look like text")
	}
}
