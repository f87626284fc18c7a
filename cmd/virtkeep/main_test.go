package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/virtkeep/virtkeep/hostd/api"
	"github.com/virtkeep/virtkeep/testenv/vm"
)

var pointIDRe = regexp.MustCompile(`^[0-9]{8}T[0-9]{6}Z-[0-9a-f]{8}$`)

func runCLI(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errw bytes.Buffer
	code := run(context.Background(), args, &out, &errw)
	return code, out.String(), errw.String()
}

func TestVersionAndHelp(t *testing.T) {
	for _, args := range [][]string{{"--version"}, {"--help"}, {"backup", "--help"}} {
		code, out, _ := runCLI(t, args...)
		if code != 0 || !strings.Contains(out, "virtkeep") {
			t.Errorf("%v: exit %d, %q", args, code, out)
		}
	}
}

func TestUsageErrors(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "ok.yaml")
	os.WriteFile(good, []byte("state_dir: "+dir+"/st\ntargets:\n  - {name: a, kind: local, path: "+dir+"/repo}\n"), 0o600)
	openSecret := filepath.Join(dir, "open-secret")
	os.WriteFile(openSecret, []byte("s3cret\n"), 0o644)
	os.Chmod(openSecret, 0o644)
	bad := map[string]string{
		"targets: [{name: a, kind: s3, endpoint: s3.example.com, bucket: b, access_key: k, secret_key_file: " + openSecret + "}]\n": "mode 0644",
		"version: 2\ntargets: [{name: a, kind: local, path: /x}]\n":                                                                 "version (line 1): 2",
		"targets: []\n": "no targets",
		"targets: [{name: 'a b', kind: local, path: /x}]\n":                               `targets[0].name (line 1): "a b"`,
		"targets: [{name: a, kind: ftp, path: /x}]\n":                                     `kind "ftp"`,
		"targets: [{name: a, kind: local}]\n":                                             "needs path",
		"targets: [{name: a, kind: local, path: /x, compression: lz4}]\n":                 `targets[0].compression (line 1): "lz4"`,
		"targets: [{name: a, kind: local, path: /x}, {name: a, kind: local, path: /y}]\n": "used twice",
		"targets: [{name: a, kind: local, path: /x}]\nstate_dri: /x\n":                    "state_dri",
		"targets: [\n": "yaml",
		"targets: [{name: a, kind: local, path: /x, bucket: b}]\n":                                                              "bucket is not a setting of kind local",
		"targets: [{name: a, kind: sftp, host: h, user: u, path: /x, identity_file: /k}]\n":                                     "needs known_hosts_file",
		"targets: [{name: a, kind: sftp, host: h, user: u, path: /x, identity_file: /k, known_hosts_file: /kh, port: 70000}]\n": "port 70000",
		"targets: [{name: a, kind: s3, endpoint: 'https://s3.example.com', bucket: b, access_key: k, secret_key_file: /s}]\n":   "want host[:port]",
		"targets: [{name: a, kind: s3, endpoint: s3.example.com, bucket: b, access_key: k}]\n":                                  "needs secret_key_file",
		"targets: [{name: a, kind: s3, endpoint: s3.example.com, bucket: b, access_key: k, secret_key_file: /nonexistent/s}]\n": "secret_key_file",
	}
	for content, want := range bad {
		p := filepath.Join(dir, "bad.yaml")
		os.WriteFile(p, []byte(content), 0o600)
		code, _, errw := runCLI(t, "--config", p, "list")
		if code != exitUsage || !strings.Contains(errw, want) || !strings.Contains(errw, p) {
			t.Errorf("config %q: exit %d, %q; want %q", content, code, errw, want)
		}
	}
	cases := []struct {
		args []string
		code int
		want string
	}{
		{[]string{"--config", filepath.Join(dir, "nope.yaml"), "list"}, exitUsage, "does not exist"},
		{[]string{"--config", good, "bogus"}, exitUsage, `unknown command "bogus"`},
		{[]string{"--config", good, "info"}, exitUsage, "expected POINT"},
		{[]string{"--config", good, "info", "yesterday"}, exitUsage, "DOMAIN@latest"},
		{[]string{"--config", good, "info", "vm@noon"}, exitUsage, "RFC 3339"},
		{[]string{"--config", good, "info", "vm@latest"}, exitNotFound, `domain "vm"`},
		{[]string{"--config", good, "list", "--target", "zzz"}, exitNotFound, `no target "zzz"`},
		{[]string{"--config", good, "backup", "x", "--bogus"}, exitUsage, "unknown flag"},
		{[]string{"--config", good, "serve", "vm@latest", "--listen", "0.0.0.0:10809"}, exitUsage, "only loopback"},
		{[]string{"--config", good, "serve", "vm@latest", "--listen", "192.0.2.1:10809"}, exitUsage, "only loopback"},
	}
	for _, c := range cases {
		code, _, errw := runCLI(t, c.args...)
		if code != c.code || !strings.Contains(errw, c.want) {
			t.Errorf("%v: exit %d %q, want %d %q", c.args, code, errw, c.code, c.want)
		}
	}
	// list of a target with no repository yet is empty, not an error.
	code, out, errw := runCLI(t, "--config", good, "--json", "list")
	if code != 0 || strings.TrimSpace(out) != "[]" {
		t.Errorf("empty list: %d %q %q", code, out, errw)
	}
}

// TestBackupListInfo drives the CLI contract against a real domain.
func TestBackupListInfo(t *testing.T) {
	env := vm.Libvirt(t)
	dom := env.NewDomain(t, vm.DomainSpec{Disks: []vm.DiskSpec{{Size: 16 << 20}, {Format: "raw", Size: 8 << 20}}, Start: true})
	dir := dom.Dir
	cfg := filepath.Join(dir, "virtkeep.yaml")
	os.MkdirAll(filepath.Join(dir, "st"), 0o755)
	err := os.WriteFile(cfg, []byte(fmt.Sprintf(`version: 1
state_dir: %s/st
libvirt_uri: %s
targets:
  - name: local
    kind: local
    path: %s/repo
  - name: offsite
    kind: local
    path: %s/repo2
    compression: none
    key_file: %s/offsite.key
`, dir, vm.URI(), dir, dir, dir)), 0o600)
	if err != nil {
		t.Fatal(err)
	}
	code, out, errw := runCLI(t, "--config", cfg, "backup", dom.Name, "--level", "full")
	if code != 0 {
		t.Fatalf("backup: %d %s", code, errw)
	}
	first := strings.TrimSpace(out)
	if !pointIDRe.MatchString(first) {
		t.Fatalf("backup printed %q, want a point ID", out)
	}
	if err := dom.Write(context.Background(), "vda", 0, 65536, 3); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1100 * time.Millisecond) // distinct seconds for DOMAIN@time
	code, out, errw = runCLI(t, "--config", cfg, "--json", "backup", dom.Name)
	if code != 0 {
		t.Fatalf("second backup: %d %s", code, errw)
	}
	var inc api.Point
	if err := json.Unmarshal([]byte(out), &inc); err != nil {
		t.Fatalf("backup --json: %v: %s", err, out)
	}
	if inc.Level != "inc" || inc.Parent != first || inc.Target != "local" || len(inc.Disks) != 2 || inc.Checkpoint == "" || inc.DomainUUID != dom.UUID {
		t.Fatalf("inc record %+v", inc)
	}
	code, _, errw = runCLI(t, "--config", cfg, "backup", dom.Name, "--target", "offsite")
	if code != 0 {
		t.Fatalf("offsite backup: %d %q", code, errw)
	}
	if fi, err := os.Stat(filepath.Join(dir, "offsite.key")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v %v", fi, err)
	}
	// list --json: an array of records with every contract field.
	code, out, _ = runCLI(t, "--config", cfg, "--json", "list", dom.Name)
	var recs []map[string]any
	if code != 0 || json.Unmarshal([]byte(out), &recs) != nil || len(recs) != 3 {
		t.Fatalf("list: %d %s", code, out)
	}
	for _, k := range []string{"id", "domain", "domain_uuid", "target", "time", "level", "consistency", "freeze_ms", "checkpoint", "parent", "disks"} {
		if _, ok := recs[0][k]; !ok {
			t.Errorf("list record has no %q", k)
		}
	}
	disk := recs[0]["disks"].([]any)[0].(map[string]any)
	for _, k := range []string{"name", "format", "virtual_size", "bytes_read", "bytes_stored"} {
		if _, ok := disk[k]; !ok {
			t.Errorf("disk record has no %q", k)
		}
	}
	code, out, _ = runCLI(t, "--config", cfg, "list", "--target", "offsite")
	if code != 0 || strings.Count(out, dom.Name) != 1 {
		t.Fatalf("list --target offsite: %d\n%s", code, out)
	}
	// info by ID, DOMAIN@latest and DOMAIN@time.
	code, out, _ = runCLI(t, "--config", cfg, "--json", "info", dom.Name+"@latest", "--target", "local")
	var latest api.Point
	if code != 0 || json.Unmarshal([]byte(out), &latest) != nil || latest.ID != inc.ID {
		t.Fatalf("info @latest: %d %s", code, out)
	}
	firstRec := recs[0]
	tm, _ := time.Parse(time.RFC3339Nano, firstRec["time"].(string))
	code, out, _ = runCLI(t, "--config", cfg, "--json", "info", dom.Name+"@"+tm.Truncate(time.Second).Add(time.Second).Format(time.RFC3339), "--target", "local")
	var at api.Point
	if code != 0 || json.Unmarshal([]byte(out), &at) != nil || at.ID != first {
		t.Fatalf("info @time: %d %s (want %s)", code, out, first)
	}
	code, out, _ = runCLI(t, "--config", cfg, "info", first)
	if code != 0 || !strings.Contains(out, "Disk vda:") {
		t.Fatalf("info ID: %d %s", code, out)
	}
	// Unknown domain: exit 3 with the name.
	code, _, errw = runCLI(t, "--config", cfg, "backup", "no-such-vm")
	if code != exitNotFound || !strings.Contains(errw, "no-such-vm") {
		t.Fatalf("unknown domain: %d %s", code, errw)
	}
}
