package engine

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"libvirt.org/go/libvirt"

	"github.com/virtkeep/virtkeep/target"
	"github.com/virtkeep/virtkeep/target/local"
	"github.com/virtkeep/virtkeep/testenv"
	"github.com/virtkeep/virtkeep/testenv/vm"
)

type fixture struct {
	t   *testing.T
	env *vm.Env
	dom *vm.Domain
	e   *Engine
	ctx context.Context
}

func newFixture(t *testing.T, spec vm.DomainSpec) *fixture {
	t.Helper()
	env := vm.Libvirt(t)
	dom := env.NewDomain(t, spec)
	state := filepath.Join(dom.Dir, "state")
	if err := os.MkdirAll(state, 0o755); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	t.Cleanup(cancel)
	log := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
	return &fixture{t: t, env: env, dom: dom, e: &Engine{Conn: env.Conn, StateDir: state, Log: log}, ctx: ctx}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

func (f *fixture) target(name string) Target {
	f.t.Helper()
	b, err := local.Open(local.Config{Path: filepath.Join(f.dom.Dir, "repo-"+name)})
	if err != nil {
		f.t.Fatal(err)
	}
	if err := target.Init(f.ctx, b, target.InitOptions{}); err != nil {
		f.t.Fatal(err)
	}
	r, err := target.Open(f.ctx, b, target.OpenOptions{})
	if err != nil {
		f.t.Fatal(err)
	}
	return Target{Name: name, Repo: r}
}

// backup runs a backup and checks the point against the disks' models as
// they were when it started.
func (f *fixture) backup(tg Target, level string, opts ...func(*BackupRequest)) *Result {
	f.t.Helper()
	want := map[string]*testenv.Content{}
	for _, d := range f.dom.Disks {
		want[d.Target] = d.Content.Snapshot()
	}
	req := BackupRequest{Domain: f.dom.Name, Target: tg, Level: level}
	for _, o := range opts {
		o(&req)
	}
	res, err := f.e.Backup(f.ctx, req)
	if err != nil {
		f.t.Fatalf("%s backup: %v", level, err)
	}
	f.verify(tg, res.Manifest, want)
	return res
}

func (f *fixture) verify(tg Target, m *target.Manifest, want map[string]*testenv.Content) {
	f.t.Helper()
	for _, dm := range m.Disks {
		c := want[dm.Name]
		d, err := tg.Repo.OpenDisk(f.ctx, m.ID, dm.Name)
		if err != nil {
			f.t.Fatal(err)
		}
		if d.Size() != c.Size() {
			f.t.Fatalf("point %s disk %s: %d bytes, want %d", m.ID, dm.Name, d.Size(), c.Size())
		}
		got, exp := make([]byte, 4<<20), make([]byte, 4<<20)
		for off := int64(0); off < c.Size(); off += int64(len(got)) {
			n := min(int64(len(got)), c.Size()-off)
			if err := d.ReadAt(f.ctx, got[:n], off); err != nil {
				f.t.Fatal(err)
			}
			_, _ = c.ReadAt(exp[:n], off)
			if !bytes.Equal(got[:n], exp[:n]) {
				f.t.Fatalf("point %s (%s) disk %s differs from the disk at backup time near offset %d", m.ID, m.Level, dm.Name, off)
			}
		}
	}
}

func (f *fixture) write(disk string, off, n int64, pattern byte) {
	f.t.Helper()
	if err := f.dom.Write(f.ctx, disk, off, n, pattern); err != nil {
		f.t.Fatal(err)
	}
}

func (f *fixture) checkpoints() []string {
	f.t.Helper()
	cps, err := f.dom.Dom.ListAllCheckpoints(0)
	if err != nil {
		f.t.Fatal(err)
	}
	var out []string
	for i := range cps {
		n, _ := cps[i].GetName()
		out = append(out, n)
		cps[i].Free()
	}
	sort.Strings(out)
	return out
}

func diskReport(t *testing.T, res *Result, disk string) DiskReport {
	t.Helper()
	for _, d := range res.Disks {
		if d.Disk == disk {
			return d
		}
	}
	t.Fatalf("no report for disk %s in %+v", disk, res.Disks)
	return DiskReport{}
}

func cpOf(m *target.Manifest, disk string) string {
	d, _ := m.Disk(disk)
	if d == nil {
		return ""
	}
	return d.Checkpoint
}

// TestBackupLevels: a running domain with three disks (qcow2, raw, qcow2):
// full, inc, diff and auto, each restoring exactly; raw disks are read in
// full each time; only the checkpoints the chain needs remain.
func TestBackupLevels(t *testing.T) {
	f := newFixture(t, vm.DomainSpec{Disks: []vm.DiskSpec{{Size: 32 << 20}, {Format: "raw", Size: 16 << 20}, {Size: 24 << 20}}, Running: true})
	tg := f.target("local")
	full := f.backup(tg, LevelFull)
	if full.Manifest.Level != target.LevelFull || len(full.Manifest.Disks) != 3 {
		t.Fatalf("full: %+v", full.Manifest)
	}
	if got := f.checkpoints(); len(got) != 1 || got[0] != cpOf(full.Manifest, "vda") {
		t.Fatalf("checkpoints after full: %v", got)
	}
	f.write("vda", 1<<20, 512<<10, 1)
	f.write("vdb", 0, 64<<10, 2)
	f.write("vdc", 20<<20, 4096, 3)
	inc := f.backup(tg, LevelInc)
	if r := diskReport(t, inc, "vda"); !r.Incremental || r.Copy.BytesRead > 1<<20 {
		t.Fatalf("inc vda: %+v", r)
	}
	if r := diskReport(t, inc, "vdb"); r.Incremental || !strings.Contains(r.FullReason, "raw") {
		t.Fatalf("inc vdb (raw): %+v", r)
	}
	if inc.Manifest.Parent != full.Manifest.ID {
		t.Fatalf("inc parent %q, want %s", inc.Manifest.Parent, full.Manifest.ID)
	}
	f.write("vda", 8<<20, 64<<10, 4)
	diff := f.backup(tg, LevelDiff)
	if diff.Manifest.Parent != full.Manifest.ID || diskReport(t, diff, "vda").Copy.BytesRead < 512<<10 {
		t.Fatalf("diff: parent %s, vda %+v", diff.Manifest.Parent, diskReport(t, diff, "vda"))
	}
	// Only the full's anchor and the newest checkpoint remain.
	if got := f.checkpoints(); len(got) != 2 || !contains(got, cpOf(full.Manifest, "vda")) || !contains(got, cpOf(diff.Manifest, "vda")) {
		t.Fatalf("checkpoints after diff: %v", got)
	}
	f.write("vdc", 0, 128<<10, 5)
	auto := f.backup(tg, LevelAuto)
	if auto.Manifest.Level != target.LevelInc || auto.Manifest.Parent != diff.Manifest.ID || !diskReport(t, auto, "vdc").Incremental {
		t.Fatalf("auto: %+v", auto.Manifest)
	}
	if j, err := f.dom.Dom.GetJobInfo(); err == nil && j.Type != 0 {
		t.Fatalf("a job is left on the domain: %+v", j)
	}
}

// TestBackupPaused: a paused single-disk domain, full then inc.
func TestBackupPaused(t *testing.T) {
	f := newFixture(t, vm.DomainSpec{Disks: []vm.DiskSpec{{Size: 16 << 20}}, Start: true})
	tg := f.target("t")
	f.backup(tg, LevelFull)
	f.write("vda", 0, 4096, 9)
	if r := f.backup(tg, LevelInc); !diskReport(t, r, "vda").Incremental {
		t.Fatal("paused inc was not incremental")
	}
}

// TestBackupPointInTime: the guest overwrites regions while the backup reads
// them; the point holds what was there when it began.
func TestBackupPointInTime(t *testing.T) {
	f := newFixture(t, vm.DomainSpec{Disks: []vm.DiskSpec{{Size: 32 << 20, Fill: testenv.Fill{Random: 1}}}, Running: true})
	tg := f.target("t")
	f.write("vda", 0, 1<<20, 1) // markers before
	f.backup(tg, LevelFull, func(r *BackupRequest) {
		r.afterBegin = func(ctx context.Context) error {
			for _, off := range []int64{0, 10 << 20, 31 << 20} {
				if err := f.dom.Write(ctx, "vda", off, 1<<20, 0xee); err != nil {
					return err
				}
			}
			return nil
		}
	})
}

// TestBackupOfflineThenOnline: a shut-off domain is backed up through
// qemu-nbd (full, then an incremental from the image's bitmap), then started
// and backed up online, still incrementally.
func TestBackupOfflineThenOnline(t *testing.T) {
	f := newFixture(t, vm.DomainSpec{Disks: []vm.DiskSpec{{Size: 24 << 20}, {Format: "raw", Size: 8 << 20}}})
	tg := f.target("t")
	full := f.backup(tg, LevelFull)
	if cpOf(full.Manifest, "vda") == "" || cpOf(full.Manifest, "vdb") != "" {
		t.Fatalf("offline full checkpoints: %+v", full.Manifest.Disks)
	}
	// Write while off, through qemu-io on the image.
	vda, _ := f.dom.Disk("vda")
	runCmd(t, "qemu-io", "-f", "qcow2", "-c", "write -P 7 2097152 65536", vda.Path)
	_ = vda.Content.Record(testenv.Write{Off: 2 << 20, Len: 64 << 10, Pattern: 7})
	inc := f.backup(tg, LevelInc)
	if r := diskReport(t, inc, "vda"); !r.Incremental || r.Copy.BytesRead > 256<<10 {
		t.Fatalf("offline inc: %+v", r)
	}
	if err := f.dom.Start(true); err != nil {
		t.Fatal(err)
	}
	f.write("vda", 10<<20, 4096, 8)
	on := f.backup(tg, LevelInc)
	if r := diskReport(t, on, "vda"); !r.Incremental {
		t.Fatalf("online inc after offline ones was not incremental: %+v", r)
	}
}

// TestRecoveryLostMetadata: libvirt forgot the checkpoint; the bitmap is
// fine, so the metadata is redefined and the backup stays incremental.
func TestRecoveryLostMetadata(t *testing.T) {
	f := newFixture(t, vm.DomainSpec{Disks: []vm.DiskSpec{{Size: 16 << 20}}, Start: true})
	tg := f.target("t")
	full := f.backup(tg, LevelFull)
	runCmd(t, "virsh", "-c", vm.URI(), "checkpoint-delete", f.dom.Name, cpOf(full.Manifest, "vda"), "--metadata")
	f.write("vda", 0, 4096, 1)
	res := f.backup(tg, LevelInc)
	if !diskReport(t, res, "vda").Incremental || !strings.Contains(strings.Join(res.Repairs, ";"), "redefined") {
		t.Fatalf("lost metadata: %+v, repairs %v", res.Disks, res.Repairs)
	}
}

// TestRecoveryBitmapMissing: QEMU was killed before it ever saved the
// bitmap; libvirt still has the checkpoint ("missing or broken bitmap").
// The disk is read in full, the broken checkpoint goes, the chain heals.
func TestRecoveryBitmapMissing(t *testing.T) {
	f := newFixture(t, vm.DomainSpec{Disks: []vm.DiskSpec{{Size: 16 << 20}}, Start: true})
	tg := f.target("t")
	full := f.backup(tg, LevelFull)
	f.write("vda", 0, 4096, 1)
	if err := f.dom.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := f.dom.Start(true); err != nil {
		t.Fatal(err)
	}
	res := f.backup(tg, LevelInc)
	r := diskReport(t, res, "vda")
	if r.Incremental || !strings.Contains(r.FullReason, "missing") {
		t.Fatalf("missing bitmap: %+v", r)
	}
	if contains(f.checkpoints(), cpOf(full.Manifest, "vda")) {
		t.Fatalf("broken checkpoint kept: %v", f.checkpoints())
	}
	f.write("vda", 8<<20, 4096, 2)
	if r := diskReport(t, f.backup(tg, LevelInc), "vda"); !r.Incremental {
		t.Fatalf("chain did not heal: %+v", r)
	}
}

// TestRecoveryInconsistentBitmap: the bitmap was saved once, then QEMU was
// killed while using it, so it is flagged inconsistent.
func TestRecoveryInconsistentBitmap(t *testing.T) {
	f := newFixture(t, vm.DomainSpec{Disks: []vm.DiskSpec{{Size: 16 << 20}}, Start: true})
	tg := f.target("t")
	f.backup(tg, LevelFull)
	if err := f.dom.Destroy(); err != nil { // clean stop: the bitmap is saved
		t.Fatal(err)
	}
	if err := f.dom.Start(true); err != nil {
		t.Fatal(err)
	}
	f.write("vda", 0, 4096, 1)
	if err := f.dom.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := f.dom.Start(true); err != nil {
		t.Fatal(err)
	}
	res := f.backup(tg, LevelInc)
	if r := diskReport(t, res, "vda"); r.Incremental || !strings.Contains(r.FullReason, "inconsistent") {
		t.Fatalf("inconsistent bitmap: %+v", r)
	}
	f.write("vda", 4<<20, 4096, 2)
	if r := diskReport(t, f.backup(tg, LevelInc), "vda"); !r.Incremental {
		t.Fatalf("chain did not heal: %+v", r)
	}
}

// TestRecoveryFailedRun: a backup that fails after the job started leaves
// no job, no new checkpoint, no scratch files; the next one is incremental.
func TestRecoveryFailedRun(t *testing.T) {
	f := newFixture(t, vm.DomainSpec{Disks: []vm.DiskSpec{{Size: 16 << 20}}, Start: true})
	tg := f.target("t")
	f.backup(tg, LevelFull)
	before := f.checkpoints()
	f.write("vda", 0, 4096, 1)
	boom := errors.New("injected failure")
	_, err := f.e.Backup(f.ctx, BackupRequest{Domain: f.dom.Name, Target: tg, Level: LevelInc, afterBegin: func(context.Context) error { return boom }})
	if !errors.Is(err, boom) {
		t.Fatalf("failed run: %v", err)
	}
	if got := f.checkpoints(); strings.Join(got, ",") != strings.Join(before, ",") {
		t.Fatalf("checkpoints %v after a failed run, were %v", got, before)
	}
	if j, err := f.dom.Dom.GetJobInfo(); err == nil && j.Type != 0 {
		t.Fatalf("a job is left: %+v", j)
	}
	if ents, _ := os.ReadDir(filepath.Join(f.e.StateDir, "run")); len(ents) != 0 {
		t.Fatalf("runtime files left: %v", ents)
	}
	if pts, _ := tg.Repo.Points(f.ctx, nil); len(pts) != 1 {
		t.Fatalf("%d points after a failed run", len(pts))
	}
	// A cancelled one, the same.
	cctx, cancel := context.WithCancel(f.ctx)
	_, err = f.e.Backup(cctx, BackupRequest{Domain: f.dom.Name, Target: tg, Level: LevelInc, afterBegin: func(context.Context) error { cancel(); return nil }})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled run: %v", err)
	}
	if got := f.checkpoints(); strings.Join(got, ",") != strings.Join(before, ",") {
		t.Fatalf("checkpoints %v after a cancelled run, were %v", got, before)
	}
	if r := diskReport(t, f.backup(tg, LevelInc), "vda"); !r.Incremental {
		t.Fatalf("after failed runs: %+v", r)
	}
}

// TestTwoTargetsAlternating: a local and an "offsite" target each keep a
// chain of their own; both stay incremental.
func TestTwoTargetsAlternating(t *testing.T) {
	f := newFixture(t, vm.DomainSpec{Disks: []vm.DiskSpec{{Size: 16 << 20}}, Start: true})
	a, b := f.target("local"), f.target("offsite")
	f.backup(a, LevelFull)
	f.backup(b, LevelFull)
	for i := 0; i < 3; i++ {
		f.write("vda", int64(i)<<20, 4096, byte(i+1))
		for _, tg := range []Target{a, b} {
			if r := diskReport(t, f.backup(tg, LevelInc), "vda"); !r.Incremental {
				t.Fatalf("round %d target %s: %+v", i, tg.Name, r)
			}
		}
	}
	if got := f.checkpoints(); len(got) != 4 { // anchor + newest, per target
		t.Fatalf("checkpoints: %v", got)
	}
}

// TestDiskAddedAndResized: a disk added mid-chain and a disk grown mid-chain
// are read in full; the others stay incremental.
func TestDiskAddedAndResized(t *testing.T) {
	f := newFixture(t, vm.DomainSpec{Disks: []vm.DiskSpec{{Size: 16 << 20}, {Size: 16 << 20}}, Start: true})
	tg := f.target("t")
	f.backup(tg, LevelFull)
	if _, err := f.dom.AttachDisk(f.ctx, vm.DiskSpec{Target: "vdc", Size: 8 << 20, Seed: 77}); err != nil {
		t.Fatal(err)
	}
	if err := f.dom.Resize("vdb", 20<<20); err != nil {
		t.Fatal(err)
	}
	f.write("vda", 0, 4096, 1)
	res := f.backup(tg, LevelInc)
	if r := diskReport(t, res, "vda"); !r.Incremental {
		t.Fatalf("vda: %+v", r)
	}
	if r := diskReport(t, res, "vdb"); r.Incremental || !strings.Contains(r.FullReason, "resized") {
		t.Fatalf("vdb resized: %+v", r)
	}
	if r := diskReport(t, res, "vdc"); r.Incremental || !strings.Contains(r.FullReason, "added") {
		t.Fatalf("vdc added: %+v", r)
	}
	f.write("vdc", 0, 4096, 2)
	res = f.backup(tg, LevelInc)
	for _, d := range []string{"vda", "vdb", "vdc"} {
		if !diskReport(t, res, d).Incremental {
			t.Fatalf("next inc, %s: %+v", d, diskReport(t, res, d))
		}
	}
}

func TestBackupBadRequests(t *testing.T) {
	f := newFixture(t, vm.DomainSpec{Disks: []vm.DiskSpec{{Size: 8 << 20}}})
	tg := f.target("t")
	for _, tc := range []struct {
		req  BackupRequest
		want string
	}{
		{BackupRequest{Domain: "no-such-domain-x", Target: tg}, `"no-such-domain-x" not found`},
		{BackupRequest{Domain: f.dom.Name, Target: tg, Level: "weekly"}, `level "weekly"`},
		{BackupRequest{Domain: f.dom.Name, Target: tg, Disks: []string{"sdz"}}, `no disk "sdz"`},
		{BackupRequest{Domain: f.dom.Name, Target: Target{Name: "bad name", Repo: tg.Repo}}, `target name "bad name"`},
		{BackupRequest{Domain: f.dom.Name, Target: tg, Consistency: "perfect"}, `consistency "perfect"`},
	} {
		if _, err := f.e.Backup(f.ctx, tc.req); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: error %v, want %q", tc.req, err, tc.want)
		}
	}
}

func runCmd(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := execCommand(name, args...); err != nil {
		t.Fatalf("%s %v: %v: %s", name, args, err, out)
	}
}

// TestRecoveryLeftovers: a killed run left its backup job running, its
// checkpoint, and a bitmap of ours that libvirt does not know; the next
// backup clears all three and stays incremental.
func TestRecoveryLeftovers(t *testing.T) {
	f := newFixture(t, vm.DomainSpec{Disks: []vm.DiskSpec{{Size: 16 << 20}}, Start: true})
	tg := f.target("t")
	f.backup(tg, LevelFull)
	run := filepath.Join(f.e.StateDir, "run", "b-deadbeef") // as a killed run names it
	if err := os.MkdirAll(run, 0o777); err != nil {
		t.Fatal(err)
	}
	os.Chmod(run, 0o777)
	leftover := checkpointPrefix("t") + "leftover"
	bx := "<domainbackup mode='pull'><server transport='unix' socket='" + run + "/nbd.sock'/><disks><disk name='vda' backup='yes' type='file'><scratch file='" + run + "/s'/></disk></disks></domainbackup>"
	cx := "<domaincheckpoint><name>" + leftover + "</name><disks><disk name='vda' checkpoint='bitmap'/></disks></domaincheckpoint>"
	q := qmpClient(f)
	node, err := q.DeviceNode(f.ctx, "virtio-disk0")
	if err != nil {
		t.Fatal(err)
	}
	if err := q.Transaction(f.ctx, qmpAddBitmap(node, checkpointPrefix("t")+"orphan")); err != nil {
		t.Fatal(err)
	}
	if err := f.dom.Dom.BackupBegin(bx, cx, 0); err != nil {
		t.Fatal(err)
	}
	f.write("vda", 0, 4096, 1)
	res := f.backup(tg, LevelInc)
	all := strings.Join(res.Repairs, "; ")
	for _, want := range []string{"stale backup job", leftover, "orphan"} {
		if !strings.Contains(all, want) {
			t.Errorf("repairs %q do not mention %q", all, want)
		}
	}
	if !diskReport(t, res, "vda").Incremental {
		t.Fatal("not incremental after clearing leftovers")
	}
	// The full's checkpoint (anchor for differentials) and the new one.
	if cps := f.checkpoints(); len(cps) != 2 || contains(cps, leftover) || !contains(cps, cpOf(res.Manifest, "vda")) {
		t.Fatalf("checkpoints: %v", cps)
	}
}

// TestConcurrentBackupsOfOneDomain: two backups of one domain at once (the
// daemon and a CLI) are serialized by the domain's lock: the second waits,
// and neither takes the other's running job for a stale one.
func TestConcurrentBackupsOfOneDomain(t *testing.T) {
	f := newFixture(t, vm.DomainSpec{Disks: []vm.DiskSpec{{Size: 16 << 20, Fill: testenv.Fill{Random: 1, Hole: 3}}}, Start: true})
	tg := f.target("t")
	started := make(chan struct{})
	release := make(chan struct{})
	first := make(chan error, 1)
	go func() {
		_, err := f.e.Backup(f.ctx, BackupRequest{Domain: f.dom.Name, Target: tg, Level: LevelFull, afterBegin: func(context.Context) error {
			close(started)
			<-release
			return nil
		}})
		first <- err
	}()
	<-started
	second := make(chan error, 1)
	go func() {
		_, err := f.e.Backup(f.ctx, BackupRequest{Domain: f.dom.Name, Target: tg, Level: LevelInc})
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
	f := newFixture(t, vm.DomainSpec{Disks: []vm.DiskSpec{{Size: 8 << 20}}, Start: true,
		Devices: "    <graphics type='vnc' port='-1' autoport='yes' listen='127.0.0.1' passwd='s3cr3tvn'/>\n"})
	if secure, _ := f.dom.Dom.GetXMLDesc(libvirt.DOMAIN_XML_SECURE | libvirt.DOMAIN_XML_INACTIVE); !strings.Contains(secure, "s3cr3tvn") {
		t.Fatal("the test domain has no VNC password")
	}
	res := f.backup(f.target("t"), LevelFull)
	if strings.Contains(res.Manifest.DomainXML+res.Manifest.DomainXMLInactive, "s3cr3tvn") {
		t.Fatal("the VNC password was saved with the point")
	}
	if !strings.Contains(res.Manifest.DomainXMLInactive, "graphics type='vnc'") {
		t.Fatal("the graphics device itself was lost")
	}
}
