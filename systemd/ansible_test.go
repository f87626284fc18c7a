package systemd

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"

	"github.com/virtkeep/virtkeep/testenv"
)

var (
	debOnce sync.Once
	debDir  string
	debPath string
	debErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if debDir != "" {
		os.RemoveAll(debDir)
	}
	os.Exit(code)
}

// buildDeb builds the package once per test run.
func buildDeb(t *testing.T) string {
	t.Helper()
	debOnce.Do(func() {
		var err error
		_ = os.MkdirAll(testenv.BaseDir(), 0o755)
		if debDir, err = os.MkdirTemp(testenv.BaseDir(), "deb-"); err != nil {
			debErr = err
			return
		}
		out, err := exec.Command("bash", "debian/build.sh", debDir).CombinedOutput()
		if err != nil {
			debErr = err
			debPath = string(out)
			return
		}
		debPath = strings.TrimSpace(string(out))
	})
	if debErr != nil {
		t.Fatalf("make deb: %v %s", debErr, debPath)
	}
	return debPath
}

// TestAnsibleRole applies ansible/roles/virtkeep to this machine with
// Debian's ansible (connection local): the first run installs the package,
// a credential and the configuration; a second changes nothing; the files
// are what the variables say; a policy naming an unknown target fails at
// validation and leaves the configuration as it was.
func TestAnsibleRole(t *testing.T) {
	testenv.Integration(t)
	testenv.RequireCommands(t, "ansible-playbook", "dpkg", "lintian")
	if out, _ := exec.Command("dpkg-query", "-W", "-f", "${Status}", "virtkeep").Output(); strings.Contains(string(out), "installed") {
		testenv.Unavailable(t, "a virtkeep package is installed here already: not touching it")
	}
	deb := buildDeb(t)
	dir := testenv.TempDir(t)
	pass := "/etc/virtkeep/ansible-test.pass"
	t.Cleanup(func() {
		os.Remove(pass)
		_ = exec.Command("dpkg", "--purge", "virtkeep").Run()
		os.Remove("/var/cache/virtkeep-" + filepath.Base(deb))
	})
	os.WriteFile(filepath.Join(dir, "inventory"), []byte("localhost ansible_connection=local ansible_python_interpreter=/usr/bin/python3\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "play.yml"), []byte("- hosts: localhost\n  gather_facts: false\n  roles: [virtkeep]\n"), 0o644)
	vars := func(policyTarget string) string {
		v := map[string]any{
			"virtkeep_deb":      deb,
			"virtkeep_settings": map[string]any{"state_dir": dir + "/state", "max_jobs": 3},
			"virtkeep_targets": []any{map[string]any{"name": "local", "kind": "local", "path": dir + "/repo",
				"key_file": dir + "/local.key", "passphrase_file": pass}},
			"virtkeep_files": []any{map[string]any{"dest": pass, "content": "correct horse battery staple\n"}},
			"virtkeep_policies": []any{map[string]any{"name": "nightly", "domains": []string{"*"}, "schedule": "0 1 * * *",
				"targets": []string{policyTarget}, "retention": []any{map[string]any{"keep_daily": 7}}}},
			"virtkeep_metrics": map[string]any{"listen": "127.0.0.1:9469"},
		}
		b, _ := json.Marshal(v)
		p := filepath.Join(dir, "vars-"+policyTarget+".json")
		os.WriteFile(p, b, 0o600)
		return p
	}
	roles, _ := filepath.Abs("../ansible/roles")
	play := func(varsFile string) (int, string) {
		cmd := exec.Command("ansible-playbook", "-i", filepath.Join(dir, "inventory"), filepath.Join(dir, "play.yml"), "-e", "@"+varsFile)
		cmd.Env = append(os.Environ(), "ANSIBLE_ROLES_PATH="+roles, "ANSIBLE_NOCOLOR=1", "ANSIBLE_HOME="+dir+"/ansible",
			"ANSIBLE_LOCAL_TEMP="+dir+"/ansible/tmp", "ANSIBLE_RETRY_FILES_ENABLED=0")
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		_ = cmd.Run()
		return cmd.ProcessState.ExitCode(), out.String()
	}
	changed := regexp.MustCompile(`localhost\s*:\s*ok=\d+\s+changed=(\d+)`)
	good := vars("local")
	code, out := play(good)
	if m := changed.FindStringSubmatch(out); code != 0 || m == nil || m[1] == "0" {
		t.Fatalf("first run: exit %d\n%s", code, out)
	}
	if !strings.Contains(out, "systemd is not PID 1 here") && !strings.Contains(out, "Enable and start virtkeepd") {
		t.Errorf("the service steps were neither run nor said to be skipped:\n%s", out)
	}
	code, out = play(good)
	if m := changed.FindStringSubmatch(out); code != 0 || m == nil || m[1] != "0" {
		t.Fatalf("second run: exit %d, want changed=0\n%s", code, out)
	}
	conf, _ := os.ReadFile("/etc/virtkeep/virtkeep.yaml")
	for _, w := range []string{"name: nightly", "path: " + dir + "/repo", "max_jobs: 3", "listen: 127.0.0.1:9469", "keep_daily: 7"} {
		if !strings.Contains(string(conf), w) {
			t.Errorf("configuration lacks %q:\n%s", w, conf)
		}
	}
	if fi, err := os.Stat(pass); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("credential: %v %v", fi, err)
	}
	if out, err := exec.Command("/usr/sbin/virtkeepd", "--check-config").CombinedOutput(); err != nil || !strings.Contains(string(out), "1 policies") {
		t.Errorf("virtkeepd --check-config of what the role wrote: %v %s", err, out)
	}
	code, out = play(vars("nowhere"))
	if code == 0 || !strings.Contains(out, `no target \"nowhere\"`) && !strings.Contains(out, `no target "nowhere"`) {
		t.Fatalf("a policy with an unknown target: exit %d\n%s", code, out)
	}
	if after, _ := os.ReadFile("/etc/virtkeep/virtkeep.yaml"); !bytes.Equal(after, conf) {
		t.Errorf("a configuration that failed validation replaced the running one")
	}
}
