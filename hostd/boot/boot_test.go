package boot_test

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/virtkeep/virtkeep/guestagent"
	"github.com/virtkeep/virtkeep/hostd/backup"
	"github.com/virtkeep/virtkeep/hostd/boot"
	"github.com/virtkeep/virtkeep/hostd/fixture"
	"github.com/virtkeep/virtkeep/testenv/vm"
)

func TestMain(m *testing.M) {
	fixture.ServeChild()
	os.Exit(m.Run())
}

// TestBootFromPoint: instant recovery. The test guest boots from a point
// through NBD-backed overlays; a file written before the backup is read in
// it through the agent; then its disks migrate to local files while it runs.
func TestBootFromPoint(t *testing.T) {
	f, g := fixture.Guest(t, vm.GuestSpec{})
	tg := f.Target("t")
	if res, err := g.Exec(f.Ctx, "echo 'booted from the backup' > /data/marker; sync"); err != nil || res.ExitCode != 0 {
		t.Fatalf("%+v %v", res, err)
	}
	bres, err := f.Driver.Backup(f.Ctx, backup.BackupRequest{Domain: g.Name, Target: tg, Consistency: backup.ConsistencyFS})
	if err != nil {
		t.Fatal(err)
	}
	exe, _ := os.Executable()
	os.Setenv("VIRTKEEP_SERVE", filepath.Join(g.Dir, "repo-t")+","+bres.Manifest.ID+",*")
	defer os.Unsetenv("VIRTKEEP_SERVE")
	dir := filepath.Join(g.Dir, "boot")
	booted, err := f.Booter.Boot(f.Ctx, tg.Repo, boot.Request{Point: bres.Manifest.ID, Name: g.Name + "-b", Dir: dir, Serve: []string{exe, "-test.run=^$"}})
	if err != nil {
		t.Fatal(err)
	}
	dom, err := f.Env.Conn.LookupDomainByUUIDString(booted.UUID)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = dom.Destroy()
		dom.Free()
		_ = syscall.Kill(booted.ServePID, syscall.SIGTERM)
	})
	bg := &vm.Guest{Domain: &vm.Domain{Name: g.Name + "-b", Dom: dom}, Agent: guestagent.LibvirtAgent{Dom: dom}}
	if err := bg.WaitAgent(f.Ctx); err != nil {
		t.Fatal(err)
	}
	out, err := bg.Exec(f.Ctx, "cat /data/marker; echo written-after-boot > /data/after; sync")
	if err != nil || !strings.HasPrefix(out.Stdout, "booted from the backup\n") {
		t.Fatalf("booted guest reads %q, %v", out.Stdout, err)
	}
	if err := f.Booter.Migrate(f.Ctx, booted, dir); err != nil {
		t.Fatal(err)
	}
	xml, _ := dom.GetXMLDesc(0)
	if strings.Contains(xml, "nbd") {
		t.Fatalf("domain still uses NBD after migrate:\n%s", xml)
	}
	out, err = bg.Exec(f.Ctx, "cat /data/marker /data/after")
	if err != nil || out.Stdout != "booted from the backup\nwritten-after-boot\n" {
		t.Fatalf("after migrate the guest reads %q, %v", out.Stdout, err)
	}
}
