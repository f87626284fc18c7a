package target_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/virtkeep/virtkeep/target"
	"github.com/virtkeep/virtkeep/target/mem"
	"github.com/virtkeep/virtkeep/testenv"
)

// TestReadCoalesced: a restore and check --read-data read the chunks that
// lie side by side in a pack with one request, not one per chunk; a
// damaged chunk among them still fails the read naming the damage (each is
// checked), the others read byte-exact, and check names that one chunk.
func TestReadCoalesced(t *testing.T) {
	ctx := context.Background()
	inner := mem.New()
	r := initRepo(t, inner, target.InitOptions{PackSize: 8 << 20, Compression: target.CompressionNone})
	c, _ := testenv.NewContent(8<<20, 3, testenv.Fill{Random: 1})
	full, _ := backup(t, r, c, target.LevelFull, "", nil)
	cb := countReads(inner)
	again := openRepo(t, cb, target.OpenOptions{})
	restoreEquals(t, again, full.ID, c)
	n := cb.take("packs")
	if n > 16 {
		t.Fatalf("a restore of 32 chunks in one pack made %d pack reads: want at most half as many", n)
	}
	t.Logf("32 chunks restored in 3 reads of the disk: %d pack reads", n)
	if rep, err := openRepo(t, cb, target.OpenOptions{}).Check(ctx, target.CheckOptions{ReadData: true}); err != nil || !rep.OK() || rep.ChunksRead != 32 {
		t.Fatalf("check --read-data: %v, %+v", err, rep)
	}
	if n := cb.take("packs"); n > 4 {
		t.Fatalf("check --read-data of 32 chunks in one pack made %d pack reads", n)
	} else {
		t.Logf("check --read-data of 32 chunks: %d pack reads", n)
	}

	// Flip a byte in the middle of the pack: one chunk is damaged.
	var pack string
	_ = inner.List(ctx, "packs/", func(fi target.ObjectInfo) error {
		if fi.Size > 4<<20 {
			pack = fi.Key
		}
		return nil
	})
	obj, _ := inner.Get(ctx, pack, 0, -1)
	obj[len(obj)/2] ^= 1
	_ = inner.Put(ctx, pack, obj)
	d, err := openRepo(t, inner, target.OpenOptions{}).OpenDisk(ctx, full.ID, "vda")
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, c.Size())
	if err := d.ReadAt(ctx, buf, 0); !errors.Is(err, target.ErrCorrupt) {
		t.Fatalf("read over a damaged chunk: %v, want ErrCorrupt", err)
	}
	want := make([]byte, 1<<20)
	c.ReadAt(want, 0)
	if err := d.ReadAt(ctx, buf[:1<<20], 0); err != nil || string(buf[:1<<20]) != string(want) {
		t.Fatalf("the first MiB, before the damage: %v", err)
	}
	rep, err := openRepo(t, inner, target.OpenOptions{}).Check(ctx, target.CheckOptions{ReadData: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Problems) != 1 || !strings.HasPrefix(rep.Problems[0].Object, "chunks/") || rep.ChunksRead != 32 {
		t.Fatalf("check --read-data of a pack with one damaged chunk: %+v", rep)
	}
}
