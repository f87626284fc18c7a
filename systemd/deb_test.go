package systemd

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/virtkeep/virtkeep/testenv"
)

func sh(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// TestDebianPackage builds the .deb (make deb), has lintian find no error
// in it, installs it into this machine, runs both binaries, installs it
// again over itself with a changed configuration (kept), and purges it:
// every file it installed is gone, and so is what virtkeep made in
// /var/lib/virtkeep, but not a repository.
func TestDebianPackage(t *testing.T) {
	testenv.Integration(t)
	testenv.RequireCommands(t, "dpkg", "dpkg-deb", "dpkg-shlibdeps", "lintian", "strip")
	if out, _ := exec.Command("dpkg-query", "-W", "-f", "${Status}", "virtkeep").Output(); strings.Contains(string(out), "installed") {
		testenv.Unavailable(t, "a virtkeep package is installed here already: not touching it")
	}
	if _, err := os.Stat("/var/lib/virtkeep/repo"); err == nil {
		testenv.Unavailable(t, "/var/lib/virtkeep/repo exists: not touching it")
	}
	deb := buildDeb(t)
	lint, _ := exec.Command("lintian", "--tag-display-limit", "0", deb).CombinedOutput()
	for _, l := range strings.Split(string(lint), "\n") {
		if strings.HasPrefix(l, "E: ") {
			t.Errorf("lintian: %s", l)
		}
	}
	t.Logf("lintian:\n%s", lint)
	t.Cleanup(func() {
		_ = exec.Command("dpkg", "--purge", "virtkeep").Run()
		os.RemoveAll("/var/lib/virtkeep/repo")
	})
	sh(t, "dpkg", "-i", deb)
	if out := sh(t, "virtkeep", "version"); !strings.Contains(out, "virtkeep 0.0~git") {
		t.Errorf("virtkeep version: %s", out)
	}
	if out := sh(t, "/usr/sbin/virtkeepd", "--check-config"); !strings.Contains(out, "/etc/virtkeep/virtkeep.yaml: ok") {
		t.Errorf("virtkeepd --check-config: %s", out)
	}
	if fi, err := os.Stat("/etc/virtkeep/virtkeep.yaml"); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("the configuration is installed with mode %v (%v), want 0600 as the Ansible role does", fi.Mode().Perm(), err)
	}
	for _, f := range []string{"/usr/share/man/man1/virtkeep-backup.1.gz", "/usr/share/man/man5/virtkeep.yaml.5.gz", "/usr/share/man/man8/virtkeepd.8.gz",
		"/usr/share/bash-completion/completions/virtkeep", "/lib/systemd/system/virtkeepd.service", "/usr/lib/sysusers.d/virtkeep.conf"} {
		if _, err := os.Stat(f); err != nil {
			t.Errorf("installed: %v", err)
		}
	}
	if _, err := exec.Command("getent", "group", "virtkeep").Output(); err != nil {
		t.Errorf("no virtkeep group after the install")
	}
	// Used: the CLI in process makes its catalog and the zero target's
	// repository directory under /var/lib/virtkeep.
	sh(t, "virtkeep", "--local", "list")
	os.WriteFile("/var/lib/virtkeep/repo/operator-data", []byte("precious\n"), 0o600)

	// Again over itself, with the configuration changed: kept.
	conf := "/etc/virtkeep/virtkeep.yaml"
	b, _ := os.ReadFile(conf)
	changed := strings.Replace(string(b), "version: 1\n", "version: 1\nmax_jobs: 3\n", 1)
	os.WriteFile(conf, []byte(changed), 0o644)
	sh(t, "dpkg", "-i", deb)
	if got, _ := os.ReadFile(conf); string(got) != changed {
		t.Errorf("the changed configuration was not kept:\n%s", got)
	}
	files := strings.Fields(sh(t, "dpkg", "-L", "virtkeep"))

	sh(t, "dpkg", "--purge", "virtkeep")
	for _, f := range files {
		fi, err := os.Stat(f)
		if err == nil && !fi.IsDir() {
			t.Errorf("%s is left after the purge", f)
		}
	}
	for _, f := range []string{conf, "/var/lib/virtkeep/catalog.db", "/var/lib/virtkeep/host.lock", "/var/lib/virtkeep/run"} {
		if _, err := os.Stat(f); err == nil {
			t.Errorf("%s is left after the purge", f)
		}
	}
	if b, err := os.ReadFile(filepath.Join("/var/lib/virtkeep/repo", "operator-data")); err != nil || string(b) != "precious\n" {
		t.Errorf("the purge touched the repository: %q %v", b, err)
	}
}
