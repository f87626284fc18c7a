package target_test

import (
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/virtkeep/virtkeep/target"
	"github.com/virtkeep/virtkeep/target/local"
	"github.com/virtkeep/virtkeep/testenv"
)

// TestCorruptionBehindOurBack: damage done to a local repository by
// something else (a flipped byte in a pack, a truncated pack index, a
// removed manifest, a removed pack). Check names exactly the points the
// damage touches, verify --read-data (check with quarantine) moves the
// damage aside, the next backup of the same data stores the lost chunks
// again, and every point that can be healed restores byte-exact after it.
// A removed manifest is the one loss no backup can heal: that point only.
func TestCorruptionBehindOurBack(t *testing.T) {
	cases := []struct {
		name   string
		damage func(t *testing.T, dir string, rng *rand.Rand, pts []*target.Manifest) (lost string)
	}{
		{"flipped byte in a pack", func(t *testing.T, dir string, rng *rand.Rand, _ []*target.Manifest) string {
			p := pick(t, dir, "packs", rng)
			b, _ := os.ReadFile(p)
			b[rng.IntN(len(b))] ^= 0x40
			os.WriteFile(p, b, 0o600)
			return ""
		}},
		{"truncated pack index", func(t *testing.T, dir string, rng *rand.Rand, _ []*target.Manifest) string {
			p := pick(t, dir, "packindex", rng)
			fi, _ := os.Stat(p)
			os.Truncate(p, int64(rng.IntN(int(fi.Size()))))
			return ""
		}},
		{"removed manifest", func(t *testing.T, dir string, rng *rand.Rand, pts []*target.Manifest) string {
			m := pts[rng.IntN(len(pts))]
			os.Remove(filepath.Join(dir, "points", m.ID))
			return m.ID
		}},
		{"removed pack", func(t *testing.T, dir string, rng *rand.Rand, _ []*target.Manifest) string {
			os.Remove(pick(t, dir, "packs", rng))
			return ""
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			row := &testenv.FaultRow{Fault: "corruption: " + tc.name, Iterations: testenv.Iterations(2),
				Checked: "check names the damaged points, verify --read-data moves the damage aside, the next backup heals, every healable point restores byte-exact"}
			row.Record(t)
			for i := range row.Iterations {
				if lost := corruptOnce(t, uint64(i), tc.damage); lost != "" {
					row.Lost = "the point whose manifest was removed (the damage injected), each time"
				}
			}
		})
	}
}

// pick is a random file under dir/sub (a pack or a pack index).
func pick(t *testing.T, dir, sub string, rng *rand.Rand) string {
	var files []string
	filepath.WalkDir(filepath.Join(dir, sub), func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			files = append(files, p)
		}
		return nil
	})
	if len(files) == 0 {
		t.Fatalf("no file under %s", sub)
	}
	slices.Sort(files)
	return files[rng.IntN(len(files))]
}

func corruptOnce(t *testing.T, seed uint64, damage func(*testing.T, string, *rand.Rand, []*target.Manifest) string) string {
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(seed, 7))
	dir := t.TempDir()
	b, err := local.Open(local.Config{Path: dir})
	if err != nil {
		t.Fatal(err)
	}
	r := newRepo(t, b, nil)
	fill := testenv.Fill{Random: 0.7, Zero: 0.1, Hole: 0.2}
	c, _ := testenv.NewContent(8<<20, seed+100, fill)
	full, _ := backup(t, r, c, target.LevelFull, "", nil)
	w := testenv.Write{Off: int64(rng.IntN(6 << 20)), Len: 300 << 10, Pattern: byte(seed + 1)}
	c2, _ := testenv.NewContent(8<<20, seed+100, fill) // c, then w
	_ = c2.Record(w)
	inc, _ := backup(t, r, c2, target.LevelInc, full.ID, overlaps([]testenv.Write{w}))
	want := map[string]*testenv.Content{full.ID: c, inc.ID: c2}

	lost := damage(t, dir, rng, []*target.Manifest{full, inc})
	fresh := openRepo(t, b, target.OpenOptions{})
	rep, err := fresh.Check(ctx, target.CheckOptions{ReadData: true, Quarantine: true})
	if err != nil {
		t.Fatal(err)
	}
	if rep.OK() {
		// A flip that changes no data (a bit of a zstd frame's window
		// size, say) is no loss: then every point must restore as it was.
		for id, content := range want {
			restoreEquals(t, fresh, id, content)
		}
		t.Logf("seed %d: the damage changed no data (check found nothing, every point restores byte-exact)", seed)
		return lost
	}
	if lost != "" && !slices.Contains(rep.Damaged(), lost) {
		t.Fatalf("seed %d: check does not name the point whose manifest is gone: %v", seed, rep)
	}
	// The next backups of the same data store what was lost again.
	backup(t, fresh, c, target.LevelFull, "", nil)
	backup(t, fresh, c2, target.LevelFull, "", nil)
	if _, err := fresh.GC(ctx, target.GCOptions{Grace: -1}); err != nil {
		t.Fatalf("seed %d: gc after the damage: %v", seed, err)
	}
	after, err := openRepo(t, b, target.OpenOptions{}).Check(ctx, target.CheckOptions{ReadData: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range after.Problems {
		if p.Object != "points/"+lost {
			t.Fatalf("seed %d: after the next backups: %v", seed, after)
		}
	}
	for id, content := range want {
		if id != lost {
			restoreEquals(t, fresh, id, content)
		}
	}
	return lost
}
