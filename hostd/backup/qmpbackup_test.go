package backup_test

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/virtkeep/virtkeep/guestagent"
	"github.com/virtkeep/virtkeep/hostd/backup"
	"github.com/virtkeep/virtkeep/hostd/chain"
	"github.com/virtkeep/virtkeep/hostd/fixture"
	"github.com/virtkeep/virtkeep/qmp"
	"github.com/virtkeep/virtkeep/testenv"
	"github.com/virtkeep/virtkeep/testenv/vm"
)

func TestBackupPlainQEMU(t *testing.T) {
	qv := vm.StartQEMU(t, vm.QEMUSpec{Disks: []vm.DiskSpec{{Size: 24 << 20}, {Format: "raw", Size: 8 << 20}}, Running: true})
	mon := qmp.NewSocketMonitor("unix", qv.QMPPath, 5*time.Second)
	if err := mon.Connect(); err != nil {
		t.Fatal(err)
	}
	defer mon.Disconnect()
	q := qmp.NewClient(mon)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	f := fixture.Bare(t, ctx, t.TempDir(), &vm.Domain{Dir: qv.Dir})
	tg := f.Target("t")
	snap := func() map[string]*testenv.Content {
		m := map[string]*testenv.Content{}
		for _, d := range qv.Disks {
			m[d.Target] = d.Content.Snapshot()
		}
		return m
	}
	backup := func(level string, hook func(context.Context) error) (*backup.Result, error) {
		want := snap()
		res, err := f.Driver.BackupQMP(ctx, backup.QMPRequest{Monitor: q, Name: "plainvm", Target: tg, Level: level, Hooks: &backup.Hooks{AfterBegin: hook}})
		if err == nil {
			f.Verify(tg, res.Manifest, want)
		}
		return res, err
	}
	if _, err := backup(chain.LevelFull, nil); err != nil {
		t.Fatal(err)
	}
	write := func(disk string, off, n int64, p byte) {
		t.Helper()
		if err := qv.Write(ctx, disk, off, n, p); err != nil {
			t.Fatal(err)
		}
	}
	write("vda", 1<<20, 256<<10, 1)
	write("vdb", 0, 4096, 2)
	// Writes during the backup: the point must hold the disk as it was.
	res, err := backup(chain.LevelInc, func(ctx context.Context) error {
		if err := qv.Write(ctx, "vda", 1<<20, 256<<10, 0xee); err != nil {
			return err
		}
		return qv.Write(ctx, "vda", 20<<20, 64<<10, 0xef)
	})
	if err != nil {
		t.Fatal(err)
	}
	if r := fixture.DiskReport(t, res, "vda"); !r.Incremental || r.Copy.BytesRead > 1<<20 {
		t.Fatalf("inc vda: %+v", r)
	}
	// The writes made during the backup are in the next incremental.
	res, err = backup(chain.LevelInc, nil)
	if err != nil {
		t.Fatal(err)
	}
	if r := fixture.DiskReport(t, res, "vda"); !r.Incremental || r.Copy.BytesRead == 0 {
		t.Fatalf("next inc vda: %+v", r)
	}
	// A failed run leaves nothing behind and the chain intact.
	boom := errors.New("injected")
	write("vda", 5<<20, 4096, 3)
	if _, err := backup(chain.LevelInc, func(context.Context) error { return boom }); !errors.Is(err, boom) {
		t.Fatalf("failed run: %v", err)
	}
	nodes, _ := q.QueryBlockNodes(ctx)
	for _, n := range nodes {
		if strings.HasPrefix(n.NodeName, "vk-") {
			t.Fatalf("node %s left after a failed run", n.NodeName)
		}
		for _, bm := range n.DirtyBitmaps {
			if !bm.Recording {
				t.Fatalf("bitmap %s left disabled", bm.Name)
			}
		}
	}
	var jobs []any
	if err := q.Execute(ctx, "query-block-jobs", nil, &jobs); err != nil || len(jobs) != 0 {
		t.Fatalf("jobs left: %v %v", jobs, err)
	}
	res, err = backup(chain.LevelDiff, nil)
	if err != nil {
		t.Fatal(err)
	}
	if r := fixture.DiskReport(t, res, "vda"); !r.Incremental {
		t.Fatalf("diff vda: %+v", r)
	}
	if bms, _ := q.Bitmaps(ctx, "vda"); len(bms) != 2 {
		t.Fatalf("bitmaps after diff: %+v (want the full's anchor and the newest)", bms)
	}
}

// TestBackupPlainQEMUGuestFS: the test guest in a plain QEMU process; an
// fs-consistent backup through the agent's socket, restored clean.
func TestBackupPlainQEMUGuestFS(t *testing.T) {
	qv := vm.StartQEMU(t, vm.QEMUSpec{Guest: true})
	mon := qmp.NewSocketMonitor("unix", qv.QMPPath, 5*time.Second)
	if err := mon.Connect(); err != nil {
		t.Fatal(err)
	}
	defer mon.Disconnect()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	agent := &guestagent.SocketAgent{Path: qv.AgentPath}
	for start := time.Now(); ; time.Sleep(200 * time.Millisecond) {
		pctx, c := context.WithTimeout(ctx, 2*time.Second)
		err := agent.Command(pctx, "guest-ping", nil, nil)
		c()
		if err == nil {
			break
		}
		if time.Since(start) > time.Minute {
			t.Fatalf("agent on %s: %v", qv.AgentPath, err)
		}
	}
	if err := agent.Command(ctx, "guest-exec", map[string]any{"path": "/bin/sh", "arg": []string{"-c",
		`i=0; while true; do i=$((i+1)); echo "record $i" >> /data/log; sync -d /data/log; done`}}, nil); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	f := fixture.Bare(t, ctx, t.TempDir(), &vm.Domain{Dir: qv.Dir})
	tg := f.Target("t")
	res, err := f.Driver.BackupQMP(ctx, backup.QMPRequest{Monitor: qmp.NewClient(mon), Name: "plainguest", Target: tg,
		AgentSocket: qv.AgentPath, Consistency: backup.ConsistencyFS, RequireConsistency: true})
	if err != nil {
		t.Fatal(err)
	}
	if res.Manifest.Consistency != "fs" {
		t.Fatalf("consistency %q", res.Manifest.Consistency)
	}
	t.Logf("plain QEMU freeze window %d ms", res.Manifest.FreezeMS)
	img := filepath.Join(t.TempDir(), "vda.raw")
	fixture.RestoreToRaw(t, ctx, tg, res.Manifest, "vda", img)
	if n := fixture.Records(t, img, true); n == 0 {
		t.Fatal("no records in the backup")
	}
	if st, err := (&guestagent.Freezer{Agent: agent}).Status(ctx); err != nil || st != "thawed" {
		t.Fatalf("guest after backup: %q %v", st, err)
	}
}
