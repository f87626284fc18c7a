package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/virtkeep/virtkeep/guestagent"
	"github.com/virtkeep/virtkeep/hostd/api"
	"github.com/virtkeep/virtkeep/testenv"
	"github.com/virtkeep/virtkeep/testenv/vm"
)

var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

// binaries builds the real virtkeep and virtkeepd once per test run.
func binaries(t testing.TB) (cli, daemon string) {
	t.Helper()
	buildOnce.Do(func() {
		binDir, buildErr = os.MkdirTemp(testenv.BaseDir(), "bin-")
		if buildErr != nil {
			return
		}
		root, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}").Output()
		if err != nil {
			buildErr = err
			return
		}
		cmd := exec.Command("go", "build", "-o", binDir+"/", "./cmd/virtkeep", "./cmd/virtkeepd")
		cmd.Dir = strings.TrimSpace(string(root))
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build: %v: %s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return filepath.Join(binDir, "virtkeep"), filepath.Join(binDir, "virtkeepd")
}

// daemonProc is a running virtkeepd and what it told systemd.
type daemonProc struct {
	cmd    *exec.Cmd
	log    *syncBuffer
	notify *net.UnixConn
	mu     sync.Mutex
	notes  []string
	done   chan struct{}
	code   int
}

func startDaemon(t testing.TB, bin, cfg string) *daemonProc {
	t.Helper()
	return startDaemonAs(t, nil, nil, bin, cfg)
}

// startDaemonAs starts virtkeepd under the command wrap (which ends by
// running the command line it is given) with env added to its environment.
func startDaemonAs(t testing.TB, wrap, env []string, bin, cfg string) *daemonProc {
	t.Helper()
	sock := filepath.Join(filepath.Dir(cfg), fmt.Sprintf("notify-%d.sock", time.Now().UnixNano()%1e6))
	ln, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	d := &daemonProc{log: &syncBuffer{}, notify: ln, done: make(chan struct{})}
	argv := append(slices.Clone(wrap), bin, "--config", cfg)
	d.cmd = exec.Command(argv[0], argv[1:]...)
	d.cmd.Env = append(append(os.Environ(), env...), "NOTIFY_SOCKET="+sock)
	d.cmd.Stdout, d.cmd.Stderr = d.log, d.log
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := ln.Read(buf)
			if err != nil {
				return
			}
			d.mu.Lock()
			d.notes = append(d.notes, string(buf[:n]))
			d.mu.Unlock()
		}
	}()
	go func() {
		_ = d.cmd.Wait()
		d.code = d.cmd.ProcessState.ExitCode()
		close(d.done)
		ln.Close()
		os.Remove(sock)
	}()
	t.Cleanup(func() { d.stop(t, syscall.SIGTERM, time.Minute) })
	if !d.await("READY=1", time.Minute) {
		t.Fatalf("virtkeepd not ready: %s", d.log.String())
	}
	return d
}

func (d *daemonProc) said(want string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.ContainsFunc(d.notes, func(n string) bool { return strings.Contains(n, want) })
}

func (d *daemonProc) await(want string, max time.Duration) bool {
	for deadline := time.Now().Add(max); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if d.said(want) {
			return true
		}
		select {
		case <-d.done:
			return d.said(want)
		default:
		}
	}
	return false
}

// stop signals the daemon and waits; it returns how long it took.
func (d *daemonProc) stop(t testing.TB, sig syscall.Signal, max time.Duration) time.Duration {
	start := time.Now()
	select {
	case <-d.done:
		return 0
	default:
	}
	_ = d.cmd.Process.Signal(sig)
	select {
	case <-d.done:
	case <-time.After(max):
		_ = d.cmd.Process.Kill()
		<-d.done
		t.Errorf("virtkeepd did not stop within %v after %v: %s", max, sig, d.log.String())
	}
	return time.Since(start)
}

// cli runs the real virtkeep binary.
func cli(t testing.TB, bin, cfg string, args ...string) (int, string, string) {
	t.Helper()
	var out, errw bytes.Buffer
	cmd := exec.Command(bin, append([]string{"--config", cfg}, args...)...)
	cmd.Stdout, cmd.Stderr = &out, &errw
	_ = cmd.Run()
	return cmd.ProcessState.ExitCode(), out.String(), errw.String()
}

func jobInfo(t testing.TB, bin, cfg, id string) api.Job {
	t.Helper()
	code, out, errw := cli(t, bin, cfg, "--json", "job", "info", id)
	var j api.Job
	if code != 0 || json.Unmarshal([]byte(out), &j) != nil {
		t.Fatalf("job info %s: %d %s %s", id, code, out, errw)
	}
	return j
}

// startBackup queues a full backup without waiting and returns once it
// has copied data.
func startBackup(t *testing.T, bin, cfg, dom string) string {
	t.Helper()
	code, out, errw := cli(t, bin, cfg, "backup", dom, "--level", "full", "--consistency", "fs")
	id := strings.TrimSpace(out)
	if code != 0 || id == "" {
		t.Fatalf("backup: %d %q %s", code, out, errw)
	}
	for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(20 * time.Millisecond) {
		j := jobInfo(t, bin, cfg, id)
		if j.Progress.Done > 0 && j.State == api.Running {
			return id
		}
		if j.State.Ended() || time.Now().After(deadline) {
			t.Fatalf("backup %s never copied data while running: %+v", id, j)
		}
	}
}

func checkpoints(t *testing.T, g *vm.Guest) []string {
	t.Helper()
	cps, err := g.Dom.ListAllCheckpoints(0)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, c := range cps {
		n, _ := c.GetName()
		out = append(out, n)
		c.Free()
	}
	slices.Sort(out)
	return out
}

// leftNothing: no libvirt backup job, no new checkpoint, no scratch
// directory, and the guest thawed.
func leftNothing(t *testing.T, what string, g *vm.Guest, state string, before []string) {
	t.Helper()
	if x, err := g.Dom.BackupGetXMLDesc(0); err == nil {
		t.Errorf("%s: a libvirt backup job is left: %s", what, x)
	}
	if got := checkpoints(t, g); !slices.Equal(got, before) {
		t.Errorf("%s: checkpoints %v, were %v", what, got, before)
	}
	if bs, _ := filepath.Glob(filepath.Join(state, "run", "b-*")); len(bs) > 0 {
		t.Errorf("%s: scratch directories left: %v", what, bs)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if st, err := (&guestagent.Freezer{Agent: g.Agent}).Status(ctx); err != nil || st != "thawed" {
		t.Errorf("%s: guest is %q (%v), want thawed", what, st, err)
	}
}

// TestDaemonEndToEnd drives the real virtkeepd and virtkeep binaries
// against a guest with the agent and a 1 GiB disk of random data.
func TestDaemonEndToEnd(t *testing.T) {
	testenv.RequireCommands(t, "script")
	env := vm.Libvirt(t)
	g := env.NewGuest(t, vm.GuestSpec{Files: map[string]string{"hello.txt": "through the daemon\n"}})
	if _, err := g.AttachDisk(context.Background(), vm.DiskSpec{Target: "vdb", Size: 1 << 30, Fill: testenv.Fill{Random: 1}}); err != nil {
		t.Fatal(err)
	}
	bin, dbin := binaries(t)
	dir := g.Dir
	state := filepath.Join(dir, "state")
	cfg := filepath.Join(dir, "virtkeep.yaml")
	os.WriteFile(cfg, []byte(fmt.Sprintf("state_dir: %s\nlibvirt_uri: %s\nsocket: %s/d.sock\nshutdown_timeout: 30s\nboot_file_dirs: [%s]\ntargets:\n  - {name: local, kind: local, path: %s/repo}\n%s",
		state, vm.URI(), dir, vm.GuestDir(), dir, fmt.Sprintf(`policies:
  - name: hooked
    domains: [%s]
    schedule: "0 3 1 1 *"
    consistency: app
    require_consistency: true
    hooks:
      pre_freeze: [{path: /bin/sh, args: [-c, "echo hello-from-hook"], timeout: 20s}]
      post_thaw: [{path: /bin/sh, args: [-c, "echo bye-from-hook"]}]
    targets: [local]
    retention: [{keep_last: 1}]
`, g.Name))), 0o600)
	d := startDaemon(t, dbin, cfg)

	// With the daemon up, an in-process CLI is refused by the host lock.
	code, _, errw := cli(t, bin, cfg, "--local", "backup", g.Name)
	if code != exitBusyCode || !strings.Contains(errw, "virtkeepd (pid") {
		t.Fatalf("--local with the daemon running: %d %s", code, errw)
	}
	if code, out, _ := cli(t, bin, cfg, "version"); code != 0 || !strings.Contains(out, "virtkeepd") || strings.Contains(out, "not running") {
		t.Fatalf("version: %d %s", code, out)
	}

	// A backup through the socket, with its progress on a terminal.
	var tty bytes.Buffer
	sc := exec.Command("script", "-qefc", strings.Join([]string{bin, "--config", cfg, "backup", g.Name, "--wait", "--consistency", "fs"}, " "), "/dev/null")
	sc.Stdout, sc.Stderr = &tty, &tty
	if err := sc.Run(); err != nil {
		t.Fatalf("backup on a terminal: %v: %s", err, tty.String())
	}
	screen := tty.String()
	if !strings.Contains(screen, "% of 1.0 GiB") || !strings.Contains(screen, "/s") {
		t.Fatalf("no progress bar with rate on the terminal: %q", screen)
	}
	ids := regexp.MustCompile(`[0-9]{8}T[0-9]{6}Z-[0-9a-f]{8}`).FindAllString(screen, -1)
	if len(ids) != 1 {
		t.Fatalf("backup --wait printed %q", screen)
	}
	first := ids[0]
	code, out, _ := cli(t, bin, cfg, "--json", "jobs")
	var js []api.Job
	if code != 0 || json.Unmarshal([]byte(out), &js) != nil || len(js) != 1 || js[0].State != api.Succeeded || js[0].Result.Point.ID != first {
		t.Fatalf("jobs: %d %s (point %q)", code, out, first)
	}
	if code, out, _ := cli(t, bin, cfg, "job", "log", js[0].ID); code != 0 || !strings.Contains(out, "backup done") {
		t.Fatalf("job log: %d %s", code, out)
	}
	// list answers from the catalog: with the repository moved away.
	if err := os.Rename(filepath.Join(dir, "repo"), filepath.Join(dir, "repo.away")); err != nil {
		t.Fatal(err)
	}
	code, listed, _ := cli(t, bin, cfg, "--json", "list")
	os.Remove(filepath.Join(dir, "repo")) // the empty directory opening the target made
	if err := os.Rename(filepath.Join(dir, "repo.away"), filepath.Join(dir, "repo")); err != nil {
		t.Fatal(err)
	}
	var ps []api.Point
	if code != 0 || json.Unmarshal([]byte(listed), &ps) != nil || len(ps) != 1 || ps[0].ID != first {
		t.Fatalf("list without the repository: %d %s", code, listed)
	}

	// A mount and a boot through the daemon: its sessions, held by it.
	mnt := filepath.Join(dir, "mnt")
	if code, out, errw := cli(t, bin, cfg, "mount", first, mnt, "--disk", "vda"); code != 0 {
		t.Fatalf("mount: %d %s %s", code, out, errw)
	}
	if got, err := os.ReadFile(filepath.Join(mnt, "disk", "hello.txt")); err != nil || string(got) != "through the daemon\n" {
		t.Fatalf("file in the mount: %q %v", got, err)
	}
	booted := g.Name + "-b"
	t.Cleanup(func() {
		if d, err := env.Conn.LookupDomainByName(booted); err == nil {
			d.Destroy()
			d.Free()
		}
	})
	if code, out, errw := cli(t, bin, cfg, "boot", first, "--as", booted); code != 0 {
		t.Fatalf("boot: %d %s %s", code, out, errw)
	}
	var ss []api.Session
	if code, out, _ := cli(t, bin, cfg, "--json", "sessions"); code != 0 || json.Unmarshal([]byte(out), &ss) != nil || len(ss) != 2 ||
		ss[0].Kind != api.SessionMount || ss[1].Kind != api.SessionBoot || ss[0].Holder != "virtkeepd" || ss[1].Holder != "virtkeepd" {
		t.Fatalf("sessions: %d %s", code, out)
	}
	if d, err := env.Conn.LookupDomainByName(booted); err != nil {
		t.Fatalf("booted domain: %v", err)
	} else if active, _ := d.IsActive(); !active {
		t.Fatal("the booted domain is not running")
	} else {
		d.Free()
	}
	if code, _, errw := cli(t, bin, cfg, "sessions", "end", ss[1].ID); code != 0 {
		t.Fatalf("sessions end: %d %s", code, errw)
	}
	if d, err := env.Conn.LookupDomainByName(booted); err == nil {
		d.Free()
		t.Fatal("the booted domain is left after its session ended")
	}

	// A policy's in-guest hooks run around the freeze, their output in
	// the backup's log.
	if code, out, errw := cli(t, bin, cfg, "run", "hooked", "--wait"); code != 0 || strings.TrimSpace(out) != g.Name+": ok" {
		t.Fatalf("run hooked: %d %q %s", code, out, errw)
	}
	code, out, _ = cli(t, bin, cfg, "--json", "jobs")
	js = nil
	if code != 0 || json.Unmarshal([]byte(out), &js) != nil {
		t.Fatalf("jobs: %d %s", code, out)
	}
	hooked := ""
	for _, j := range js {
		if j.Kind == api.KindBackup && j.Policy == "hooked" {
			hooked = j.ID
			if j.Result == nil || j.Result.Point.Consistency != "app" {
				t.Errorf("hooked backup: %+v", j.Result)
			}
		}
	}
	if code, out, _ := cli(t, bin, cfg, "job", "log", hooked); code != 0 || !strings.Contains(out, "hello-from-hook") || !strings.Contains(out, "bye-from-hook") {
		t.Fatalf("the hooks' output is not in the backup's log: %d %s", code, out)
	}
	// The run's prune (keep_last 1) keeps the point the mount reads: the
	// mount's server holds it in the repository, and the mount still reads.
	if code, out, _ := cli(t, bin, cfg, "--json", "info", first); code != 0 || !strings.Contains(out, first) {
		t.Fatalf("the mounted point after the run's prune: %d %s", code, out)
	}
	if code, out, _ := cli(t, bin, cfg, "--json", "prune", "--dry-run"); code != 0 || !strings.Contains(out, "held by a session of virtkeepd") {
		t.Fatalf("prune --dry-run does not say the mounted point is held: %d %s", code, out)
	}
	if got, err := os.ReadFile(filepath.Join(mnt, "disk", "hello.txt")); err != nil || string(got) != "through the daemon\n" {
		t.Fatalf("file in the mount after the prune: %q %v", got, err)
	}
	before := checkpoints(t, g)

	// A job cancelled mid-run leaves the guest and the target as they were.
	id := startBackup(t, bin, cfg, g.Name)
	if code, _, errw := cli(t, bin, cfg, "job", "cancel", id); code != 0 {
		t.Fatalf("job cancel: %d %s", code, errw)
	}
	if code, _, _ := cli(t, bin, cfg, "job", "log", id, "--follow"); code != 0 {
		t.Fatal("job log --follow of a cancelled job")
	}
	if j := jobInfo(t, bin, cfg, id); j.State != api.Cancelled {
		t.Fatalf("cancelled job: %+v", j)
	}
	leftNothing(t, "cancel", g, state, before)
	if t.Failed() {
		t.Fatalf("daemon log:\n%s", d.log.String())
	}

	// SIGTERM during a backup: the job is cancelled, the daemon says what
	// it stops and exits 0 within its deadline.
	id = startBackup(t, bin, cfg, g.Name)
	took := d.stop(t, syscall.SIGTERM, time.Minute)
	testenv.Report(t, "virtkeepd stopped %v after SIGTERM during a backup", took.Round(time.Millisecond))
	if d.code != 0 || !d.said("STOPPING=1") || !d.said("STATUS=stopping: cancelling 1 jobs: backup "+g.Name) || took > 30*time.Second {
		t.Fatalf("SIGTERM: exit %d after %v, told systemd %q; log:\n%s", d.code, took, d.notes, d.log.String())
	}
	leftNothing(t, "SIGTERM", g, state, before)
	// The daemon's mount went with it.
	if mi, _ := os.ReadFile("/proc/self/mountinfo"); strings.Contains(string(mi), mnt) {
		t.Fatalf("the daemon's mount is left after it stopped:\n%s", mi)
	}
	d = startDaemon(t, dbin, cfg)
	if code, out, _ := cli(t, bin, cfg, "--json", "sessions"); code != 0 || strings.TrimSpace(out) != "[]" {
		t.Fatalf("sessions after a restart: %d %s", code, out)
	}
	if j := jobInfo(t, bin, cfg, id); j.State != api.Cancelled {
		t.Fatalf("job cancelled by SIGTERM, after a restart: %+v", j)
	}

	// SIGKILL mid-backup: the restart marks the job failed, ends the
	// libvirt job, and the next backup works.
	id = startBackup(t, bin, cfg, g.Name)
	d.stop(t, syscall.SIGKILL, time.Minute)
	if _, err := g.Dom.BackupGetXMLDesc(0); err != nil {
		t.Fatalf("after SIGKILL no libvirt job is left to repair: %v", err)
	}
	d = startDaemon(t, dbin, cfg)
	j := jobInfo(t, bin, cfg, id)
	if j.State != api.Failed || !strings.Contains(j.Error, "stopped before it ended") {
		t.Fatalf("job of the killed daemon: %+v", j)
	}
	if _, err := g.Dom.BackupGetXMLDesc(0); err == nil {
		t.Fatal("the restarted daemon left the killed backup's libvirt job")
	}
	if bs, _ := filepath.Glob(filepath.Join(state, "run", "b-*")); len(bs) > 0 {
		t.Fatalf("scratch left after the restart: %v", bs)
	}
	code, out, errw = cli(t, bin, cfg, "backup", g.Name, "--wait")
	if code != 0 || !strings.HasPrefix(strings.TrimSpace(out), "20") {
		t.Fatalf("backup after the restart: %d %s %s", code, out, errw)
	}

	// catalog rebuild after catalog.db is deleted gives the same list.
	_, want, _ := cli(t, bin, cfg, "--json", "list")
	d.stop(t, syscall.SIGTERM, time.Minute)
	for _, f := range []string{"catalog.db", "catalog.db-wal", "catalog.db-shm"} {
		os.Remove(filepath.Join(state, f))
	}
	d = startDaemon(t, dbin, cfg)
	if code, _, errw := cli(t, bin, cfg, "catalog", "rebuild"); code != 0 {
		t.Fatalf("catalog rebuild: %d %s", code, errw)
	}
	if _, got, _ := cli(t, bin, cfg, "--json", "list"); got != want || strings.Count(want, `"id"`) != 3 {
		t.Fatalf("list after the rebuild:\n%s\nwant:\n%s", got, want)
	}
	d.stop(t, syscall.SIGTERM, time.Minute)
	// With the daemon stopped the same commands work in process.
	if code, got, errw := cli(t, bin, cfg, "--json", "list"); code != 0 || got != want {
		t.Fatalf("list in process: %d %s %s", code, got, errw)
	}
}

// exitBusyCode is virtkeep's exit code for busy (docs/CLI.md).
const exitBusyCode = 6
