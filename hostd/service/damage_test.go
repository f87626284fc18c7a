package service_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/virtkeep/virtkeep/hostd/api"
	"github.com/virtkeep/virtkeep/target"
	"github.com/virtkeep/virtkeep/target/all"
	"github.com/virtkeep/virtkeep/testenv"
	"github.com/virtkeep/virtkeep/testenv/vm"
)

// TestDamagedPointIsNoBase: a verify that finds a point's chunk damaged
// marks the point in the catalog; the next backup of the domain builds on
// no damaged point (it is a full), stores the damaged data again, and a
// whole verify then finds nothing and clears the mark.
func TestDamagedPointIsNoBase(t *testing.T) {
	env := vm.Libvirt(t)
	dom := env.NewDomain(t, vm.DomainSpec{Disks: []vm.DiskSpec{{Size: 16 << 20, Fill: testenv.Fill{Random: 1}}}, Start: true})
	dir := testenv.TempDir(t)
	s := newService(t, dir, "local")
	ctx := context.Background()
	first := waitJob(t, s, must(s.Backup(ctx, api.BackupRequest{Domain: dom.Name})))
	if first.State != api.Succeeded {
		t.Fatalf("backup: %s %s", first.State, first.Error)
	}
	// Damage one chunk: flip its last byte (the envelope's tag/checksum).
	damageChunk(t, filepath.Join(dir, "repo-local"), first.Result.Point.ID)

	v := waitJob(t, s, must(s.Verify(ctx, api.VerifyRequest{All: true, ReadData: true})))
	if v.State != api.Failed {
		t.Fatalf("verify of a damaged repository: %s", v.State)
	}
	p := must(s.Point(ctx, api.PointRequest{Point: first.Result.Point.ID}))
	if p.Damaged == "" {
		t.Fatalf("point not marked damaged: %+v", p)
	}
	next := waitJob(t, s, must(s.Backup(ctx, api.BackupRequest{Domain: dom.Name, Level: "inc"})))
	if next.State != api.Succeeded || next.Result.Point.Level != "full" || next.Result.Point.Parent != "" {
		t.Fatalf("backup after damage: %s %s, level %s parent %q: want a full", next.State, next.Error, next.Result.Point.Level, next.Result.Point.Parent)
	}
	if !logHas(t, s, next.ID, "point failed verification") {
		t.Errorf("the backup's log does not say why it is a full")
	}
	v = waitJob(t, s, must(s.Verify(ctx, api.VerifyRequest{All: true, ReadData: true})))
	if v.State != api.Succeeded {
		t.Fatalf("verify after the new full stored the data again: %s %s", v.State, v.Error)
	}
	if p := must(s.Point(ctx, api.PointRequest{Point: first.Result.Point.ID})); p.Damaged != "" {
		t.Errorf("a whole verify that found nothing left the mark: %s", p.Damaged)
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

func logHas(t *testing.T, s api.Service, job, text string) bool {
	found := false
	_ = s.Log(context.Background(), job, false, func(l api.LogLine) error {
		found = found || strings.Contains(l.Message, text)
		return nil
	})
	return found
}

// damageChunk flips the last byte (the envelope's tag or checksum) of the
// first chunk of point's disk vda in the local repository at repo.
func damageChunk(t *testing.T, repo, point string) {
	t.Helper()
	ctx := context.Background()
	r, err := all.Open(ctx, all.Config{Name: "local", Kind: "local", Path: repo}, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	d, err := r.OpenDisk(ctx, point, "vda")
	if err != nil {
		t.Fatal(err)
	}
	var victim target.ID
	for i := int64(0); victim.IsZero() && i < 64; i++ {
		victim, _ = d.ChunkID(ctx, i)
	}
	key, off, n, err := r.ChunkObject(ctx, victim)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(repo, key)
	b, _ := os.ReadFile(path)
	b[off+n-1] ^= 0xff
	os.WriteFile(path, b, 0o600)
}
