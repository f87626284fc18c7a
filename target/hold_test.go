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

// TestHoldKeepsPoint: a point a session holds outlives retention on every
// host, and its data GC; deleting it is refused; once released (or its
// holder is found dead) it goes at the next prune.
func TestHoldKeepsPoint(t *testing.T) {
	ctx := context.Background()
	b := mem.New()
	r := newRepo(t, b, nil)
	c, _ := testenv.NewContent(2<<20, 31, testenv.Fill{Random: 1})
	old, _ := backup(t, r, c, target.LevelFull, "", nil)
	newer, _ := testenv.NewContent(2<<20, 32, testenv.Fill{Random: 1})
	backup(t, r, newer, target.LevelFull, "", nil)

	h, err := r.Hold(ctx, old.ID, "mount s-000000000001")
	if err != nil {
		t.Fatal(err)
	}
	other := openRepo(t, b, target.OpenOptions{Host: "elsewhere"})
	me := target.OwnerOf(other)
	me.MachineID = "another machine"
	target.SetOwner(other, me)
	decs, err := other.Prune(ctx, "", target.Retention{KeepLast: 1}, false)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range decs {
		if d.ID == old.ID && (!d.Keep || !strings.Contains(strings.Join(d.Reasons, ","), "held by mount s-000000000001")) {
			t.Fatalf("held point decided %+v", d)
		}
	}
	if _, err := other.GC(ctx, target.GCOptions{Grace: -1}); err != nil {
		t.Fatal(err)
	}
	restoreEquals(t, r, old.ID, c)
	if err := other.DeletePoint(ctx, old.ID); !errors.Is(err, target.ErrHeld) {
		t.Fatalf("delete of a held point: %v", err)
	}
	if _, err := r.Hold(ctx, "20200101T000000Z-00000000", "mount"); !errors.Is(err, target.ErrNoPoint) {
		t.Fatalf("hold of a point that is not there: %v", err)
	}

	// A hold of a process of this machine that no longer runs is dead.
	h.Release(ctx)
	dead := openRepo(t, b, target.OpenOptions{})
	gone := target.OwnerOf(dead)
	gone.PID, gone.Start = 999999, 1
	target.SetOwner(dead, gone)
	dh, err := dead.Hold(ctx, old.ID, "serve")
	if err != nil {
		t.Fatal(err)
	}
	defer dh.Release(ctx)
	if _, err := r.Prune(ctx, "", target.Retention{KeepLast: 1}, false); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Point(ctx, old.ID); !errors.Is(err, target.ErrNoPoint) {
		t.Fatalf("point of a dead hold after prune: %v", err)
	}
}
