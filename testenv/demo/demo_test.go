//go:build demo

// Package demo is make demo: virtkeep's main job shown as an operator would
// do it, through virtkeepd, on a VM that boots (the test guest with
// qemu-guest-agent). It is a test (go test -tags demo) only because the
// test guest is made by testenv; every step runs the real binaries and is
// printed as typed and seen.
package demo

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/virtkeep/virtkeep/guestagent"
	"github.com/virtkeep/virtkeep/testenv/vm"
)

func say(format string, args ...any) { fmt.Printf("\n\033[1m== "+format+"\033[0m\n", args...) }

// run prints and runs a command, showing its output; it fails the demo
// when the command does.
func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	fmt.Printf("$ %s %s\n", filepath.Base(name), strings.Join(args, " "))
	out, err := exec.Command(name, args...).CombinedOutput()
	fmt.Print(string(out))
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return string(out)
}

func inGuest(t *testing.T, a guestagent.LibvirtAgent, script string) string {
	t.Helper()
	fmt.Printf("(in the guest) $ %s\n", script)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res, err := guestagent.Exec(ctx, a, "/bin/sh", []string{"-c", script})
	if err != nil {
		t.Fatalf("in the guest: %v", err)
	}
	fmt.Print(res.Stdout)
	return res.Stdout
}

func TestDemo(t *testing.T) {
	start := time.Now()
	root, _ := filepath.Abs("../..")
	bin, dbin := filepath.Join(root, "bin", "virtkeep"), filepath.Join(root, "bin", "virtkeepd")
	for _, b := range []string{bin, dbin} {
		if _, err := os.Stat(b); err != nil {
			t.Fatalf("%v (make demo builds it)", err)
		}
	}
	say("a VM that boots: the test guest, with qemu-guest-agent and a data disk")
	env := vm.Libvirt(t)
	g := env.NewGuest(t, vm.GuestSpec{Files: map[string]string{"report.txt": "quarterly numbers: 42\n"}})
	fmt.Printf("domain %s is running; its agent answers\n", g.Name)

	dir := g.Dir
	cfg := filepath.Join(dir, "virtkeep.yaml")
	due := time.Now().UTC().Add(time.Minute)
	if due.Second() > 40 {
		due = due.Add(time.Minute)
	}
	os.WriteFile(cfg, []byte(fmt.Sprintf(`version: 1
state_dir: %[1]s/state
socket: %[1]s/virtkeepd.sock
time_zone: UTC
boot_file_dirs: [%[2]s]
targets:
  - {name: local, kind: local, path: %[1]s/repo}
policies:
  - name: demo
    domains: [%[3]s]
    schedule: "%[4]d %[5]d * * *"
    consistency: fs
    targets: [local]
    retention:
      - {keep_last: 3}
`, dir, vm.GuestDir(), g.Name, due.Minute(), due.Hour())), 0o600)
	V := func(args ...string) string { return run(t, bin, append([]string{"--config", cfg}, args...)...) }

	say("start virtkeepd (under systemd: systemctl start virtkeepd)")
	fmt.Printf("$ virtkeepd --config %s &\n", cfg)
	d := exec.Command(dbin, "--config", cfg)
	logf, _ := os.Create(filepath.Join(dir, "virtkeepd.log"))
	d.Stdout, d.Stderr = logf, logf
	if err := d.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Process.Signal(syscall.SIGTERM); _ = d.Wait() })
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(100 * time.Millisecond) {
		if exec.Command(bin, "--config", cfg, "version").Run() == nil {
			if out, _ := exec.Command(bin, "--config", cfg, "version").Output(); strings.Contains(string(out), "virtkeepd") {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("virtkeepd did not answer")
		}
	}
	V("version")

	say("an application-consistent full backup: the guest is frozen only while the backup starts")
	full := strings.TrimSpace(V("backup", g.Name, "--level", "full", "--consistency", "app", "--wait"))
	V("info", full)

	say("files change in the guest, then an incremental reads only what changed")
	inGuest(t, g.Agent, "echo 'new order #1001' >> /data/orders.txt; sync; cat /data/orders.txt")
	V("backup", g.Name, "--consistency", "fs", "--wait")
	V("list", g.Name)

	say("verify every chunk of the repository")
	V("verify", "--all", "--read-data")

	say("file-level restore: mount the latest point")
	mnt := filepath.Join(dir, "mnt")
	V("mount", g.Name+"@latest", mnt)
	run(t, "cat", filepath.Join(mnt, "disk", "orders.txt"))
	V("umount", mnt)

	say("restore the latest point as a new VM, which boots and has the same file")
	as := g.Name + "-restored"
	t.Cleanup(func() {
		if dom, err := env.Conn.LookupDomainByName(as); err == nil {
			_ = dom.Destroy()
			_ = dom.UndefineFlags(0)
			dom.Free()
		}
		os.RemoveAll(filepath.Join(dir, "state", "images", as))
	})
	V("restore", g.Name+"@latest", "--as", as)
	run(t, "virsh", "-c", vm.URI(), "start", as)
	rdom, err := env.Conn.LookupDomainByName(as)
	if err != nil {
		t.Fatal(err)
	}
	defer rdom.Free()
	ra := guestagent.LibvirtAgent{Dom: rdom}
	for deadline := time.Now().Add(2 * time.Minute); ra.Command(context.Background(), "guest-ping", nil, nil) != nil; time.Sleep(time.Second) {
		if time.Now().After(deadline) {
			t.Fatal("the restored VM's agent did not answer")
		}
	}
	inGuest(t, ra, "cat /data/orders.txt /data/report.txt")
	run(t, "virsh", "-c", vm.URI(), "destroy", as)

	say("a policy fires on its own (due at %s UTC)", due.Format("15:04"))
	V("policies")
	fmt.Println("(waiting for the policy's run)")
	for deadline := time.Now().Add(3 * time.Minute); ; time.Sleep(2 * time.Second) {
		out, _ := exec.Command(bin, "--config", cfg, "jobs").Output()
		if strings.Contains(string(out), "policy") && strings.Contains(string(out), "succeeded") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the policy did not run:\n%s", out)
		}
	}
	V("jobs")
	V("policies")
	fmt.Printf("\ndemo done in %s\n", time.Since(start).Round(time.Second))
}
