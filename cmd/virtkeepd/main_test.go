package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"libvirt.org/go/libvirt"

	"github.com/virtkeep/virtkeep/guestagent"
	"github.com/virtkeep/virtkeep/testenv/vm"
)

func TestMain(m *testing.M) {
	if os.Getenv("VIRTKEEPD_SERVE") != "" {
		serveChild()
		os.Exit(0)
	}
	if os.Getenv("VIRTKEEPD_CHILD") == "freeze-and-hang" {
		freezeAndHang()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// freezeAndHang freezes a guest the way a backup does, says so, and waits
// to be killed: a daemon dying between freeze and thaw.
func freezeAndHang() {
	conn, err := libvirt.NewConnect(os.Getenv("VIRTKEEP_URI"))
	if err != nil {
		panic(err)
	}
	dom, err := conn.LookupDomainByUUIDString(os.Getenv("VIRTKEEP_UUID"))
	if err != nil {
		panic(err)
	}
	uri, _ := conn.GetURI()
	f := &guestagent.Freezer{Agent: guestagent.LibvirtAgent{Dom: dom},
		Journal: guestagent.Journal{Dir: filepath.Join(os.Getenv("VIRTKEEP_STATE"), "freeze")},
		Intent:  guestagent.Intent{Kind: "libvirt", URI: uri, Target: os.Getenv("VIRTKEEP_UUID")}}
	fz, err := f.Freeze(context.Background(), guestagent.Policy{Level: guestagent.FS, Require: true})
	if err != nil || fz.Level != guestagent.FS {
		panic(fmt.Sprint("freeze: ", err))
	}
	fmt.Println("frozen")
	time.Sleep(time.Hour)
}

func TestVersion(t *testing.T) {
	var out bytes.Buffer
	if code := run(context.Background(), []string{"--version"}, &out, &out); code != 0 || !strings.HasPrefix(out.String(), "virtkeepd ") {
		t.Fatalf("%d %q", code, out.String())
	}
}

// TestCleanupThawsAfterKill: a process freezes a guest and is killed before
// thawing it; virtkeepd --cleanup thaws the guest.
func TestCleanupThawsAfterKill(t *testing.T) {
	env := vm.Libvirt(t)
	g := env.NewGuest(t, vm.GuestSpec{})
	state := filepath.Join(g.Dir, "state")
	cfg := filepath.Join(g.Dir, "virtkeep.yaml")
	os.WriteFile(cfg, []byte(fmt.Sprintf("state_dir: %s\nlibvirt_uri: %s\ntargets: []\n", state, vm.URI())), 0o600)
	exe, _ := os.Executable()
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), "VIRTKEEPD_CHILD=freeze-and-hang", "VIRTKEEP_URI="+vm.URI(), "VIRTKEEP_UUID="+g.UUID, "VIRTKEEP_STATE="+state)
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, _ := bufio.NewReader(stdout).ReadString('\n')
	if strings.TrimSpace(line) != "frozen" {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		t.Fatalf("child said %q", line)
	}
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	fr := &guestagent.Freezer{Agent: g.Agent}
	if st, err := fr.Status(ctx); err != nil || st != "frozen" {
		t.Fatalf("after the kill the guest is %q (%v), want frozen", st, err)
	}
	var out, errw bytes.Buffer
	if code := run(ctx, []string{"--cleanup", "--config", cfg}, &out, &errw); code != 0 {
		t.Fatalf("cleanup: %d %s", code, errw.String())
	}
	if st, err := fr.Status(ctx); err != nil || st != "thawed" {
		t.Fatalf("after cleanup the guest is %q (%v), want thawed", st, err)
	}
	if pend, _ := (guestagent.Journal{Dir: filepath.Join(state, "freeze")}).Pending(); len(pend) != 0 {
		t.Fatalf("journal still holds %v", pend)
	}
}
