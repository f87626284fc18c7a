package service_test

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/virtkeep/virtkeep/hostd/api"
	"github.com/virtkeep/virtkeep/hostd/catalog"
	"github.com/virtkeep/virtkeep/hostd/service"
	"github.com/virtkeep/virtkeep/target/all"
	"github.com/virtkeep/virtkeep/testenv"
)

// TestListTenThousandPoints: list answers 10,000 points (two disks each)
// from the catalog, in process and through the socket; measured, twice.
func TestListTenThousandPoints(t *testing.T) {
	ctx := context.Background()
	dir := testenv.TempDir(t)
	state := filepath.Join(dir, "state")
	c, err := catalog.Open(ctx, filepath.Join(state, "catalog.db"))
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC)
	var ps []api.Point
	for i := 0; i < 10000; i++ {
		p := api.Point{ID: fmt.Sprintf("20200101T000000Z-%08x", i), Domain: fmt.Sprintf("vm%d", i%50), DomainUUID: fmt.Sprintf("uuid-%d", i%50),
			Target: "local", Time: t0.Add(time.Duration(i) * time.Hour), Level: "inc", Consistency: "fs", Checkpoint: "virtkeep.local.x"}
		for _, d := range []string{"vda", "vdb"} {
			p.Disks = append(p.Disks, api.PointDisk{Name: d, Format: "qcow2", VirtualSize: 20 << 30, BytesRead: 1 << 20, BytesStored: 1 << 19})
		}
		ps = append(ps, p)
	}
	if err := c.Sync(ctx, "local", ps, nil, true, time.Now()); err != nil {
		t.Fatal(err)
	}
	c.Close()
	s, err := service.New(ctx, service.Config{Mode: "daemon", StateDir: state,
		Targets: []service.Target{{Name: "local", Open: all.Config{Name: "local", Kind: "local", Path: filepath.Join(dir, "repo")}}}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for _, via := range []struct {
		name string
		svc  api.Service
	}{{"in process", s}, {"over the socket", overSocket(t, dir, s)}} {
		for run := 1; run <= 2; run++ {
			start := time.Now()
			got, err := via.svc.Points(ctx, api.ListRequest{})
			el := time.Since(start)
			if err != nil || len(got) != 10000 || len(got[9999].Disks) != 2 || got[0].ID != ps[0].ID {
				t.Fatalf("%s: %d points, %v", via.name, len(got), err)
			}
			testenv.Report(t, "list of 10,000 points %s, run %d: %v", via.name, run, el.Round(time.Millisecond))
		}
	}
}

// TestInterruptedJobsFailed: whoever takes the host lock (here a CLI in
// process) marks the jobs a killed process left running failed, naming it.
func TestInterruptedJobsFailed(t *testing.T) {
	ctx := context.Background()
	dir := testenv.TempDir(t)
	state := filepath.Join(dir, "state")
	c, err := catalog.Open(ctx, filepath.Join(state, "catalog.db"))
	if err != nil {
		t.Fatal(err)
	}
	j := api.Job{ID: "20261201T000000Z-0000abcd", Kind: api.KindBackup, Domain: "vk-gone", State: api.Running, Created: time.Now(), Started: time.Now()}
	if err := c.SaveJob(ctx, j, 999999, nil); err != nil {
		t.Fatal(err)
	}
	c.Close()
	s, err := service.New(ctx, service.Config{Mode: "local", StateDir: state,
		Targets: []service.Target{{Name: "local", Open: all.Config{Name: "local", Kind: "local", Path: filepath.Join(dir, "repo")}}}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	got, err := s.Job(ctx, j.ID)
	if err != nil || got.State != api.Failed || got.ErrorCode != api.CodeFailed || !strings.Contains(got.Error, "pid 999999") || got.Ended.IsZero() {
		t.Fatalf("interrupted job: %+v %v", got, err)
	}
}
