package backup_test

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/virtkeep/virtkeep/guestagent"
	"github.com/virtkeep/virtkeep/hostd/backup"
	"github.com/virtkeep/virtkeep/hostd/fixture"
	"github.com/virtkeep/virtkeep/target"
	"github.com/virtkeep/virtkeep/testenv"
	"github.com/virtkeep/virtkeep/testenv/vm"
)

// TestGuestFSConsistentBackups: fs-consistent backups of a running guest
// while a writer appends fsync'ed records; every restored image is clean
// and holds a gap-free prefix of the records. The freeze window is measured
// over 20 backups. A crash-consistent backup restores too.
func TestGuestFSConsistentBackups(t *testing.T) {
	f, g := fixture.Guest(t, vm.GuestSpec{})
	tg := f.Target("t")
	if err := g.StartWriter(f.Ctx, "/data/log"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	var windows []time.Duration
	var last *target.Manifest
	dir := t.TempDir()
	prev := 0
	for i := 0; i < 20; i++ {
		res, err := f.Driver.Backup(f.Ctx, backup.BackupRequest{Domain: g.Name, Target: tg, Consistency: backup.ConsistencyFS, RequireConsistency: true})
		if err != nil {
			t.Fatalf("backup %d: %v", i, err)
		}
		m := res.Manifest
		if m.Consistency != "fs" {
			t.Fatalf("backup %d reached %q", i, m.Consistency)
		}
		windows = append(windows, time.Duration(m.FreezeMS)*time.Millisecond)
		last = m
		if i%5 == 0 || i == 19 {
			img := filepath.Join(dir, fmt.Sprintf("p%d.raw", i))
			fixture.RestoreToRaw(t, f.Ctx, tg, m, "vda", img)
			n := fixture.Records(t, img, true)
			if n < prev {
				t.Fatalf("backup %d holds %d records, an earlier one %d", i, n, prev)
			}
			prev = n
			os.Remove(img)
		}
	}
	if st, err := (&guestagent.Freezer{Agent: g.Agent}).Status(f.Ctx); err != nil || st != "thawed" {
		t.Fatalf("guest after backups: %q %v", st, err)
	}
	sort.Slice(windows, func(i, j int) bool { return windows[i] < windows[j] })
	med, p99 := windows[len(windows)/2], windows[len(windows)-1]
	testenv.Report(t, "freeze window over %d fs backups: median %v, p99 (max of %d) %v, min %v", len(windows), med, len(windows), p99, windows[0])
	if prev == 0 {
		t.Fatal("the writer wrote nothing")
	}
	// Crash-consistent backup of the same guest.
	res, err := f.Driver.Backup(f.Ctx, backup.BackupRequest{Domain: g.Name, Target: tg, Consistency: backup.ConsistencyCrash})
	if err != nil {
		t.Fatal(err)
	}
	if res.Manifest.Consistency != "crash" || res.Manifest.FreezeMS != 0 {
		t.Fatalf("crash backup: %+v", res.Manifest)
	}
	img := filepath.Join(dir, "crash.raw")
	fixture.RestoreToRaw(t, f.Ctx, tg, res.Manifest, "vda", img)
	if n := fixture.Records(t, img, false); n < prev {
		t.Fatalf("crash backup holds %d records, fewer than %d", n, prev)
	}
	_ = last
}

// TestGuestAgentFaults: no agent (fallback and require), an agent that never
// answers the freeze, a failing and a hanging pre-freeze hook. The guest is
// never left frozen.
func TestGuestAgentFaults(t *testing.T) {
	t.Run("no agent", func(t *testing.T) {
		f, g := fixture.Guest(t, vm.GuestSpec{NoAgent: true})
		tg := f.Target("t")
		res, err := f.Driver.Backup(f.Ctx, backup.BackupRequest{Domain: g.Name, Target: tg, Consistency: backup.ConsistencyFS})
		if err != nil {
			t.Fatal(err)
		}
		if res.Manifest.Consistency != "crash" || len(res.Warnings) == 0 {
			t.Fatalf("fallback: %q %v", res.Manifest.Consistency, res.Warnings)
		}
		_, err = f.Driver.Backup(f.Ctx, backup.BackupRequest{Domain: g.Name, Target: tg, Consistency: backup.ConsistencyFS, RequireConsistency: true})
		if !errors.Is(err, backup.ErrConsistency) {
			t.Fatalf("require without agent: %v", err)
		}
	})
	t.Run("agent stops answering", func(t *testing.T) {
		f, g := fixture.Guest(t, vm.GuestSpec{})
		tg := f.Target("t")
		// Stop qemu-ga for 8 s: the freeze times out; when the agent comes
		// back it runs the queued freeze, then our thaw.
		if err := g.Agent.Command(f.Ctx, "guest-exec", map[string]any{"path": "/bin/sh", "arg": []string{"-c", "p=$(pidof qemu-ga); kill -STOP $p; sleep 8; kill -CONT $p"}}, nil); err != nil {
			t.Fatal(err)
		}
		time.Sleep(500 * time.Millisecond)
		start := time.Now()
		res, err := f.Driver.Backup(f.Ctx, backup.BackupRequest{Domain: g.Name, Target: tg, Consistency: backup.ConsistencyFS, FreezeTimeout: 2 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		if res.Manifest.Consistency != "crash" {
			t.Fatalf("consistency %q with a hung agent", res.Manifest.Consistency)
		}
		t.Logf("backup with a hung agent took %v", time.Since(start).Round(time.Millisecond))
		if err := g.WaitAgent(f.Ctx); err != nil {
			t.Fatal(err)
		}
		st, err := (&guestagent.Freezer{Agent: g.Agent}).Status(f.Ctx)
		if err != nil || st != "thawed" {
			t.Fatalf("guest after a hung freeze: %q %v", st, err)
		}
	})
	t.Run("job start past the freeze timeout", func(t *testing.T) {
		f, g := fixture.Guest(t, vm.GuestSpec{})
		tg := f.Target("t")
		if _, err := f.Driver.Backup(f.Ctx, backup.BackupRequest{Domain: g.Name, Target: tg, Consistency: backup.ConsistencyFS}); err != nil {
			t.Fatal(err)
		}
		before := f.Checkpoints()
		// libvirt (here: a hook) takes 3 s to start the job, the guest may
		// stay frozen 1 s: it is thawed at 1 s, the job that starts later is
		// undone, the backup fails.
		start := time.Now()
		_, err := f.Driver.Backup(f.Ctx, backup.BackupRequest{Domain: g.Name, Target: tg, Consistency: backup.ConsistencyFS, RequireConsistency: true,
			FreezeTimeout: time.Second, Hooks: &backup.Hooks{BeforeBegin: func() { time.Sleep(3 * time.Second) }}})
		if !errors.Is(err, backup.ErrFreezeDeadline) {
			t.Fatalf("slow job start: %v", err)
		}
		t.Logf("backup failed after %v", time.Since(start).Round(time.Millisecond))
		st, err := (&guestagent.Freezer{Agent: g.Agent}).Status(f.Ctx)
		if err != nil || st != "thawed" {
			t.Fatalf("guest after a slow job start: %q %v", st, err)
		}
		if after := f.Checkpoints(); strings.Join(after, ",") != strings.Join(before, ",") {
			t.Fatalf("checkpoints %v, want %v as before", after, before)
		}
		if _, err := g.Dom.BackupGetXMLDesc(0); err == nil {
			t.Fatal("a backup job is still running")
		}
		if _, err := f.Driver.Backup(f.Ctx, backup.BackupRequest{Domain: g.Name, Target: tg, Consistency: backup.ConsistencyFS, RequireConsistency: true}); err != nil {
			t.Fatalf("the next backup: %v", err)
		}
	})
	t.Run("hooks", func(t *testing.T) {
		f, g := fixture.Guest(t, vm.GuestSpec{})
		tg := f.Target("t")
		for _, h := range []guestagent.Hook{
			{Path: "/bin/sh", Args: []string{"-c", "echo flushing; exit 3"}},
			{Path: "/bin/sleep", Args: []string{"30"}, Timeout: time.Second},
		} {
			res, err := f.Driver.Backup(f.Ctx, backup.BackupRequest{Domain: g.Name, Target: tg, Consistency: backup.ConsistencyApp, PreFreeze: []guestagent.Hook{h}})
			if err != nil {
				t.Fatal(err)
			}
			if res.Manifest.Consistency != "crash" || !strings.Contains(strings.Join(res.Warnings, ";"), "pre-freeze") {
				t.Fatalf("hook %v: %q %v", h.Args, res.Manifest.Consistency, res.Warnings)
			}
			if _, err := f.Driver.Backup(f.Ctx, backup.BackupRequest{Domain: g.Name, Target: tg, Consistency: backup.ConsistencyApp, RequireConsistency: true, PreFreeze: []guestagent.Hook{h}}); !errors.Is(err, backup.ErrConsistency) {
				t.Fatalf("required app with failing hook %v: %v", h.Args, err)
			}
		}
		// A working pair of hooks: app consistency, and both ran.
		res, err := f.Driver.Backup(f.Ctx, backup.BackupRequest{Domain: g.Name, Target: tg, Consistency: backup.ConsistencyApp, RequireConsistency: true,
			PreFreeze: []guestagent.Hook{{Path: "/bin/sh", Args: []string{"-c", "echo pre >> /run/hooks"}}},
			PostThaw:  []guestagent.Hook{{Path: "/bin/sh", Args: []string{"-c", "echo post >> /run/hooks"}}}})
		if err != nil {
			t.Fatal(err)
		}
		if res.Manifest.Consistency != "app" {
			t.Fatalf("app backup reached %q", res.Manifest.Consistency)
		}
		out, err := g.Exec(f.Ctx, "cat /run/hooks")
		if err != nil || out.Stdout != "pre\npost\n" {
			t.Fatalf("hooks ran: %q %v", out.Stdout, err)
		}
	})
}
