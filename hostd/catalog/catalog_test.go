package catalog

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/virtkeep/virtkeep/hostd/api"
)

func point(target, id, dom string, t time.Time, disks int) api.Point {
	p := api.Point{ID: id, Domain: dom, DomainUUID: "uuid-" + dom, Target: target, Time: t.UTC(), Level: "full", Consistency: "crash", Disks: []api.PointDisk{}}
	for i := 0; i < disks; i++ {
		p.Disks = append(p.Disks, api.PointDisk{Name: fmt.Sprintf("vd%c", 'a'+i), Format: "qcow2", VirtualSize: 1 << 30, BytesRead: int64(i), BytesStored: 7})
	}
	return p
}

func TestPointsAndSync(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "catalog.db")
	c, err := Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2026, 11, 22, 2, 0, 0, 0, time.UTC)
	a := point("t1", "20261122T020000Z-00000001", "vm", t0, 2)
	b := point("t1", "20261122T030000Z-00000002", "vm", t0.Add(time.Hour), 1)
	other := point("t2", "20261122T040000Z-00000003", "db", t0.Add(2*time.Hour), 1)
	if err := c.Sync(ctx, "t1", []api.Point{a, b}, nil, true, t0); err != nil {
		t.Fatal(err)
	}
	if err := c.AddPoint(ctx, other); err != nil {
		t.Fatal(err)
	}
	all, err := c.Points(ctx, Query{})
	if err != nil || len(all) != 3 || all[0].ID != a.ID || len(all[0].Disks) != 2 || all[0].Disks[1].BytesRead != 1 {
		t.Fatalf("all: %+v %v", all, err)
	}
	latest, _ := c.Points(ctx, Query{Domain: "vm", Latest: true})
	before, _ := c.Points(ctx, Query{Domain: "uuid-vm", Before: t0.Add(30 * time.Minute), Latest: true})
	if len(latest) != 1 || latest[0].ID != b.ID || len(before) != 1 || before[0].ID != a.ID {
		t.Fatalf("latest %+v, before %+v", latest, before)
	}
	if s, _ := c.Synced(ctx, "t2"); !s.IsZero() {
		t.Fatal("AddPoint marked the target synced")
	}
	// Another host removed b and added d.
	d := point("t1", "20261122T050000Z-00000004", "vm", t0.Add(3*time.Hour), 1)
	if err := c.Sync(ctx, "t1", []api.Point{d}, []string{b.ID}, false, t0.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	ids, _ := c.PointIDs(ctx, "t1")
	if len(ids) != 2 || !ids[a.ID] || !ids[d.ID] {
		t.Fatalf("after sync: %v", ids)
	}
	// A target no longer configured goes with its points.
	if err := c.KeepTargets(ctx, []string{"t1"}); err != nil {
		t.Fatal(err)
	}
	if ps, _ := c.Points(ctx, Query{Target: "t2"}); len(ps) != 0 {
		t.Fatalf("points of a dropped target: %+v", ps)
	}
	c.Close()
	// Reopening applies no migration twice.
	c, err = Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var v int
	c.db.QueryRow("PRAGMA user_version").Scan(&v)
	if v != SchemaVersion() {
		t.Fatalf("schema version %d, want %d", v, SchemaVersion())
	}
}

func TestNewerSchemaRefused(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "catalog.db")
	c, err := Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	c.db.Exec(fmt.Sprintf("PRAGMA user_version = %d", SchemaVersion()+1))
	c.Close()
	if _, err := Open(ctx, path); err == nil {
		t.Fatal("a catalog from a newer virtkeep was opened")
	}
}

func TestJobsAndLogs(t *testing.T) {
	ctx := context.Background()
	c, err := Open(ctx, filepath.Join(t.TempDir(), "catalog.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	now := time.Now().UTC()
	run := api.Job{ID: "20261122T020000Z-0000000a", Kind: api.KindBackup, Domain: "vm", State: api.Running, Created: now, Started: now}
	old := api.Job{ID: "20261120T020000Z-0000000b", Kind: api.KindBackup, Domain: "vm", State: api.Succeeded, Created: now.Add(-72 * time.Hour), Ended: now.Add(-71 * time.Hour)}
	for _, j := range []api.Job{run, old} {
		if err := c.SaveJob(ctx, j, 42, []byte(`{"domain":"vm"}`)); err != nil {
			t.Fatal(err)
		}
	}
	recent, _ := c.Jobs(ctx, JobQuery{EndedAfter: now.Add(-24 * time.Hour)})
	every, _ := c.Jobs(ctx, JobQuery{})
	if len(recent) != 1 || recent[0].ID != run.ID || len(every) != 2 {
		t.Fatalf("recent %+v every %+v", recent, every)
	}
	un, _ := c.UnfinishedJobs(ctx)
	if len(un) != 1 || un[0].Holder != 42 {
		t.Fatalf("unfinished %+v", un)
	}
	for i := int64(1); i <= 3; i++ {
		if err := c.AppendLog(ctx, api.LogLine{Job: run.ID, Seq: i, Time: now, Level: "INFO", Message: fmt.Sprint("line ", i), Attrs: map[string]string{"k": "v"}}); err != nil {
			t.Fatal(err)
		}
	}
	ls, _ := c.Logs(ctx, run.ID, 1)
	if len(ls) != 2 || ls[0].Seq != 2 || ls[1].Attrs["k"] != "v" {
		t.Fatalf("logs %+v", ls)
	}
	if _, err := c.Job(ctx, "20261122T020000Z-ffffffff"); err == nil {
		t.Fatal("unknown job found")
	}
}

// TestExpireJobs: jobs that ended before the cutoff go with their logs;
// running ones, recent ones and a policy's newest run of each kind stay.
func TestExpireJobs(t *testing.T) {
	ctx := context.Background()
	c, err := Open(ctx, filepath.Join(t.TempDir(), "catalog.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	now := time.Now().UTC()
	long := now.AddDate(0, 0, -200)
	jobs := []api.Job{
		{ID: "20260101T020000Z-00000001", Kind: api.KindBackup, State: api.Succeeded, Created: long, Ended: long},                                      // goes
		{ID: "20260101T020000Z-00000002", Kind: api.KindBackup, State: api.Running, Created: long, Started: long},                                      // running: stays
		{ID: "20261201T020000Z-00000003", Kind: api.KindBackup, State: api.Failed, Created: now, Ended: now},                                           // recent: stays
		{ID: "20260101T020000Z-00000004", Kind: api.KindPolicy, Policy: "monthly", State: api.Succeeded, Created: long, Ended: long},                   // the policy's last: stays
		{ID: "20251201T020000Z-00000005", Kind: api.KindPolicy, Policy: "monthly", State: api.Succeeded, Created: long.AddDate(0, -1, 0), Ended: long}, // older run: goes
	}
	for _, j := range jobs {
		if err := c.SaveJob(ctx, j, 1, nil); err != nil {
			t.Fatal(err)
		}
		if err := c.AppendLog(ctx, api.LogLine{Job: j.ID, Seq: 1, Time: j.Created, Level: "INFO", Message: "x"}); err != nil {
			t.Fatal(err)
		}
	}
	n, err := c.ExpireJobs(ctx, now.AddDate(0, 0, -90))
	if err != nil || n != 2 {
		t.Fatalf("expired %d, %v: want 2", n, err)
	}
	left, _ := c.Jobs(ctx, JobQuery{})
	if len(left) != 3 {
		t.Fatalf("%d jobs left, want 3", len(left))
	}
	var logs int
	if err := c.db.QueryRowContext(ctx, `SELECT count(*) FROM job_logs`).Scan(&logs); err != nil || logs != 3 {
		t.Fatalf("%d log lines left (%v), want 3", logs, err)
	}
}

// TestListTenThousand: list of 10,000 points (two disks each) from the
// catalog, measured.
func TestListTenThousand(t *testing.T) {
	ctx := context.Background()
	c, err := Open(ctx, filepath.Join(t.TempDir(), "catalog.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	t0 := time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC)
	var ps []api.Point
	for i := 0; i < 10000; i++ {
		ps = append(ps, point("t", fmt.Sprintf("20200101T000000Z-%08x", i), fmt.Sprintf("vm%d", i%50), t0.Add(time.Duration(i)*time.Hour), 2))
	}
	if err := c.Sync(ctx, "t", ps, nil, true, t0); err != nil {
		t.Fatal(err)
	}
	for run := 0; run < 2; run++ {
		start := time.Now()
		got, err := c.Points(ctx, Query{})
		el := time.Since(start)
		if err != nil || len(got) != 10000 || len(got[9999].Disks) != 2 {
			t.Fatalf("%d points, %v", len(got), err)
		}
		start = time.Now()
		one, _ := c.Points(ctx, Query{Domain: "vm7"})
		t.Logf("list of 10,000 points: %v; of one domain's %d: %v", el, len(one), time.Since(start))
	}
}

// TestDamagedCatalogReplaced: a catalog file that is no database (garbage
// written over it) is moved aside by OpenOrReplace and a new one made;
// Open alone refuses it.
func TestDamagedCatalogReplaced(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	path := filepath.Join(dir, "catalog.db")
	os.WriteFile(path, bytes.Repeat([]byte("not a database "), 1000), 0o600)
	if c, err := Open(ctx, path); err == nil {
		c.Close()
		t.Fatal("Open took a damaged catalog")
	}
	c, err := OpenOrReplace(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if c.Replaced == "" {
		t.Fatal("the damaged catalog's replacement is not said")
	}
	if _, err := c.Points(ctx, Query{}); err != nil {
		t.Fatalf("the new catalog: %v", err)
	}
	aside, _ := filepath.Glob(path + ".damaged-*")
	if len(aside) != 1 {
		t.Fatalf("the damaged catalog was not kept aside: %v", aside)
	}
}
