package target

import (
	"bytes"
	"math/rand/v2"
	"os/exec"
	"testing"

	"github.com/klauspost/compress/zstd"
)

// TestZeroFrame: frames of raw and RLE blocks decode to the chunk, with
// the zstd library and with the zstd command, for chunks of every mix of
// zero and data blocks, lengths that are no multiple of 4 KiB included;
// sealed by a "none" repository, they open to the same bytes.
func TestZeroFrame(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	dec, _ := zstd.NewReader(nil)
	defer dec.Close()
	c := testCodec(t, false)
	c.compress = false
	for i := 0; i < 200; i++ {
		n := DefaultChunkSize
		if i%5 == 0 {
			n = 1 + rng.IntN(DefaultChunkSize)
		}
		plain := make([]byte, n)
		for off := 0; off < n; off += 4096 {
			if rng.IntN(3) == 0 {
				for k := off; k < min(off+4096, n); k++ {
					plain[k] = byte(rng.Uint32())
				}
			}
		}
		frame := appendZeroFrame(nil, plain)
		got, err := dec.DecodeAll(frame, nil)
		if err != nil || !bytes.Equal(got, plain) {
			t.Fatalf("chunk %d (%d bytes): frame decodes to %d bytes: %v", i, n, len(got), err)
		}
		if fs, err := frameContentSize(frame); err != nil || fs != uint64(n) {
			t.Fatalf("frame content size %d, %v: want %d", fs, err, n)
		}
		if i == 0 {
			cmd := exec.Command("zstd", "-d", "-c")
			cmd.Stdin = bytes.NewReader(frame)
			if out, err := cmd.Output(); err != nil || !bytes.Equal(out, plain) {
				t.Fatalf("zstd -d: %d bytes, %v", len(out), err)
			}
		}
		env := c.appendPlain(nil, typeChunk, plain)
		if !bytes.Equal(env, c.seal(typeChunk, plain)) {
			t.Fatal("appendPlain and seal differ")
		}
		back, err := c.open(typeChunk, env)
		if err != nil || !bytes.Equal(back, plain) {
			t.Fatalf("open: %v", err)
		}
	}
}
