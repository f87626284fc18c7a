package target_test

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/virtkeep/virtkeep/target"
	"github.com/virtkeep/virtkeep/target/mem"
	"github.com/virtkeep/virtkeep/testenv"
)

// testPackSize is the pack size of the tests' repositories: the least,
// so that a few MiB of test data make several packs.
const testPackSize = 1 << 20

// newRepo makes a repository with packs (format 2); newLooseRepo one with
// an object per chunk (format 1, as virtkeep wrote it first).
func newRepo(t testing.TB, b target.Backend, key *target.Key) *target.Repository {
	t.Helper()
	return initRepo(t, b, target.InitOptions{Key: key, PackSize: testPackSize})
}

func newLooseRepo(t testing.TB, b target.Backend, key *target.Key) *target.Repository {
	t.Helper()
	return initRepo(t, b, target.InitOptions{Key: key, PackSize: -1})
}

func initRepo(t testing.TB, b target.Backend, o target.InitOptions) *target.Repository {
	t.Helper()
	ctx := context.Background()
	key := o.Key
	if err := target.Init(ctx, b, o); err != nil {
		t.Fatal(err)
	}
	r, err := target.Open(ctx, b, target.OpenOptions{Key: key, Host: "testhost"})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// backup writes c as one disk "vda" of a new point. With base set, only the
// chunks for which changed reports true are written; the rest are kept.
func backup(t testing.TB, r *target.Repository, c *testenv.Content, level, base string, changed func(off, n int64) bool) (*target.Manifest, target.DiskStats) {
	t.Helper()
	ctx := context.Background()
	pw, err := r.NewPoint(ctx, target.PointSpec{Domain: "vm1", DomainUUID: "u-1", Level: level, Parent: base, Consistency: "crash"})
	if err != nil {
		t.Fatal(err)
	}
	dw, err := pw.AddDisk(ctx, target.DiskSpec{Name: "vda", Format: "qcow2", VirtualSize: c.Size(), Base: base})
	if err != nil {
		t.Fatal(err)
	}
	cs := int64(dw.ChunkSize())
	buf := make([]byte, cs)
	for idx := int64(0); idx < dw.Chunks(); idx++ {
		off := idx * cs
		n := min(cs, c.Size()-off)
		if base != "" && !changed(off, n) {
			continue
		}
		if _, err := c.ReadAt(buf[:n], off); err != nil {
			t.Fatal(err)
		}
		if err := dw.WriteChunk(ctx, idx, buf[:n]); err != nil {
			t.Fatal(err)
		}
	}
	if err := dw.Close(ctx); err != nil {
		t.Fatal(err)
	}
	st := dw.Stats()
	m, err := pw.Commit(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return m, st
}

func restoreEquals(t testing.TB, r *target.Repository, point string, want *testenv.Content) {
	t.Helper()
	ctx := context.Background()
	d, err := r.OpenDisk(ctx, point, "vda")
	if err != nil {
		t.Fatal(err)
	}
	if d.Size() != want.Size() {
		t.Fatalf("point %s: size %d, want %d", point, d.Size(), want.Size())
	}
	got := make([]byte, 3<<20)
	exp := make([]byte, 3<<20)
	for off := int64(0); off < want.Size(); off += int64(len(got)) {
		n := min(int64(len(got)), want.Size()-off)
		if err := d.ReadAt(ctx, got[:n], off); err != nil {
			t.Fatal(err)
		}
		_, _ = want.ReadAt(exp[:n], off)
		if !bytes.Equal(got[:n], exp[:n]) {
			t.Fatalf("point %s: data at [%d, +%d) differs", point, off, n)
		}
	}
	// Allocated agrees with the data: zero runs read as zeroes.
	err = d.Allocated(ctx, 0, d.Size(), func(off, n int64, zero bool) error {
		if zero {
			b := make([]byte, n)
			_, _ = want.ReadAt(b, off)
			if !bytes.Equal(b, make([]byte, n)) {
				t.Fatalf("point %s: [%d, +%d) mapped zero but holds data", point, off, n)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func overlaps(ws []testenv.Write) func(off, n int64) bool {
	return func(off, n int64) bool {
		for _, w := range ws {
			if w.Off < off+n && off < w.Off+w.Len {
				return true
			}
		}
		return false
	}
}

func TestRoundTripChainAndDelete(t *testing.T) {
	eachKey(t, func(t *testing.T, key *target.Key) {
		r := newRepo(t, mem.New(), key)
		c, _ := testenv.NewContent(40<<20+12345, 3, testenv.Fill{})
		rng := rand.New(rand.NewPCG(1, 1))
		var points []string
		var states []*testenv.Content
		m, _ := backup(t, r, c, target.LevelFull, "", nil)
		points, states = append(points, m.ID), append(states, c.Snapshot())
		for i := 0; i < 5; i++ {
			var ws []testenv.Write
			for j := 0; j < 10; j++ {
				w := testenv.Write{Off: rng.Int64N(c.Size() - 100000), Len: 1 + rng.Int64N(100000), Pattern: byte(1 + rng.IntN(250))}
				if err := c.Record(w); err != nil {
					t.Fatal(err)
				}
				ws = append(ws, w)
			}
			m, _ := backup(t, r, c, target.LevelInc, points[len(points)-1], overlaps(ws))
			points, states = append(points, m.ID), append(states, c.Snapshot())
		}
		for i := range points {
			restoreEquals(t, r, points[i], states[i])
		}
		// Delete a middle point: every other one stays exact.
		ctx := context.Background()
		if err := r.DeletePoint(ctx, points[2]); err != nil {
			t.Fatal(err)
		}
		if _, err := r.Point(ctx, points[2]); !errors.Is(err, target.ErrNoPoint) {
			t.Fatalf("deleted point: %v", err)
		}
		if _, err := r.GC(ctx, target.GCOptions{Grace: -1}); err != nil {
			t.Fatal(err)
		}
		for i := range points {
			if i != 2 {
				restoreEquals(t, r, points[i], states[i])
			}
		}
		rep, err := r.Check(ctx, target.CheckOptions{ReadData: true})
		if err != nil || !rep.OK() {
			t.Fatalf("check after delete: %v %+v", err, rep)
		}
	})
}

func TestDedup(t *testing.T) {
	r := newRepo(t, mem.New(), nil)
	c, _ := testenv.NewContent(64<<20, 8, testenv.Fill{Random: 1, Text: 1, Hole: 2})
	_, first := backup(t, r, c, target.LevelFull, "", nil)
	_, second := backup(t, r, c, target.LevelFull, "", nil)
	if second.BytesStored*100 >= first.BytesStored {
		t.Fatalf("second full stored %d bytes, first %d: not under 1%%", second.BytesStored, first.BytesStored)
	}
	if second.ChunksNew != 0 || second.ChunksDedup != first.ChunksNew {
		t.Fatalf("second full: %+v, first %+v", second, first)
	}
	t.Logf("first full stored %d bytes, second %d (%.3f%%)", first.BytesStored, second.BytesStored, 100*float64(second.BytesStored)/float64(first.BytesStored))
}

func TestScatteredWritesStoreLittle(t *testing.T) {
	r := newRepo(t, mem.New(), nil)
	c, _ := testenv.NewContent(512<<20, 4, testenv.Fill{Random: 1, Hole: 3})
	full, _ := backup(t, r, c, target.LevelFull, "", nil)
	rng := rand.New(rand.NewPCG(5, 5))
	var ws []testenv.Write
	for i := 0; i < 128; i++ {
		w := testenv.Write{Off: rng.Int64N(c.Size()-512<<10) &^ 511, Len: 512 << 10, Pattern: byte(i)}
		// Random bytes, not a pattern, so compression does not flatter us.
		ws = append(ws, w)
	}
	for _, w := range ws {
		_ = c.Record(w)
	}
	_, st := backup(t, r, c, target.LevelInc, full.ID, overlaps(ws))
	written := int64(128 * 512 << 10)
	// Pattern writes compress to nothing; count what was read instead, the
	// bytes a non-compressing repository would store.
	if st.BytesRead > 3*written {
		t.Fatalf("incremental read %d bytes for %d written", st.BytesRead, written)
	}
	t.Logf("128 scattered 512 KiB writes (%d MiB): incremental handled %d MiB of chunks (%.2fx), stored %d bytes", written>>20, st.BytesRead>>20, float64(st.BytesRead)/float64(written), st.BytesStored)
}

func TestWriterRejectsBadInput(t *testing.T) {
	r := newRepo(t, mem.New(), nil)
	ctx := context.Background()
	if _, err := r.NewPoint(ctx, target.PointSpec{Domain: "x", Level: "weekly"}); err == nil {
		t.Error("bad level accepted")
	}
	pw, err := r.NewPoint(ctx, target.PointSpec{Domain: "x", Level: target.LevelFull, Time: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	defer pw.Abort(ctx)
	if _, err := pw.AddDisk(ctx, target.DiskSpec{Name: "vda", VirtualSize: 1 << 20, Base: "20260101T000000Z-00000000"}); !errors.Is(err, target.ErrNoPoint) {
		t.Errorf("missing base: %v", err)
	}
	dw, err := pw.AddDisk(ctx, target.DiskSpec{Name: "vda", VirtualSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if err := dw.WriteChunk(ctx, 1, make([]byte, 100)); err == nil {
		t.Error("short chunk accepted")
	}
	if err := dw.WriteChunk(ctx, 2, make([]byte, dw.ChunkSize())); err != nil {
		t.Fatal(err)
	}
	if err := dw.WriteChunk(ctx, 1, make([]byte, dw.ChunkSize())); err == nil {
		t.Error("chunk out of order accepted")
	}
	if err := dw.Keep(ctx, 3, 1); err == nil {
		t.Error("keep without base accepted")
	}
}

// eachKey runs f as a subtest for a plain and for an encrypted repository.
func eachKey(t *testing.T, f func(t *testing.T, key *target.Key)) {
	for _, enc := range []bool{false, true} {
		t.Run(map[bool]string{false: "plain", true: "encrypted"}[enc], func(t *testing.T) {
			var key *target.Key
			if enc {
				k, _ := target.NewKey()
				key = &k
			}
			f(t, key)
		})
	}
}
