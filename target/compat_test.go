package target_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/virtkeep/virtkeep/target"
	"github.com/virtkeep/virtkeep/target/local"
	"github.com/virtkeep/virtkeep/target/targettest"
)

// fixtureDir holds repositories written by virtkeep 73785fd (format 2,
// one index object per pack), with the generator that wrote them.
const fixtureDir = "testdata/format2-73785fd"

// fixturePoints reads the fixture's "expected": per repository, its points
// in order and the SHA-256 of each one's disk.
func fixturePoints(t *testing.T) map[string][][2]string {
	t.Helper()
	f, err := os.Open(filepath.Join(fixtureDir, "expected"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	want := map[string][][2]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) != 3 {
			t.Fatalf("expected: bad line %q", sc.Text())
		}
		want[fs[0]] = append(want[fs[0]], [2]string{fs[1], fs[2]})
	}
	return want
}

// openFixture copies repository name of the fixture (files only, as a
// clone holds them) into a scratch directory and opens it there.
func openFixture(t *testing.T, name string) (*target.Repository, target.Backend, *target.Key) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), name)
	if err := os.CopyFS(dir, os.DirFS(filepath.Join(fixtureDir, name))); err != nil {
		t.Fatal(err)
	}
	var key *target.Key
	if name == "encrypted" {
		kf := filepath.Join(t.TempDir(), "key")
		raw, err := os.ReadFile(filepath.Join(fixtureDir, name+".key"))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(kf, raw, 0o600); err != nil {
			t.Fatal(err)
		}
		k, err := target.ReadKeyFile(kf, []byte("fixture"))
		if err != nil {
			t.Fatal(err)
		}
		key = &k
	}
	b, err := local.Open(local.Config{Path: dir})
	if err != nil {
		t.Fatal(err)
	}
	r, err := target.Open(context.Background(), b, target.OpenOptions{Key: key, Host: "testhost", CacheDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	return r, b, key
}

// diskOf reads disk vda of point whole.
func diskOf(t *testing.T, r *target.Repository, point string) []byte {
	t.Helper()
	ctx := context.Background()
	d, err := r.OpenDisk(ctx, point, "vda")
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, d.Size())
	if err := d.ReadAt(ctx, b, 0); err != nil {
		t.Fatalf("point %s: %v", point, err)
	}
	return b
}

func sum(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }

// checkClean runs check --read-data and fails on any problem.
func checkClean(t *testing.T, r *target.Repository, points int) {
	t.Helper()
	rep, err := r.Check(context.Background(), target.CheckOptions{ReadData: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Problems) != 0 || rep.Points != points {
		t.Fatalf("check: %d points (want %d), problems %+v", rep.Points, points, rep.Problems)
	}
}

// TestOpenFormat2Fixture opens repositories an earlier virtkeep wrote: each
// point restores to the bytes it was given then, check --read-data finds
// nothing, and an incremental written now on the old full, a GC, and a
// fresh open leave every point restorable.
func TestOpenFormat2Fixture(t *testing.T) {
	want := fixturePoints(t)
	for _, name := range []string{"plain", "encrypted"} {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			r, b, key := openFixture(t, name)
			pts, err := r.Points(ctx, func(id string, err error) { t.Errorf("point %s unreadable: %v", id, err) })
			if err != nil {
				t.Fatal(err)
			}
			if len(pts) != len(want[name]) {
				t.Fatalf("%d points, want %d", len(pts), len(want[name]))
			}
			for _, p := range want[name] {
				if got := sum(diskOf(t, r, p[0])); got != p[1] {
					t.Errorf("point %s: disk sha256 %s, want %s", p[0], got, p[1])
				}
			}
			checkClean(t, r, 2)

			last := want[name][1][0]
			next := diskOf(t, r, last)
			chunk := next[5<<16 : 6<<16]
			for i := range chunk {
				chunk[i] = byte(i*7 + 1)
			}
			id := targettest.CommitChunk(t, r, target.PointSpec{Domain: "vm1", DomainUUID: "u-1", Level: target.LevelInc, Parent: last, Consistency: "crash"}, 1<<20, 5, chunk).ID
			if !bytes.Equal(diskOf(t, r, id), next) {
				t.Fatalf("new point %s on the fixture's %s reads back different", id, last)
			}
			if _, err := r.GC(ctx, target.GCOptions{Grace: -1}); err != nil {
				t.Fatal(err)
			}
			checkClean(t, r, 3)

			fresh, err := target.Open(ctx, b, target.OpenOptions{Key: key, Host: "otherhost"})
			if err != nil {
				t.Fatal(err)
			}
			for _, p := range want[name] {
				if got := sum(diskOf(t, fresh, p[0])); got != p[1] {
					t.Errorf("after a write and GC, point %s: disk sha256 %s, want %s", p[0], got, p[1])
				}
			}
			if !bytes.Equal(diskOf(t, fresh, id), next) {
				t.Errorf("after GC, new point %s reads back different", id)
			}
		})
	}
}
