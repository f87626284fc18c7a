package engine

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"libvirt.org/go/libvirt"

	"github.com/virtkeep/virtkeep/guestagent"
	"github.com/virtkeep/virtkeep/target"
	"github.com/virtkeep/virtkeep/testenv"
	"github.com/virtkeep/virtkeep/testenv/vm"
)

func guestFixture(t *testing.T, spec vm.GuestSpec) (*fixture, *vm.Guest) {
	t.Helper()
	env := vm.Libvirt(t)
	g := env.NewGuest(t, spec)
	state := filepath.Join(g.Dir, "state")
	os.MkdirAll(state, 0o755)
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	t.Cleanup(cancel)
	log := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
	return &fixture{t: t, env: env, dom: g.Domain, ctx: ctx, e: &Engine{Conn: env.Conn, StateDir: state, Log: log,
		BootFileDirs: append([]string{vm.GuestDir()}, DefaultBootFileDirs...)}}, g
}

// restoreToRaw writes a point's disk to a raw file for host tools.
func restoreToRaw(t *testing.T, ctx context.Context, tg Target, m *target.Manifest, disk, path string) {
	t.Helper()
	if err := RestoreDisk(ctx, tg.Repo, m.ID, disk, path, RestoreOptions{Format: "raw", Force: true}); err != nil {
		t.Fatal(err)
	}
}

// records checks the writer's log in a restored image: ext4 clean (fsck -n)
// when clean is set, and the records a gap-free prefix 1..N. It returns N.
func records(t *testing.T, img string, clean bool) int {
	t.Helper()
	if clean {
		if out, err := exec.Command("e2fsck", "-n", "-f", img).CombinedOutput(); err != nil {
			t.Fatalf("fsck -n of an fs-consistent backup: %v\n%s", err, out)
		}
	} else {
		// Crash-consistent: the journal may need replaying, as after a power cut.
		if out, err := exec.Command("e2fsck", "-p", img).CombinedOutput(); err != nil {
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() > 1 {
				t.Fatalf("fsck -p of a crash-consistent backup: %v\n%s", err, out)
			}
		}
	}
	// Mount it on the host, read-only and without journal replay (the
	// backup must not change), and read the writer's file.
	mnt := t.TempDir()
	if out, err := exec.Command("mount", "-o", "loop,ro,noload", img, mnt).CombinedOutput(); err != nil {
		t.Fatalf("mount the restored image: %v: %s", err, out)
	}
	out, err := os.ReadFile(filepath.Join(mnt, "log"))
	if uerr := exec.Command("umount", mnt).Run(); uerr != nil {
		t.Errorf("umount: %v", uerr)
	}
	if err != nil {
		t.Fatalf("read /log of the restored image: %v", err)
	}
	lines := strings.Split(strings.TrimRight(string(out), "\n"), "\n")
	n := 0
	for i, l := range lines {
		if l == "" && i == len(lines)-1 {
			break
		}
		if l != "record "+strconv.Itoa(i+1) {
			if i == len(lines)-1 && !clean {
				break // a torn last record is what a crash leaves
			}
			t.Fatalf("line %d is %q, want record %d: not a gap-free prefix", i+1, l, i+1)
		}
		n = i + 1
	}
	return n
}

// TestGuestFSConsistentBackups: fs-consistent backups of a running guest
// while a writer appends fsync'ed records; every restored image is clean
// and holds a gap-free prefix of the records. The freeze window is measured
// over 20 backups. A crash-consistent backup restores too.
func TestGuestFSConsistentBackups(t *testing.T) {
	f, g := guestFixture(t, vm.GuestSpec{})
	tg := f.target("t")
	if err := g.StartWriter(f.ctx, "/data/log"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	var windows []time.Duration
	var last *target.Manifest
	dir := t.TempDir()
	prev := 0
	for i := 0; i < 20; i++ {
		res, err := f.e.Backup(f.ctx, BackupRequest{Domain: g.Name, Target: tg, Consistency: ConsistencyFS, RequireConsistency: true})
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
			restoreToRaw(t, f.ctx, tg, m, "vda", img)
			n := records(t, img, true)
			if n < prev {
				t.Fatalf("backup %d holds %d records, an earlier one %d", i, n, prev)
			}
			prev = n
			os.Remove(img)
		}
	}
	if st, err := (&guestagent.Freezer{Agent: g.Agent}).Status(f.ctx); err != nil || st != "thawed" {
		t.Fatalf("guest after backups: %q %v", st, err)
	}
	sort.Slice(windows, func(i, j int) bool { return windows[i] < windows[j] })
	med, p99 := windows[len(windows)/2], windows[len(windows)-1]
	testenv.Report(t, "freeze window over %d fs backups: median %v, p99 (max of %d) %v, min %v", len(windows), med, len(windows), p99, windows[0])
	if prev == 0 {
		t.Fatal("the writer wrote nothing")
	}
	// Crash-consistent backup of the same guest.
	res, err := f.e.Backup(f.ctx, BackupRequest{Domain: g.Name, Target: tg, Consistency: ConsistencyCrash})
	if err != nil {
		t.Fatal(err)
	}
	if res.Manifest.Consistency != "crash" || res.Manifest.FreezeMS != 0 {
		t.Fatalf("crash backup: %+v", res.Manifest)
	}
	img := filepath.Join(dir, "crash.raw")
	restoreToRaw(t, f.ctx, tg, res.Manifest, "vda", img)
	if n := records(t, img, false); n < prev {
		t.Fatalf("crash backup holds %d records, fewer than %d", n, prev)
	}
	_ = last
}

// TestGuestAgentFaults: no agent (fallback and require), an agent that never
// answers the freeze, a failing and a hanging pre-freeze hook. The guest is
// never left frozen.
func TestGuestAgentFaults(t *testing.T) {
	t.Run("no agent", func(t *testing.T) {
		f, g := guestFixture(t, vm.GuestSpec{NoAgent: true})
		tg := f.target("t")
		res, err := f.e.Backup(f.ctx, BackupRequest{Domain: g.Name, Target: tg, Consistency: ConsistencyFS})
		if err != nil {
			t.Fatal(err)
		}
		if res.Manifest.Consistency != "crash" || len(res.Warnings) == 0 {
			t.Fatalf("fallback: %q %v", res.Manifest.Consistency, res.Warnings)
		}
		_, err = f.e.Backup(f.ctx, BackupRequest{Domain: g.Name, Target: tg, Consistency: ConsistencyFS, RequireConsistency: true})
		if !errors.Is(err, ErrConsistency) {
			t.Fatalf("require without agent: %v", err)
		}
	})
	t.Run("agent stops answering", func(t *testing.T) {
		f, g := guestFixture(t, vm.GuestSpec{})
		tg := f.target("t")
		// Stop qemu-ga for 8 s: the freeze times out; when the agent comes
		// back it runs the queued freeze, then our thaw.
		if err := g.Agent.Command(f.ctx, "guest-exec", map[string]any{"path": "/bin/sh", "arg": []string{"-c", "p=$(pidof qemu-ga); kill -STOP $p; sleep 8; kill -CONT $p"}}, nil); err != nil {
			t.Fatal(err)
		}
		time.Sleep(500 * time.Millisecond)
		start := time.Now()
		res, err := f.e.Backup(f.ctx, BackupRequest{Domain: g.Name, Target: tg, Consistency: ConsistencyFS, FreezeTimeout: 2 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		if res.Manifest.Consistency != "crash" {
			t.Fatalf("consistency %q with a hung agent", res.Manifest.Consistency)
		}
		t.Logf("backup with a hung agent took %v", time.Since(start).Round(time.Millisecond))
		if err := g.WaitAgent(f.ctx); err != nil {
			t.Fatal(err)
		}
		st, err := (&guestagent.Freezer{Agent: g.Agent}).Status(f.ctx)
		if err != nil || st != "thawed" {
			t.Fatalf("guest after a hung freeze: %q %v", st, err)
		}
	})
	t.Run("job start past the freeze timeout", func(t *testing.T) {
		f, g := guestFixture(t, vm.GuestSpec{})
		tg := f.target("t")
		if _, err := f.e.Backup(f.ctx, BackupRequest{Domain: g.Name, Target: tg, Consistency: ConsistencyFS}); err != nil {
			t.Fatal(err)
		}
		before := f.checkpoints()
		// libvirt (here: a hook) takes 3 s to start the job, the guest may
		// stay frozen 1 s: it is thawed at 1 s, the job that starts later is
		// undone, the backup fails.
		start := time.Now()
		_, err := f.e.Backup(f.ctx, BackupRequest{Domain: g.Name, Target: tg, Consistency: ConsistencyFS, RequireConsistency: true,
			FreezeTimeout: time.Second, beforeBegin: func() { time.Sleep(3 * time.Second) }})
		if !errors.Is(err, ErrFreezeDeadline) {
			t.Fatalf("slow job start: %v", err)
		}
		t.Logf("backup failed after %v", time.Since(start).Round(time.Millisecond))
		st, err := (&guestagent.Freezer{Agent: g.Agent}).Status(f.ctx)
		if err != nil || st != "thawed" {
			t.Fatalf("guest after a slow job start: %q %v", st, err)
		}
		if after := f.checkpoints(); strings.Join(after, ",") != strings.Join(before, ",") {
			t.Fatalf("checkpoints %v, want %v as before", after, before)
		}
		if _, err := g.Dom.BackupGetXMLDesc(0); err == nil {
			t.Fatal("a backup job is still running")
		}
		if _, err := f.e.Backup(f.ctx, BackupRequest{Domain: g.Name, Target: tg, Consistency: ConsistencyFS, RequireConsistency: true}); err != nil {
			t.Fatalf("the next backup: %v", err)
		}
	})
	t.Run("hooks", func(t *testing.T) {
		f, g := guestFixture(t, vm.GuestSpec{})
		tg := f.target("t")
		for _, h := range []guestagent.Hook{
			{Path: "/bin/sh", Args: []string{"-c", "echo flushing; exit 3"}},
			{Path: "/bin/sleep", Args: []string{"30"}, Timeout: time.Second},
		} {
			res, err := f.e.Backup(f.ctx, BackupRequest{Domain: g.Name, Target: tg, Consistency: ConsistencyApp, PreFreeze: []guestagent.Hook{h}})
			if err != nil {
				t.Fatal(err)
			}
			if res.Manifest.Consistency != "crash" || !strings.Contains(strings.Join(res.Warnings, ";"), "pre-freeze") {
				t.Fatalf("hook %v: %q %v", h.Args, res.Manifest.Consistency, res.Warnings)
			}
			if _, err := f.e.Backup(f.ctx, BackupRequest{Domain: g.Name, Target: tg, Consistency: ConsistencyApp, RequireConsistency: true, PreFreeze: []guestagent.Hook{h}}); !errors.Is(err, ErrConsistency) {
				t.Fatalf("required app with failing hook %v: %v", h.Args, err)
			}
		}
		// A working pair of hooks: app consistency, and both ran.
		res, err := f.e.Backup(f.ctx, BackupRequest{Domain: g.Name, Target: tg, Consistency: ConsistencyApp, RequireConsistency: true,
			PreFreeze: []guestagent.Hook{{Path: "/bin/sh", Args: []string{"-c", "echo pre >> /run/hooks"}}},
			PostThaw:  []guestagent.Hook{{Path: "/bin/sh", Args: []string{"-c", "echo post >> /run/hooks"}}}})
		if err != nil {
			t.Fatal(err)
		}
		if res.Manifest.Consistency != "app" {
			t.Fatalf("app backup reached %q", res.Manifest.Consistency)
		}
		out, err := g.Exec(f.ctx, "cat /run/hooks")
		if err != nil || out.Stdout != "pre\npost\n" {
			t.Fatalf("hooks ran: %q %v", out.Stdout, err)
		}
	})
}

// TestRestoreAsNewDomainBoots: a guest's point restored --as a new name
// defines a domain that boots; its agent answers and the file written
// before the backup is there. The original is untouched.
func TestRestoreAsNewDomainBoots(t *testing.T) {
	f, g := guestFixture(t, vm.GuestSpec{})
	tg := f.target("t")
	if res, err := g.Exec(f.ctx, "echo 'written before the backup' > /data/marker; sync"); err != nil || res.ExitCode != 0 {
		t.Fatalf("%+v %v", res, err)
	}
	bres, err := f.e.Backup(f.ctx, BackupRequest{Domain: g.Name, Target: tg, Consistency: ConsistencyFS, RequireConsistency: true})
	if err != nil {
		t.Fatal(err)
	}
	name := g.Name + "-r"
	dir := filepath.Join(g.Dir, "restored")
	if _, err := f.e.RestoreDomain(f.ctx, tg.Repo, bres.Manifest.ID, DomainRestore{Name: g.Name, Dir: dir}); err == nil {
		t.Fatal("restore over the original's name was accepted")
	}
	uuid, err := f.e.RestoreDomain(f.ctx, tg.Repo, bres.Manifest.ID, DomainRestore{Name: name, Dir: dir, Verify: true})
	if err != nil {
		t.Fatal(err)
	}
	dom, err := f.env.Conn.LookupDomainByUUIDString(uuid)
	if err != nil {
		t.Fatal(err)
	}
	// Freed here, not by a defer: t.Cleanup runs after the test's defers,
	// and a freed domain object can no longer be destroyed.
	t.Cleanup(func() {
		_ = dom.Destroy()
		_ = dom.UndefineFlags(libvirt.DOMAIN_UNDEFINE_NVRAM | libvirt.DOMAIN_UNDEFINE_CHECKPOINTS_METADATA)
		dom.Free()
	})
	if uuid == g.UUID {
		t.Fatal("restored domain has the original's UUID")
	}
	xml, _ := dom.GetXMLDesc(0)
	if !strings.Contains(xml, filepath.Join(dir, "vda.qcow2")) || strings.Contains(xml, g.Disks[0].Path) {
		t.Fatalf("restored domain's disks:\n%s", xml)
	}
	if cps, _ := dom.ListAllCheckpoints(0); len(cps) != 0 {
		t.Fatal("checkpoints carried over")
	}
	if err := dom.Create(); err != nil {
		t.Fatal(err)
	}
	rg := &vm.Guest{Domain: &vm.Domain{Name: name, Dom: dom}, Agent: guestagent.LibvirtAgent{Dom: dom}}
	if err := rg.WaitAgent(f.ctx); err != nil {
		t.Fatal(err)
	}
	out, err := rg.Exec(f.ctx, "cat /data/marker")
	if err != nil || out.Stdout != "written before the backup\n" {
		t.Fatalf("restored guest reads %q, %v", out.Stdout, err)
	}
	if !g.Active() {
		t.Fatal("the original guest stopped")
	}
}

// TestBootFromPoint: instant recovery. The test guest boots from a point
// through NBD-backed overlays; a file written before the backup is read in
// it through the agent; then its disks migrate to local files while it runs.
func TestBootFromPoint(t *testing.T) {
	f, g := guestFixture(t, vm.GuestSpec{})
	tg := f.target("t")
	if res, err := g.Exec(f.ctx, "echo 'booted from the backup' > /data/marker; sync"); err != nil || res.ExitCode != 0 {
		t.Fatalf("%+v %v", res, err)
	}
	bres, err := f.e.Backup(f.ctx, BackupRequest{Domain: g.Name, Target: tg, Consistency: ConsistencyFS})
	if err != nil {
		t.Fatal(err)
	}
	exe, _ := os.Executable()
	os.Setenv("VIRTKEEP_SERVE", filepath.Join(g.Dir, "repo-t")+","+bres.Manifest.ID+",*")
	defer os.Unsetenv("VIRTKEEP_SERVE")
	dir := filepath.Join(g.Dir, "boot")
	booted, err := f.e.Boot(f.ctx, tg.Repo, BootRequest{Point: bres.Manifest.ID, Name: g.Name + "-b", Dir: dir, Serve: []string{exe, "-test.run=^$"}})
	if err != nil {
		t.Fatal(err)
	}
	dom, err := f.env.Conn.LookupDomainByUUIDString(booted.UUID)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = dom.Destroy()
		dom.Free()
		_ = syscall.Kill(booted.ServePID, syscall.SIGTERM)
	})
	bg := &vm.Guest{Domain: &vm.Domain{Name: g.Name + "-b", Dom: dom}, Agent: guestagent.LibvirtAgent{Dom: dom}}
	if err := bg.WaitAgent(f.ctx); err != nil {
		t.Fatal(err)
	}
	out, err := bg.Exec(f.ctx, "cat /data/marker; echo written-after-boot > /data/after; sync")
	if err != nil || !strings.HasPrefix(out.Stdout, "booted from the backup\n") {
		t.Fatalf("booted guest reads %q, %v", out.Stdout, err)
	}
	if err := f.e.Migrate(f.ctx, booted, dir); err != nil {
		t.Fatal(err)
	}
	xml, _ := dom.GetXMLDesc(0)
	if strings.Contains(xml, "nbd") {
		t.Fatalf("domain still uses NBD after migrate:\n%s", xml)
	}
	out, err = bg.Exec(f.ctx, "cat /data/marker /data/after")
	if err != nil || out.Stdout != "booted from the backup\nwritten-after-boot\n" {
		t.Fatalf("after migrate the guest reads %q, %v", out.Stdout, err)
	}
}
