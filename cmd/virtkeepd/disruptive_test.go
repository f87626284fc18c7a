package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/virtkeep/virtkeep/hostd/api"
	"github.com/virtkeep/virtkeep/testenv"
	"github.com/virtkeep/virtkeep/testenv/vm"
)

// Tests named TestDisruptive* restart host-wide services (libvirtd): make
// test leaves them out of its parallel run and runs them alone after it.

// TestDisruptiveLibvirtdRestart: libvirtd restarted (every upgrade of
// libvirt does this) between jobs and in the middle of a backup. virtkeepd
// reconnects by itself, says so, and keeps serving: the backup caught in
// the middle ends (done or failed, cleanly), and the next backup succeeds
// without restarting virtkeepd.
func TestDisruptiveLibvirtdRestart(t *testing.T) {
	(&testenv.FaultRow{Fault: "libvirtd restarted between jobs and in the middle of a backup", Iterations: 2,
		Checked: "virtkeepd reconnects by itself (no restart), the job caught ends cleanly, the next backup succeeds and verifies, no libvirt job left"}).Record(t)
	env := vm.Libvirt(t)
	dom := env.NewDomain(t, vm.DomainSpec{Start: true, Disks: []vm.DiskSpec{{Size: 256 << 20, Fill: testenv.Fill{Random: 1}}}})
	bin, dbin := binaries(t)
	dir := dom.Dir
	cfg := filepath.Join(dir, "virtkeep.yaml")
	os.WriteFile(cfg, []byte(fmt.Sprintf("state_dir: %s/state\nlibvirt_uri: %s\nsocket: %s/d.sock\ntargets:\n  - {name: local, kind: local, path: %s/repo, bandwidth: 32MiB}\n",
		dir, vm.URI(), dir, dir)), 0o600)
	d := startDaemon(t, dbin, cfg)
	if code, _, errw := cli(t, bin, cfg, "backup", dom.Name, "--wait"); code != 0 {
		t.Fatalf("first backup: %d %s", code, errw)
	}

	env.RestartLibvirtd(t, dom)
	for deadline := time.Now().Add(30 * time.Second); !strings.Contains(d.log.String(), "connection to libvirt is lost: connecting again"); time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("virtkeepd did not notice libvirtd's restart: %s", d.log.String())
		}
	}
	if code, _, errw := cli(t, bin, cfg, "backup", dom.Name, "--wait"); code != 0 {
		t.Fatalf("backup after libvirtd restarted: %d %s\n%s", code, errw, d.log.String())
	}

	// In the middle of a backup.
	id := startBackup(t, bin, cfg, dom.Name)
	env.RestartLibvirtd(t, dom)
	if code, _, _ := cli(t, bin, cfg, "job", "log", id, "--follow"); code != 0 {
		t.Fatalf("job log --follow of the backup caught by the restart")
	}
	j := jobInfo(t, bin, cfg, id)
	t.Logf("the backup caught by libvirtd's restart: %s after %d attempts %s", j.State, j.Attempts, j.Error)
	if j.State != api.Succeeded && j.State != api.Failed {
		t.Fatalf("backup caught by the restart: %+v", j)
	}
	code, out, errw := cli(t, bin, cfg, "backup", dom.Name, "--wait")
	if code != 0 {
		t.Fatalf("backup after a restart mid-backup: %d %s\n%s", code, errw, d.log.String())
	}
	if code, out, errw := cli(t, bin, cfg, "verify", strings.TrimSpace(out), "--read-data"); code != 0 || !strings.Contains(out, ": ok") {
		t.Fatalf("verify: %d %s %s", code, out, errw)
	}
	if _, err := dom.Dom.BackupGetXMLDesc(0); err == nil {
		t.Fatal("a libvirt backup job is left on the domain")
	}
}
