package chain_test

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/virtkeep/virtkeep/hostd/chain"
	"github.com/virtkeep/virtkeep/target"
	"github.com/virtkeep/virtkeep/target/mem"
	"github.com/virtkeep/virtkeep/target/targettest"
)

// point commits a point of domain uuid at level, one small disk.
func point(t *testing.T, r *target.Repository, uuid, level, parent string) *target.Manifest {
	t.Helper()
	spec := target.PointSpec{Domain: "vm-" + uuid, DomainUUID: uuid, Level: level, Parent: parent, Consistency: "crash"}
	return targettest.CommitChunk(t, r, spec, 64<<10, 0, make([]byte, 64<<10))
}

// TestLoadBaseGoneElsewhere: the chain comes from the metadata cache and
// a listing of recent points; when the base it picks from the cache was
// pruned by another host, Load lists every point and picks the base that
// is there, instead of building on a point that is gone.
func TestLoadBaseGoneElsewhere(t *testing.T) {
	ctx := context.Background()
	b := mem.New()
	if err := target.Init(ctx, b, target.InitOptions{}); err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 12, 1, 3, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	open := func(cache string) *target.Repository {
		r, err := target.Open(ctx, b, target.OpenOptions{Now: clock, CacheDir: cache})
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	other, mine := open(""), open(t.TempDir())
	full := point(t, other, "u1", target.LevelFull, "")
	now = now.Add(time.Hour)
	inc := point(t, other, "u1", target.LevelInc, full.ID)
	now = now.Add(72 * time.Hour)
	point(t, other, "u2", target.LevelFull, "") // the newest point, another domain's
	log := slog.New(slog.DiscardHandler)
	c, err := chain.Load(ctx, mine, "u1", nil, log)
	if err != nil || c.Last == nil || c.Last.ID != inc.ID || c.LastFull.ID != full.ID {
		t.Fatalf("cold: %+v %v: want last %s, full %s", c, err, inc.ID, full.ID)
	}
	if err := other.DeletePoint(ctx, inc.ID); err != nil {
		t.Fatal(err)
	}
	c, err = chain.Load(ctx, mine, "u1", nil, log)
	if err != nil || c.Last == nil || c.Last.ID != full.ID {
		t.Fatalf("after the base was pruned elsewhere: %+v %v: want the full %s", c, err, full.ID)
	}
}
