package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"libvirt.org/go/libvirt"

	"github.com/virtkeep/virtkeep/guestagent"
	"github.com/virtkeep/virtkeep/hostd/fixture"
	"github.com/virtkeep/virtkeep/testenv"
	"github.com/virtkeep/virtkeep/testenv/vm"
)

func TestMain(m *testing.M) {
	fixture.ServeChild() // the NBD server a mount starts
	if os.Getenv("VIRTKEEPD_CHILD") == "freeze-and-hang" {
		freezeAndHang()
		os.Exit(0)
	}
	code := m.Run()
	if binDir != "" { // the binaries the end-to-end test built
		os.RemoveAll(binDir)
	}
	os.Exit(code)
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
	os.WriteFile(cfg, []byte(fmt.Sprintf("state_dir: %s\nlibvirt_uri: %s\nsocket: %s/d.sock\ntargets: [{name: t, kind: local, path: %s/repo}]\n", state, vm.URI(), g.Dir, g.Dir)), 0o600)
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

// TestDaemonThawsAfterKill: with virtkeepd running, a process that froze
// a guest is left alone while it lives and SIGKILLed: the daemon thaws the
// guest within seconds. A damaged journal record does not stop it, and the
// record of a domain that no longer exists is retired with a log line.
func TestDaemonThawsAfterKill(t *testing.T) {
	env := vm.Libvirt(t)
	g := env.NewGuest(t, vm.GuestSpec{})
	state := filepath.Join(g.Dir, "state")
	journal := guestagent.Journal{Dir: filepath.Join(state, "freeze")}
	gone := guestagent.Intent{Kind: "libvirt", URI: vm.URI(), Target: "00000000-0000-4000-8000-00000000dead", Name: "vk-deleted", Since: time.Now(), PID: 999999}
	if err := journal.Record(gone); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(journal.Dir, "damaged.json"), []byte(`{"kind": "libvirt", "tar`), 0o600)
	cfg := filepath.Join(g.Dir, "virtkeep.yaml")
	os.WriteFile(cfg, []byte(fmt.Sprintf("state_dir: %s\nlibvirt_uri: %s\nsocket: %s/d.sock\ntargets: [{name: t, kind: local, path: %s/repo}]\n", state, vm.URI(), g.Dir, g.Dir)), 0o600)
	t.Setenv("NOTIFY_SOCKET", "")
	ctx, stop := context.WithCancel(context.Background())
	var out, errw syncBuffer
	done := make(chan int, 1)
	go func() { done <- run(ctx, []string{"--config", cfg}, &out, &errw) }()
	defer func() {
		stop()
		<-done
	}()

	exe, _ := os.Executable()
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), "VIRTKEEPD_CHILD=freeze-and-hang", "VIRTKEEP_URI="+vm.URI(), "VIRTKEEP_UUID="+g.UUID, "VIRTKEEP_STATE="+state)
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	if line, _ := bufio.NewReader(stdout).ReadString('\n'); strings.TrimSpace(line) != "frozen" {
		t.Fatalf("child said %q", line)
	}
	sctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	fr := &guestagent.Freezer{Agent: g.Agent}
	time.Sleep(2500 * time.Millisecond) // the daemon looks every second
	if st, err := fr.Status(sctx); err != nil || st != "frozen" {
		t.Fatalf("with its freezer alive the guest is %q (%v): the daemon thawed it under a live process", st, err)
	}
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	killed := time.Now()
	for {
		st, err := fr.Status(sctx)
		if err == nil && st == "thawed" {
			break
		}
		if time.Since(killed) > 10*time.Second {
			t.Fatalf("10 s after the kill the guest is %q (%v); daemon: %s", st, err, errw.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	testenv.Report(t, "guest thawed %v after its freezer was SIGKILLed", time.Since(killed).Round(10*time.Millisecond))
	// The record goes once the thaw is confirmed, a moment after the guest
	// says thawed.
	for {
		pend, err := journal.Pending()
		if len(pend) == 0 && errors.Is(err, guestagent.ErrDamagedRecord) {
			break
		}
		if time.Since(killed) > 15*time.Second {
			t.Fatalf("journal after recovery: %v %v", pend, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if log := errw.String(); !strings.Contains(log, "no longer exists") || !strings.Contains(log, "damaged.json") {
		t.Fatalf("daemon log does not name the retired and the damaged record:\n%s", log)
	}
}

// syncBuffer is a bytes.Buffer the daemon's goroutines write while the
// test reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
