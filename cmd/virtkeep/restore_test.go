package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/virtkeep/virtkeep/hostd/api"
	"github.com/virtkeep/virtkeep/testenv"
	"github.com/virtkeep/virtkeep/testenv/vm"
)

// TestMain lets the test binary be the virtkeep binary when mount and boot
// start it as their NBD server (virtkeep --config FILE serve ...).
func TestMain(m *testing.M) {
	if len(os.Args) > 2 && os.Args[1] == "--config" {
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
		stop()
		os.Exit(code)
	}
	os.Exit(m.Run())
}

// writeConfig's target is compressed (zstd) and encrypted, so every CLI
// restore, export, serve, mount and boot test reads encrypted points.
func writeConfig(t *testing.T, dir string) string {
	t.Helper()
	cfg := filepath.Join(dir, "virtkeep.yaml")
	os.MkdirAll(filepath.Join(dir, "st"), 0o755)
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf("version: 1\nstate_dir: %s/st\nlibvirt_uri: %s\ntargets:\n  - {name: local, kind: local, path: %s/repo, key_file: %s/repo.key}\n", dir, vm.URI(), dir, dir)), 0o600); err != nil {
		t.Fatal(err)
	}
	return cfg
}

// TestRestoreExportServeMountCLI drives restore, export, serve, verify,
// mount and umount through the CLI against a shut-off domain whose second
// disk holds an ext4 filesystem.
func TestRestoreExportServeMountCLI(t *testing.T) {
	testenv.RequireCommands(t, "nbdinfo", "nbdfuse", "mkfs.ext4")
	env := vm.Libvirt(t)
	dom := env.NewDomain(t, vm.DomainSpec{Disks: []vm.DiskSpec{{Size: 16 << 20}, {Format: "raw", Size: 16 << 20}}})
	cfg := writeConfig(t, dom.Dir)
	vdb, _ := dom.Disk("vdb")
	files := filepath.Join(dom.Dir, "files")
	os.MkdirAll(files, 0o755)
	os.WriteFile(filepath.Join(files, "note.txt"), []byte("restore me\n"), 0o644)
	os.Remove(vdb.Path)
	f, _ := os.Create(vdb.Path)
	f.Truncate(16 << 20)
	f.Close()
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-d", files, vdb.Path).CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	code, out, errw := runCLI(t, "--config", cfg, "backup", dom.Name)
	if code != 0 {
		t.Fatalf("backup: %d %s", code, errw)
	}
	point := strings.TrimSpace(out)
	vda, _ := dom.Disk("vda")
	ctx := context.Background()
	want, _ := testenv.ImageSHA256(ctx, vda.Path, "qcow2")

	dir := filepath.Join(dom.Dir, "restored")
	code, out, errw = runCLI(t, "--config", cfg, "restore", dom.Name+"@latest", "--to", dir, "--disk", "vda", "--verify")
	if code != 0 || strings.TrimSpace(out) != filepath.Join(dir, "vda.qcow2") {
		t.Fatalf("restore: %d %q %s", code, out, errw)
	}
	if got, _ := testenv.ImageSHA256(ctx, filepath.Join(dir, "vda.qcow2"), "qcow2"); got != want {
		t.Fatal("restored vda differs")
	}
	code, _, errw = runCLI(t, "--config", cfg, "restore", point, "--to", dir, "--disk", "vda")
	if code != exitFailure || !strings.Contains(errw, "--force") {
		t.Fatalf("restore over an existing file: %d %s", code, errw)
	}
	code, _, errw = runCLI(t, "--config", cfg, "restore", point, "--to", dir, "--disk", "vdq")
	if code != exitNotFound || !strings.Contains(errw, "vdq") {
		t.Fatalf("restore of an unknown disk: %d %s", code, errw)
	}
	raw := filepath.Join(dom.Dir, "vda.raw")
	if code, _, errw := runCLI(t, "--config", cfg, "export", point, "--disk", "vda", "--format", "raw", "-o", raw); code != 0 {
		t.Fatalf("export: %d %s", code, errw)
	}
	if got, _ := testenv.ImageSHA256(ctx, raw, "raw"); got != want {
		t.Fatal("exported vda differs")
	}
	for _, args := range [][]string{{"verify", point, "--read-data"}, {"verify", "--all", "--read-data"}} {
		if code, out, errw := runCLI(t, append([]string{"--config", cfg}, args...)...); code != 0 {
			t.Fatalf("%v: %d %s %s", args, code, out, errw)
		}
	}
	// serve: prints a URI nbdinfo can read; stops on interrupt.
	exe, _ := os.Executable()
	srv := exec.Command(exe, "--config", cfg, "serve", point, "--disk", "vda", "--socket", filepath.Join(dom.Dir, "s.sock"))
	so, _ := srv.StdoutPipe()
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	uri, _ := bufio.NewReader(so).ReadString('\n')
	info, err := exec.Command("nbdinfo", "--json", strings.TrimSpace(uri)).Output()
	var ni struct {
		Exports []struct {
			Size int64 `json:"export-size"`
		} `json:"exports"`
	}
	if err != nil || json.Unmarshal(info, &ni) != nil || len(ni.Exports) != 1 || ni.Exports[0].Size != 16<<20 {
		t.Fatalf("nbdinfo %s: %v %s", uri, err, info)
	}
	srv.Process.Signal(os.Interrupt)
	go io.Copy(io.Discard, so)
	if err := srv.Wait(); err != nil {
		t.Fatalf("serve after interrupt: %v", err)
	}
	// mount / umount.
	mnt := filepath.Join(dom.Dir, "mnt")
	code, out, errw = runCLI(t, "--config", cfg, "mount", point, mnt, "--disk", "vdb")
	if code != 0 {
		t.Fatalf("mount: %d %s", code, errw)
	}
	got, err := os.ReadFile(filepath.Join(mnt, "disk", "note.txt"))
	if err != nil || string(got) != "restore me\n" {
		t.Fatalf("mounted file: %q %v (%s)", got, err, out)
	}
	if code, _, errw := runCLI(t, "--config", cfg, "umount", mnt); code != 0 {
		t.Fatalf("umount: %d %s", code, errw)
	}
	mi, _ := os.ReadFile("/proc/self/mountinfo")
	if strings.Contains(string(mi), mnt) {
		t.Fatal("still mounted")
	}
	time.Sleep(100 * time.Millisecond)
	if out, _ := exec.Command("pgrep", "-f", "serve "+point).Output(); len(out) > 0 {
		t.Fatalf("serve process left: %s", out)
	}
}

// TestRemoteTargetsCLI: the CLI backs up to SFTP and S3 targets named in
// the configuration file, lists both, and restores and exports from each.
func TestRemoteTargetsCLI(t *testing.T) {
	sshd := testenv.SSHD(t)
	s3srv := testenv.S3(t)
	env := vm.Libvirt(t)
	dom := env.NewDomain(t, vm.DomainSpec{Disks: []vm.DiskSpec{{Size: 16 << 20}}, Start: true})
	dir := dom.Dir
	secret := filepath.Join(dir, "s3.secret")
	os.WriteFile(secret, []byte(s3srv.SecretKey+"\n"), 0o600)
	os.MkdirAll(filepath.Join(dir, "st"), 0o755)
	cfg := filepath.Join(dir, "virtkeep.yaml")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`version: 1
state_dir: %s/st
libvirt_uri: %s
targets:
  - name: remote
    kind: sftp
    host: %s
    port: %d
    user: %s
    path: %s/repo
    identity_file: %s
    known_hosts_file: %s
    key_file: %s/remote.key
  - name: offsite
    kind: s3
    endpoint: %s
    bucket: backups
    prefix: host1
    region: %s
    access_key: %s
    secret_key_file: %s
    insecure: true
    path_style: true
`, dir, vm.URI(), sshd.Host, sshd.Port, sshd.User, sshd.Dir, sshd.IdentityFile, sshd.KnownHostsFile, dir,
		s3srv.Endpoint, s3srv.Region, s3srv.AccessKey, secret)), 0o600)
	vda, _ := dom.Disk("vda")
	want := vda.Content.SHA256()
	ctx := context.Background()
	for _, tg := range []string{"remote", "offsite"} {
		code, out, errw := runCLI(t, "--config", cfg, "backup", dom.Name, "--target", tg)
		if code != 0 {
			t.Fatalf("backup to %s: %d %s", tg, code, errw)
		}
		point := strings.TrimSpace(out)
		to := filepath.Join(dir, "restored-"+tg)
		if code, _, errw := runCLI(t, "--config", cfg, "restore", point, "--to", to, "--verify"); code != 0 {
			t.Fatalf("restore from %s: %d %s", tg, code, errw)
		}
		if got, _ := testenv.ImageSHA256(ctx, filepath.Join(to, "vda.qcow2"), "qcow2"); got != want {
			t.Fatalf("vda restored from %s differs", tg)
		}
		raw := filepath.Join(dir, tg+".raw")
		if code, _, errw := runCLI(t, "--config", cfg, "export", point, "--disk", "vda", "--format", "raw", "-o", raw); code != 0 {
			t.Fatalf("export from %s: %d %s", tg, code, errw)
		}
		if got, _ := testenv.ImageSHA256(ctx, raw, "raw"); got != want {
			t.Fatalf("vda exported from %s differs", tg)
		}
	}
	code, out, errw := runCLI(t, "--config", cfg, "--json", "list", dom.Name)
	var recs []api.Point
	if code != 0 || json.Unmarshal([]byte(out), &recs) != nil || len(recs) != 2 {
		t.Fatalf("list: %d %s %s", code, out, errw)
	}
	seen := map[string]bool{}
	for _, r := range recs {
		seen[r.Target] = true
	}
	if !seen["remote"] || !seen["offsite"] {
		t.Fatalf("list shows targets %v", seen)
	}
}
