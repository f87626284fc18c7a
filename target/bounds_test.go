package target

import (
	"bytes"
	"encoding/binary"
	"errors"
	"runtime"
	"testing"

	"github.com/klauspost/compress/zstd"
)

// allocated runs fn and returns the bytes it allocated.
func allocated(fn func()) uint64 {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	fn()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

// TestEnvelopeZstdBomb: a frame without a content size that inflates far
// past the envelope's declared length is refused without inflating it.
func TestEnvelopeZstdBomb(t *testing.T) {
	var z bytes.Buffer
	w, err := zstd.NewWriter(&z, zstd.WithEncoderLevel(zstd.SpeedBestCompression))
	if err != nil {
		t.Fatal(err)
	}
	zero := make([]byte, 1<<20)
	for i := 0; i < 544; i++ { // 544 MiB of zeroes
		if _, err := w.Write(zero); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	var h zstd.Header
	if err := h.Decode(z.Bytes()); err != nil || h.HasFCS {
		t.Fatalf("test frame: want no content size (%v, %+v)", err, h)
	}
	c, err := newCodec(true, 256<<10, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, typ := range []byte{typeChunk, typeManifst, typeRoot} {
		obj := make([]byte, headerLen, headerLen+z.Len())
		copy(obj, envelopeMagic[:])
		obj[4], obj[5] = typ, flagZstd
		binary.BigEndian.PutUint32(obj[8:], 100)
		obj = append(obj, z.Bytes()...)
		var oerr error
		n := allocated(func() { _, oerr = c.open(typ, obj) })
		if !errors.Is(oerr, ErrCorrupt) {
			t.Fatalf("type %d: a %d-byte bomb opened: %v", typ, len(obj), oerr)
		}
		if n > 32<<20 {
			t.Fatalf("type %d: opening a %d-byte bomb allocated %d MiB", typ, len(obj), n>>20)
		}
		t.Logf("type %d: %d-byte object refused after allocating %d KiB: %v", typ, len(obj), n>>10, oerr)
	}
}
