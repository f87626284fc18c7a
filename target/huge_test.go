package target_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/virtkeep/virtkeep/target"
	"github.com/virtkeep/virtkeep/target/local"
	"github.com/virtkeep/virtkeep/testenv"
)

// plantHuge replaces the file of key under dir with a sparse 10 GiB file.
func plantHuge(t *testing.T, dir, key string) {
	t.Helper()
	p := filepath.Join(dir, filepath.FromSlash(key))
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(10 << 30); err != nil {
		t.Fatal(err)
	}
	f.Close()
}

// testHugeObjects: a 10 GiB object planted on a target in place of a
// manifest or a chunk is refused as damaged after reading at most what its
// type can hold, never loaded whole.
func testHugeObjects(t *testing.T, b target.Backend, dir string) {
	ctx := context.Background()
	r := newLooseRepo(t, b, nil)
	c, err := testenv.NewContent(1<<20, 3, testenv.Fill{Random: 1})
	if err != nil {
		t.Fatal(err)
	}
	m, _ := backup(t, r, c, target.LevelFull, "", nil)
	d, err := r.OpenDisk(ctx, m.ID, "vda")
	if err != nil {
		t.Fatal(err)
	}
	id, err := d.ChunkID(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	plantHuge(t, dir, "chunks/"+id.String()[:2]+"/"+id.String())
	plantHuge(t, dir, "points/"+m.ID)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	start := time.Now()
	if _, err := r.Point(ctx, m.ID); !errors.Is(err, target.ErrCorrupt) {
		t.Fatalf("a 10 GiB manifest: %v", err)
	}
	if err := d.ReadAt(ctx, make([]byte, 4096), 0); !errors.Is(err, target.ErrCorrupt) {
		t.Fatalf("a 10 GiB chunk: %v", err)
	}
	runtime.ReadMemStats(&after)
	if n := after.TotalAlloc - before.TotalAlloc; n > 256<<20 {
		t.Fatalf("refusing two 10 GiB objects allocated %d MiB", n>>20)
	}
	testenv.Report(t, "%s: two planted 10 GiB objects refused in %v, %d MiB allocated", strings.SplitN(b.Properties().Name, ":", 2)[0],
		time.Since(start).Round(time.Millisecond), (after.TotalAlloc-before.TotalAlloc)>>20)
}

func TestHugeObjectsLocal(t *testing.T) {
	dir := t.TempDir()
	b, err := local.Open(local.Config{Path: dir})
	if err != nil {
		t.Fatal(err)
	}
	testHugeObjects(t, b, dir)
}

func TestHugeObjectsSFTP(t *testing.T) {
	srv := testenv.SSHD(t)
	b := sftpBackend(t, srv, 1)
	defer b.Close()
	testHugeObjects(t, b, sftpDir(b, srv))
}

func TestHugeObjectsS3(t *testing.T) {
	srv := testenv.S3(t)
	b := s3Backend(t, srv, "huge")
	testHugeObjects(t, b, filepath.Join(srv.Dir, "huge", "repo"))
}
