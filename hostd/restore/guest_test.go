package restore_test

import (
	"path/filepath"
	"strings"
	"testing"

	"libvirt.org/go/libvirt"

	"github.com/virtkeep/virtkeep/guestagent"
	"github.com/virtkeep/virtkeep/hostd/backup"
	"github.com/virtkeep/virtkeep/hostd/fixture"
	"github.com/virtkeep/virtkeep/hostd/restore"
	"github.com/virtkeep/virtkeep/testenv/vm"
)

// TestRestoreAsNewDomainBoots: a guest's point restored --as a new name
// defines a domain that boots; its agent answers and the file written
// before the backup is there. The original is untouched.
func TestRestoreAsNewDomainBoots(t *testing.T) {
	f, g := fixture.Guest(t, vm.GuestSpec{})
	tg := f.Target("t")
	if res, err := g.Exec(f.Ctx, "echo 'written before the backup' > /data/marker; sync"); err != nil || res.ExitCode != 0 {
		t.Fatalf("%+v %v", res, err)
	}
	bres, err := f.Driver.Backup(f.Ctx, backup.BackupRequest{Domain: g.Name, Target: tg, Consistency: backup.ConsistencyFS, RequireConsistency: true})
	if err != nil {
		t.Fatal(err)
	}
	name := g.Name + "-r"
	dir := filepath.Join(g.Dir, "restored")
	if _, err := f.Restorer.Domain(f.Ctx, tg.Repo, bres.Manifest.ID, restore.DomainRequest{Name: g.Name, Dir: dir}); err == nil {
		t.Fatal("restore over the original's name was accepted")
	}
	uuid, err := f.Restorer.Domain(f.Ctx, tg.Repo, bres.Manifest.ID, restore.DomainRequest{Name: name, Dir: dir, Verify: true})
	if err != nil {
		t.Fatal(err)
	}
	dom, err := f.Env.Conn.LookupDomainByUUIDString(uuid)
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
	if err := rg.WaitAgent(f.Ctx); err != nil {
		t.Fatal(err)
	}
	out, err := rg.Exec(f.Ctx, "cat /data/marker")
	if err != nil || out.Stdout != "written before the backup\n" {
		t.Fatalf("restored guest reads %q, %v", out.Stdout, err)
	}
	if !g.Active() {
		t.Fatal("the original guest stopped")
	}
}
