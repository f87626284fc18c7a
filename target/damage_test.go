package target_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/virtkeep/virtkeep/target"
	"github.com/virtkeep/virtkeep/target/local"
	"github.com/virtkeep/virtkeep/testenv"
)

// localRepo is a format-1 repository (an object per chunk) in a directory:
// its tests damage chunk files.
func localRepo(t *testing.T, key *target.Key) (*target.Repository, string) {
	t.Helper()
	dir := t.TempDir()
	b, err := local.Open(local.Config{Path: dir})
	if err != nil {
		t.Fatal(err)
	}
	return newLooseRepo(t, b, key), dir
}

// objectFiles lists the files of a repository directory under prefix.
func objectFiles(t *testing.T, dir, prefix string) []string {
	t.Helper()
	var out []string
	_ = filepath.WalkDir(filepath.Join(dir, prefix), func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			out = append(out, p)
		}
		return nil
	})
	return out
}

func TestDamageIsReported(t *testing.T) {
	eachKey(t, func(t *testing.T, key *target.Key) {
		r, dir := localRepo(t, key)
		ctx := context.Background()
		a, _ := testenv.NewContent(8<<20, 1, testenv.Fill{Random: 1})
		b, _ := testenv.NewContent(8<<20, 2, testenv.Fill{Random: 1})
		pa, _ := backup(t, r, a, target.LevelFull, "", nil)
		pb, _ := backup(t, r, b, target.LevelFull, "", nil)
		_ = a.Record(testenv.Write{Off: 0, Len: 4096, Pattern: 1})
		pa2, _ := backup(t, r, a, target.LevelInc, pa.ID, overlaps(a.Writes()))
		if rep, err := r.Check(ctx, target.CheckOptions{ReadData: true}); err != nil || !rep.OK() {
			t.Fatalf("clean repo: %v %v", err, rep)
		}

		// 1. Flip a byte in a chunk only b uses: --read-data finds it and
		// names b; a restore of b fails instead of returning bad data.
		chunkOfB := chunkFileOf(t, r, dir, pb.ID, 3)
		flipByte(t, chunkOfB, 100)
		if rep, _ := r.Check(ctx, target.CheckOptions{}); !rep.OK() {
			t.Fatalf("structure check flagged a flipped byte it cannot see: %v", rep)
		}
		rep, err := r.Check(ctx, target.CheckOptions{ReadData: true})
		if err != nil {
			t.Fatal(err)
		}
		assertProblem(t, rep, filepath.Base(chunkOfB), []string{pb.ID}, []string{pa.ID, pa2.ID})
		d, _ := r.OpenDisk(ctx, pb.ID, "vda")
		if err := d.ReadAt(ctx, make([]byte, 256<<10), 3*256<<10); !errors.Is(err, target.ErrCorrupt) {
			t.Fatalf("read of a damaged chunk: %v", err)
		}
		flipByte(t, chunkOfB, 100) // repair

		// 2. Truncate an index page used by a's points.
		pages := objectFiles(t, dir, "index")
		var truncated string
		for _, p := range pages {
			if pointUsesObject(t, r, pa.ID, filepath.Base(p)) && pointUsesObject(t, r, pa2.ID, filepath.Base(p)) {
				truncated = p
			}
		}
		if truncated == "" {
			// a's page changed between pa and pa2; pick pa's
			for _, p := range pages {
				if pointUsesObject(t, r, pa.ID, filepath.Base(p)) {
					truncated = p
				}
			}
		}
		orig, _ := os.ReadFile(truncated)
		if err := os.WriteFile(truncated, orig[:len(orig)/2], 0o600); err != nil {
			t.Fatal(err)
		}
		rep, _ = r.Check(ctx, target.CheckOptions{})
		if rep.OK() || !mentions(rep, pa.ID) || mentions(rep, pb.ID) {
			t.Fatalf("truncated index object: %v", rep)
		}
		_ = os.WriteFile(truncated, orig, 0o600)

		// 3. Delete a manifest: the journal names the lost point.
		if err := os.Remove(filepath.Join(dir, "points", pb.ID)); err != nil {
			t.Fatal(err)
		}
		rep, _ = r.Check(ctx, target.CheckOptions{})
		assertProblem(t, rep, "points/"+pb.ID, []string{pb.ID}, nil)
		if !strings.Contains(rep.String(), "manifest missing") || !strings.Contains(rep.String(), "vm1") {
			t.Fatalf("report does not say what is lost: %s", rep)
		}
	})
}

func mentions(rep *target.CheckReport, id string) bool {
	for _, p := range rep.Problems {
		for _, q := range p.Points {
			if strings.HasPrefix(q, id) {
				return true
			}
		}
	}
	return false
}

func assertProblem(t *testing.T, rep *target.CheckReport, object string, affected, unaffected []string) {
	t.Helper()
	for _, p := range rep.Problems {
		if strings.Contains(p.Object, object) {
			for _, id := range affected {
				if !mentions(&target.CheckReport{Problems: []target.Problem{p}}, id) {
					t.Fatalf("problem %+v does not name point %s", p, id)
				}
			}
			for _, id := range unaffected {
				if mentions(rep, id) {
					t.Fatalf("report names unaffected point %s: %v", id, rep)
				}
			}
			return
		}
	}
	t.Fatalf("no problem about %s in: %v", object, rep)
}

func flipByte(t *testing.T, path string, at int) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)-at] ^= 0xff
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// chunkFileOf returns the file of chunk idx of point's vda.
func chunkFileOf(t *testing.T, r *target.Repository, dir, point string, idx int64) string {
	t.Helper()
	d, err := r.OpenDisk(context.Background(), point, "vda")
	if err != nil {
		t.Fatal(err)
	}
	id, err := d.ChunkID(context.Background(), idx)
	if err != nil || id.IsZero() {
		t.Fatalf("chunk %d: %v %v", idx, id, err)
	}
	return filepath.Join(dir, "chunks", id.String()[:2], id.String())
}

// pointUsesObject reports whether the index tree of point's vda includes
// the object named name (a root or page ID).
func pointUsesObject(t *testing.T, r *target.Repository, point, name string) bool {
	t.Helper()
	m, err := r.Point(context.Background(), point)
	if err != nil {
		t.Fatal(err)
	}
	if m.Disks[0].Root == name {
		return true
	}
	ids, err := target.PageIDs(context.Background(), r, m.Disks[0].Root)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		if id.String() == name {
			return true
		}
	}
	return false
}
