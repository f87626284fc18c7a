package backup_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"libvirt.org/go/libvirt"

	"github.com/virtkeep/virtkeep/hostd/backup"
	"github.com/virtkeep/virtkeep/hostd/chain"
	"github.com/virtkeep/virtkeep/hostd/fixture"
	"github.com/virtkeep/virtkeep/qmp"
	"github.com/virtkeep/virtkeep/target"
	"github.com/virtkeep/virtkeep/testenv"
	"github.com/virtkeep/virtkeep/testenv/vm"
)

// TestBackupLevels: a running domain with three disks (qcow2, raw, qcow2):
// full, inc, diff and auto, each restoring exactly; raw disks are read in
// full each time; only the checkpoints the chain needs remain.
func TestBackupLevels(t *testing.T) {
	f := fixture.New(t, vm.DomainSpec{Disks: []vm.DiskSpec{{Size: 32 << 20}, {Format: "raw", Size: 16 << 20}, {Size: 24 << 20}}, Running: true})
	tg := f.Target("local")
	full := f.Backup(tg, chain.LevelFull)
	if full.Manifest.Level != target.LevelFull || len(full.Manifest.Disks) != 3 {
		t.Fatalf("full: %+v", full.Manifest)
	}
	if got := f.Checkpoints(); len(got) != 1 || got[0] != fixture.CpOf(full.Manifest, "vda") {
		t.Fatalf("checkpoints after full: %v", got)
	}
	f.Write("vda", 1<<20, 512<<10, 1)
	f.Write("vdb", 0, 64<<10, 2)
	f.Write("vdc", 20<<20, 4096, 3)
	inc := f.Backup(tg, chain.LevelInc)
	if r := fixture.DiskReport(t, inc, "vda"); !r.Incremental || r.Copy.BytesRead > 1<<20 {
		t.Fatalf("inc vda: %+v", r)
	}
	if r := fixture.DiskReport(t, inc, "vdb"); r.Incremental || !strings.Contains(r.FullReason, "raw") {
		t.Fatalf("inc vdb (raw): %+v", r)
	}
	if inc.Manifest.Parent != full.Manifest.ID {
		t.Fatalf("inc parent %q, want %s", inc.Manifest.Parent, full.Manifest.ID)
	}
	f.Write("vda", 8<<20, 64<<10, 4)
	diff := f.Backup(tg, chain.LevelDiff)
	if diff.Manifest.Parent != full.Manifest.ID || fixture.DiskReport(t, diff, "vda").Copy.BytesRead < 512<<10 {
		t.Fatalf("diff: parent %s, vda %+v", diff.Manifest.Parent, fixture.DiskReport(t, diff, "vda"))
	}
	// Only the full's anchor and the newest checkpoint remain.
	if got := f.Checkpoints(); len(got) != 2 || !slices.Contains(got, fixture.CpOf(full.Manifest, "vda")) || !slices.Contains(got, fixture.CpOf(diff.Manifest, "vda")) {
		t.Fatalf("checkpoints after diff: %v", got)
	}
	f.Write("vdc", 0, 128<<10, 5)
	auto := f.Backup(tg, chain.LevelAuto)
	if auto.Manifest.Level != target.LevelInc || auto.Manifest.Parent != diff.Manifest.ID || !fixture.DiskReport(t, auto, "vdc").Incremental {
		t.Fatalf("auto: %+v", auto.Manifest)
	}
	if j, err := f.Dom.Dom.GetJobInfo(); err == nil && j.Type != 0 {
		t.Fatalf("a job is left on the domain: %+v", j)
	}
}

// TestBackupPaused: a paused single-disk domain, full then inc.
func TestBackupPaused(t *testing.T) {
	f := fixture.New(t, vm.DomainSpec{Disks: []vm.DiskSpec{{Size: 16 << 20}}, Start: true})
	tg := f.Target("t")
	f.Backup(tg, chain.LevelFull)
	f.Write("vda", 0, 4096, 9)
	if r := f.Backup(tg, chain.LevelInc); !fixture.DiskReport(t, r, "vda").Incremental {
		t.Fatal("paused inc was not incremental")
	}
}

// TestBackupPointInTime: the guest overwrites regions while the backup reads
// them; the point holds what was there when it began.
func TestBackupPointInTime(t *testing.T) {
	f := fixture.New(t, vm.DomainSpec{Disks: []vm.DiskSpec{{Size: 32 << 20, Fill: testenv.Fill{Random: 1}}}, Running: true})
	tg := f.Target("t")
	f.Write("vda", 0, 1<<20, 1) // markers before
	f.Backup(tg, chain.LevelFull, func(r *backup.BackupRequest) {
		r.Hooks = &backup.Hooks{AfterBegin: func(ctx context.Context) error {
			for _, off := range []int64{0, 10 << 20, 31 << 20} {
				if err := f.Dom.Write(ctx, "vda", off, 1<<20, 0xee); err != nil {
					return err
				}
			}
			return nil
		}}
	})
}

// TestBackupOfflineThenOnline: a shut-off domain is backed up through
// qemu-nbd (full, then an incremental from the image's bitmap), then started
// and backed up online, still incrementally.
func TestBackupOfflineThenOnline(t *testing.T) {
	f := fixture.New(t, vm.DomainSpec{Disks: []vm.DiskSpec{{Size: 24 << 20}, {Format: "raw", Size: 8 << 20}}})
	tg := f.Target("t")
	full := f.Backup(tg, chain.LevelFull)
	if fixture.CpOf(full.Manifest, "vda") == "" || fixture.CpOf(full.Manifest, "vdb") != "" {
		t.Fatalf("offline full checkpoints: %+v", full.Manifest.Disks)
	}
	// Write while off, through qemu-io on the image.
	vda, _ := f.Dom.Disk("vda")
	runCmd(t, "qemu-io", "-f", "qcow2", "-c", "write -P 7 2097152 65536", vda.Path)
	_ = vda.Content.Record(testenv.Write{Off: 2 << 20, Len: 64 << 10, Pattern: 7})
	inc := f.Backup(tg, chain.LevelInc)
	if r := fixture.DiskReport(t, inc, "vda"); !r.Incremental || r.Copy.BytesRead > 256<<10 {
		t.Fatalf("offline inc: %+v", r)
	}
	if err := f.Dom.Start(true); err != nil {
		t.Fatal(err)
	}
	f.Write("vda", 10<<20, 4096, 8)
	on := f.Backup(tg, chain.LevelInc)
	if r := fixture.DiskReport(t, on, "vda"); !r.Incremental {
		t.Fatalf("online inc after offline ones was not incremental: %+v", r)
	}
}

// TestRecoveryLostMetadata: libvirt forgot the checkpoint; the bitmap is
// fine, so the metadata is redefined and the backup stays incremental.
func TestRecoveryLostMetadata(t *testing.T) {
	f := fixture.New(t, vm.DomainSpec{Disks: []vm.DiskSpec{{Size: 16 << 20}}, Start: true})
	tg := f.Target("t")
	full := f.Backup(tg, chain.LevelFull)
	runCmd(t, "virsh", "-c", vm.URI(), "checkpoint-delete", f.Dom.Name, fixture.CpOf(full.Manifest, "vda"), "--metadata")
	f.Write("vda", 0, 4096, 1)
	res := f.Backup(tg, chain.LevelInc)
	if !fixture.DiskReport(t, res, "vda").Incremental || !strings.Contains(strings.Join(res.Repairs, ";"), "redefined") {
		t.Fatalf("lost metadata: %+v, repairs %v", res.Disks, res.Repairs)
	}
}

// TestRecoveryBitmapMissing: QEMU was killed before it ever saved the
// bitmap; libvirt still has the checkpoint ("missing or broken bitmap").
// The disk is read in full, the broken checkpoint goes, the chain heals.
func TestRecoveryBitmapMissing(t *testing.T) {
	(&testenv.FaultRow{Fault: "QEMU killed (SIGKILL) after a backup: its dirty bitmaps are lost", Iterations: 1,
		Checked: "the next backup reads that disk in full and says why (bitmap missing), drops the broken checkpoint, and the chain is incremental again after it"}).Record(t)
	f := fixture.New(t, vm.DomainSpec{Disks: []vm.DiskSpec{{Size: 16 << 20}}, Start: true})
	tg := f.Target("t")
	full := f.Backup(tg, chain.LevelFull)
	f.Write("vda", 0, 4096, 1)
	if err := f.Dom.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := f.Dom.Start(true); err != nil {
		t.Fatal(err)
	}
	res := f.Backup(tg, chain.LevelInc)
	r := fixture.DiskReport(t, res, "vda")
	if r.Incremental || !strings.Contains(r.FullReason, "missing") {
		t.Fatalf("missing bitmap: %+v", r)
	}
	if slices.Contains(f.Checkpoints(), fixture.CpOf(full.Manifest, "vda")) {
		t.Fatalf("broken checkpoint kept: %v", f.Checkpoints())
	}
	f.Write("vda", 8<<20, 4096, 2)
	if r := fixture.DiskReport(t, f.Backup(tg, chain.LevelInc), "vda"); !r.Incremental {
		t.Fatalf("chain did not heal: %+v", r)
	}
}

// TestRecoveryInconsistentBitmap: the bitmap was saved once, then QEMU was
// killed while using it, so it is flagged inconsistent.
func TestRecoveryInconsistentBitmap(t *testing.T) {
	(&testenv.FaultRow{Fault: "QEMU killed while its saved bitmap was in use (flagged inconsistent)", Iterations: 1,
		Checked: "the next backup reads that disk in full and says why (inconsistent), the chain is incremental again after it"}).Record(t)
	f := fixture.New(t, vm.DomainSpec{Disks: []vm.DiskSpec{{Size: 16 << 20}}, Start: true})
	tg := f.Target("t")
	f.Backup(tg, chain.LevelFull)
	if err := f.Dom.Destroy(); err != nil { // clean stop: the bitmap is saved
		t.Fatal(err)
	}
	if err := f.Dom.Start(true); err != nil {
		t.Fatal(err)
	}
	f.Write("vda", 0, 4096, 1)
	if err := f.Dom.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := f.Dom.Start(true); err != nil {
		t.Fatal(err)
	}
	res := f.Backup(tg, chain.LevelInc)
	if r := fixture.DiskReport(t, res, "vda"); r.Incremental || !strings.Contains(r.FullReason, "inconsistent") {
		t.Fatalf("inconsistent bitmap: %+v", r)
	}
	f.Write("vda", 4<<20, 4096, 2)
	if r := fixture.DiskReport(t, f.Backup(tg, chain.LevelInc), "vda"); !r.Incremental {
		t.Fatalf("chain did not heal: %+v", r)
	}
}

// TestRecoveryFailedRun: a backup that fails after the job started leaves
// no job, no new checkpoint, no scratch files; the next one is incremental.
func TestRecoveryFailedRun(t *testing.T) {
	f := fixture.New(t, vm.DomainSpec{Disks: []vm.DiskSpec{{Size: 16 << 20}}, Start: true})
	tg := f.Target("t")
	f.Backup(tg, chain.LevelFull)
	before := f.Checkpoints()
	f.Write("vda", 0, 4096, 1)
	boom := errors.New("injected failure")
	_, err := f.Driver.Backup(f.Ctx, backup.BackupRequest{Domain: f.Dom.Name, Target: tg, Level: chain.LevelInc, Hooks: &backup.Hooks{AfterBegin: func(context.Context) error { return boom }}})
	if !errors.Is(err, boom) {
		t.Fatalf("failed run: %v", err)
	}
	if got := f.Checkpoints(); strings.Join(got, ",") != strings.Join(before, ",") {
		t.Fatalf("checkpoints %v after a failed run, were %v", got, before)
	}
	if j, err := f.Dom.Dom.GetJobInfo(); err == nil && j.Type != 0 {
		t.Fatalf("a job is left: %+v", j)
	}
	if ents, _ := os.ReadDir(filepath.Join(string(f.State), "run")); len(ents) != 0 {
		t.Fatalf("runtime files left: %v", ents)
	}
	if pts, _ := tg.Repo.Points(f.Ctx, nil); len(pts) != 1 {
		t.Fatalf("%d points after a failed run", len(pts))
	}
	// A cancelled one, the same.
	cctx, cancel := context.WithCancel(f.Ctx)
	_, err = f.Driver.Backup(cctx, backup.BackupRequest{Domain: f.Dom.Name, Target: tg, Level: chain.LevelInc, Hooks: &backup.Hooks{AfterBegin: func(context.Context) error { cancel(); return nil }}})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled run: %v", err)
	}
	if got := f.Checkpoints(); strings.Join(got, ",") != strings.Join(before, ",") {
		t.Fatalf("checkpoints %v after a cancelled run, were %v", got, before)
	}
	if r := fixture.DiskReport(t, f.Backup(tg, chain.LevelInc), "vda"); !r.Incremental {
		t.Fatalf("after failed runs: %+v", r)
	}
}

// TestTwoTargetsAlternating: a local and an "offsite" target each keep a
// chain of their own; both stay incremental.
func TestTwoTargetsAlternating(t *testing.T) {
	f := fixture.New(t, vm.DomainSpec{Disks: []vm.DiskSpec{{Size: 16 << 20}}, Start: true})
	a, b := f.Target("local"), f.Target("offsite")
	f.Backup(a, chain.LevelFull)
	f.Backup(b, chain.LevelFull)
	for i := 0; i < 3; i++ {
		f.Write("vda", int64(i)<<20, 4096, byte(i+1))
		for _, tg := range []backup.Target{a, b} {
			if r := fixture.DiskReport(t, f.Backup(tg, chain.LevelInc), "vda"); !r.Incremental {
				t.Fatalf("round %d target %s: %+v", i, tg.Name, r)
			}
		}
	}
	if got := f.Checkpoints(); len(got) != 4 { // anchor + newest, per target
		t.Fatalf("checkpoints: %v", got)
	}
}

// TestDiskAddedAndResized: a disk added mid-chain and a disk grown mid-chain
// are read in full; the others stay incremental.
func TestDiskAddedAndResized(t *testing.T) {
	f := fixture.New(t, vm.DomainSpec{Disks: []vm.DiskSpec{{Size: 16 << 20}, {Size: 16 << 20}}, Start: true})
	tg := f.Target("t")
	f.Backup(tg, chain.LevelFull)
	if _, err := f.Dom.AttachDisk(f.Ctx, vm.DiskSpec{Target: "vdc", Size: 8 << 20, Seed: 77}); err != nil {
		t.Fatal(err)
	}
	if err := f.Dom.Resize("vdb", 20<<20); err != nil {
		t.Fatal(err)
	}
	f.Write("vda", 0, 4096, 1)
	res := f.Backup(tg, chain.LevelInc)
	if r := fixture.DiskReport(t, res, "vda"); !r.Incremental {
		t.Fatalf("vda: %+v", r)
	}
	if r := fixture.DiskReport(t, res, "vdb"); r.Incremental || !strings.Contains(r.FullReason, "resized") {
		t.Fatalf("vdb resized: %+v", r)
	}
	if r := fixture.DiskReport(t, res, "vdc"); r.Incremental || !strings.Contains(r.FullReason, "added") {
		t.Fatalf("vdc added: %+v", r)
	}
	f.Write("vdc", 0, 4096, 2)
	res = f.Backup(tg, chain.LevelInc)
	for _, d := range []string{"vda", "vdb", "vdc"} {
		if !fixture.DiskReport(t, res, d).Incremental {
			t.Fatalf("next inc, %s: %+v", d, fixture.DiskReport(t, res, d))
		}
	}
}

func TestBackupBadRequests(t *testing.T) {
	f := fixture.New(t, vm.DomainSpec{Disks: []vm.DiskSpec{{Size: 8 << 20}}})
	tg := f.Target("t")
	for _, tc := range []struct {
		req  backup.BackupRequest
		want string
	}{
		{backup.BackupRequest{Domain: "no-such-domain-x", Target: tg}, `"no-such-domain-x" not found`},
		{backup.BackupRequest{Domain: f.Dom.Name, Target: tg, Level: "weekly"}, `level "weekly"`},
		{backup.BackupRequest{Domain: f.Dom.Name, Target: tg, Disks: []string{"sdz"}}, `no disk "sdz"`},
		{backup.BackupRequest{Domain: f.Dom.Name, Target: backup.Target{Name: "bad name", Repo: tg.Repo}}, `target name "bad name"`},
		{backup.BackupRequest{Domain: f.Dom.Name, Target: tg, Consistency: "perfect"}, `consistency "perfect"`},
	} {
		if _, err := f.Driver.Backup(f.Ctx, tc.req); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: error %v, want %q", tc.req, err, tc.want)
		}
	}
}

func runCmd(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %v: %v: %s", name, args, err, out)
	}
}

// TestRecoveryLeftovers: a killed run left its backup job running, its
// checkpoint, and a bitmap of ours that libvirt does not know; the next
// backup clears all three and stays incremental.
func TestRecoveryLeftovers(t *testing.T) {
	f := fixture.New(t, vm.DomainSpec{Disks: []vm.DiskSpec{{Size: 16 << 20}}, Start: true})
	tg := f.Target("t")
	f.Backup(tg, chain.LevelFull)
	run := filepath.Join(string(f.State), "run", "b-deadbeef") // as a killed run names it
	if err := os.MkdirAll(run, 0o777); err != nil {
		t.Fatal(err)
	}
	os.Chmod(run, 0o777)
	leftover := chain.Prefix("t") + "leftover"
	bx := "<domainbackup mode='pull'><server transport='unix' socket='" + run + "/nbd.sock'/><disks><disk name='vda' backup='yes' type='file'><scratch file='" + run + "/s'/></disk></disks></domainbackup>"
	cx := "<domaincheckpoint><name>" + leftover + "</name><disks><disk name='vda' checkpoint='bitmap'/></disks></domaincheckpoint>"
	q := f.QMP()
	node, err := q.DeviceNode(f.Ctx, "virtio-disk0")
	if err != nil {
		t.Fatal(err)
	}
	if err := q.Transaction(f.Ctx, qmp.AddBitmap(node, chain.Prefix("t")+"orphan", qmp.BitmapOptions{Persistent: true})); err != nil {
		t.Fatal(err)
	}
	if err := f.Dom.Dom.BackupBegin(bx, cx, 0); err != nil {
		t.Fatal(err)
	}
	f.Write("vda", 0, 4096, 1)
	res := f.Backup(tg, chain.LevelInc)
	all := strings.Join(res.Repairs, "; ")
	for _, want := range []string{"stale backup job", leftover, "orphan"} {
		if !strings.Contains(all, want) {
			t.Errorf("repairs %q do not mention %q", all, want)
		}
	}
	if !fixture.DiskReport(t, res, "vda").Incremental {
		t.Fatal("not incremental after clearing leftovers")
	}
	// The full's checkpoint (anchor for differentials) and the new one.
	if cps := f.Checkpoints(); len(cps) != 2 || slices.Contains(cps, leftover) || !slices.Contains(cps, fixture.CpOf(res.Manifest, "vda")) {
		t.Fatalf("checkpoints: %v", cps)
	}
}

// TestConcurrentBackupsOfOneDomain: two backups of one domain at once (the
// daemon and a CLI) are serialized by the domain's lock: the second waits,
// and neither takes the other's running job for a stale one.
func TestConcurrentBackupsOfOneDomain(t *testing.T) {
	f := fixture.New(t, vm.DomainSpec{Disks: []vm.DiskSpec{{Size: 16 << 20, Fill: testenv.Fill{Random: 1, Hole: 3}}}, Start: true})
	tg := f.Target("t")
	started := make(chan struct{})
	release := make(chan struct{})
	first := make(chan error, 1)
	go func() {
		_, err := f.Driver.Backup(f.Ctx, backup.BackupRequest{Domain: f.Dom.Name, Target: tg, Level: chain.LevelFull, Hooks: &backup.Hooks{AfterBegin: func(context.Context) error {
			close(started)
			<-release
			return nil
		}}})
		first <- err
	}()
	<-started
	second := make(chan error, 1)
	go func() {
		_, err := f.Driver.Backup(f.Ctx, backup.BackupRequest{Domain: f.Dom.Name, Target: tg, Level: chain.LevelInc})
		second <- err
	}()
	select {
	case err := <-second:
		t.Fatalf("the second backup ran beside the first: %v", err)
	case <-time.After(time.Second):
	}
	close(release)
	if err := <-first; err != nil {
		t.Fatalf("first backup: %v", err)
	}
	if err := <-second; err != nil {
		t.Fatalf("second backup: %v", err)
	}
}

// TestBackupLeavesGraphicsPasswordsOut: a domain's VNC password is not
// saved with its points (the repository may be read by others).
func TestBackupLeavesGraphicsPasswordsOut(t *testing.T) {
	f := fixture.New(t, vm.DomainSpec{Disks: []vm.DiskSpec{{Size: 8 << 20}}, Start: true,
		Devices: "    <graphics type='vnc' port='-1' autoport='yes' listen='127.0.0.1' passwd='s3cr3tvn'/>\n"})
	if secure, _ := f.Dom.Dom.GetXMLDesc(libvirt.DOMAIN_XML_SECURE | libvirt.DOMAIN_XML_INACTIVE); !strings.Contains(secure, "s3cr3tvn") {
		t.Fatal("the test domain has no VNC password")
	}
	res := f.Backup(f.Target("t"), chain.LevelFull)
	if strings.Contains(res.Manifest.DomainXML+res.Manifest.DomainXMLInactive, "s3cr3tvn") {
		t.Fatal("the VNC password was saved with the point")
	}
	if !strings.Contains(res.Manifest.DomainXMLInactive, "graphics type='vnc'") {
		t.Fatal("the graphics device itself was lost")
	}
}
