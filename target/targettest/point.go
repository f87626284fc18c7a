package targettest

import (
	"context"
	"testing"

	"github.com/virtkeep/virtkeep/target"
)

// CommitChunk commits a point of spec whose disk vda (size bytes, on
// spec.Parent when set) holds data at chunk idx and, on a parent, the
// parent's chunks elsewhere.
func CommitChunk(t testing.TB, r *target.Repository, spec target.PointSpec, size, idx int64, data []byte) *target.Manifest {
	t.Helper()
	ctx := context.Background()
	pw, err := r.NewPoint(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	dw, err := pw.AddDisk(ctx, target.DiskSpec{Name: "vda", Format: "qcow2", VirtualSize: size, Base: spec.Parent})
	if err != nil {
		t.Fatal(err)
	}
	if err := dw.WriteChunk(ctx, idx, data); err != nil {
		t.Fatal(err)
	}
	if err := dw.Close(ctx); err != nil {
		t.Fatal(err)
	}
	m, err := pw.Commit(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return m
}
