package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestZeroConfigAndEnvironment: no file at the default path gives one
// local target; VIRTKEEP_* overrides top-level settings; unknown keys and
// bad daemon settings are errors that name them.
func TestZeroConfigAndEnvironment(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "virtkeep.yaml")
	c, err := Load(missing, false)
	if err != nil || !c.ZeroConfig || len(c.Targets) != 1 || c.Targets[0].Path != "/var/lib/virtkeep/repo" || c.LibvirtURI != "qemu:///system" ||
		c.Socket != "/run/virtkeep/virtkeepd.sock" || c.ShutdownTimeout != 90*time.Second {
		t.Fatalf("zero configuration: %+v %v", c, err)
	}
	if _, err := Load(missing, true); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "does not exist") {
		t.Fatalf("an explicit missing file: %v", err)
	}
	for content, want := range map[string]string{
		"targets: [{name: a, kind: local, path: /r}]\nsokcet: /x\n":          "sokcet",
		"targets: [{name: a, kind: local, path: /r}]\nsocket: run/v.sock\n":  "socket",
		"targets: [{name: a, kind: local, path: /r}]\nmax_jobs: 0\n":         "max_jobs",
		"targets: [{name: a, kind: local, path: /r}]\nshutdown_timeout: x\n": "shutdown_timeout",
	} {
		os.WriteFile(missing, []byte(content), 0o600)
		if _, err := Load(missing, true); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want an error naming %s", content, err, want)
		}
	}
	t.Setenv("VIRTKEEP_STATE_DIR", "/srv/vk")
	t.Setenv("VIRTKEEP_MAX_JOBS", "5")
	os.WriteFile(missing, []byte("state_dir: /x\ntargets: [{name: a, kind: local, path: /r}]\n"), 0o600)
	if c, err = Load(missing, true); err != nil || c.StateDir != "/srv/vk" || c.MaxJobs != 5 || c.ZeroConfig {
		t.Fatalf("environment overrides: %+v %v", c, err)
	}
}

// TestPolicyErrors: each kind of mistake is an error naming its key and
// line, and every mistake of a file is reported at once.
func TestPolicyErrors(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "virtkeep.yaml")
	head := "targets: [{name: local, kind: local, path: /r}, {name: far, kind: local, path: /f}]\n"
	pol := func(extra string) string {
		return head + "policies:\n  - name: p\n    domains: [web1]\n    schedule: \"0 1 * * *\"\n    targets: [local]\n" + extra
	}
	for name, c := range map[string]struct{ file, want string }{
		"unknown key":  {pol("    schedul: x\n"), "policies[0].schedul (line 7): unknown key"},
		"bad cron":     {pol("    time_zone: UTC\n  - {name: q, domains: [db1], schedule: \"61 * * * *\", targets: [local]}\n"), "policies[1].schedule[0] (line 8): bad cron expression"},
		"bad target":   {pol("    copy_to: [nowhere]\n"), `policies[0].copy_to[0] (line 7): no target "nowhere"`},
		"overlap":      {pol("  - {name: q, domains: [web1], schedule: \"0 2 * * *\", targets: [local]}\n"), "policies[1].domains (line 7): domain web1 is in two policies, p and q"},
		"no rule":      {pol("    retention: [{target: local}]\n"), "policies[0].retention[0] (line 7): no rule"},
		"public":       {head + "metrics: {listen: 192.0.2.1:9469}\n", "metrics.listen (line 2): 192.0.2.1:9469 is not a loopback address"},
		"retention tz": {pol("    retention: [{target: far, keep_within: 3x}]\n"), "policies[0].retention[0].target (line 7): \"far\" is none of the policy's targets"},
	} {
		os.WriteFile(path, []byte(c.file), 0o600)
		_, err := Load(path, true)
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v\nwant %s", name, err, c.want)
		}
	}
	// Several mistakes: all of them.
	os.WriteFile(path, []byte(pol("    level: fast\n    bogus: 1\n  - {name: q, domains: [db1], schedule: [\"0 25 * * *\"], targets: [local]}\n")), 0o600)
	_, err := Load(path, true)
	for _, w := range []string{"bogus", "level", "schedule[0]"} {
		if err == nil || !strings.Contains(err.Error(), w) {
			t.Errorf("several mistakes: %v lacks %s", err, w)
		}
	}
}

// TestDocsExample loads the complete example of docs/CLI.md.
func TestDocsExample(t *testing.T) {
	doc, err := os.ReadFile("../../../docs/CLI.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(doc), "<!-- example-config -->\n```yaml\n")
	example, _, ok2 := strings.Cut(rest, "```")
	if !ok || !ok2 {
		t.Fatal("docs/CLI.md has no example-config block")
	}
	dir := t.TempDir()
	for _, f := range []string{"offsite.secret", "webhook.token"} {
		os.WriteFile(filepath.Join(dir, f), []byte("s3cret\n"), 0o600)
		example = strings.ReplaceAll(example, "/etc/virtkeep/"+f, filepath.Join(dir, f))
	}
	path := filepath.Join(dir, "virtkeep.yaml")
	os.WriteFile(path, []byte(example), 0o600)
	c, err := Load(path, true)
	if err != nil {
		t.Fatal(err)
	}
	ps := c.PolicyList()
	if len(ps) != 2 || ps[0].Concurrency != 3 || ps[0].Full.Period != "week" || ps[0].Retention["offsite"].KeepYearly != 5 ||
		ps[1].Retention["offsite"].KeepLast != 8 || ps[1].Retention["local"].KeepWithin != 48*time.Hour || len(ps[1].PreFreeze) != 1 ||
		ps[0].Schedules[0].String() != "0 1 * * 1-5" || ps[0].Full.Location.String() != "Europe/Berlin" {
		t.Fatalf("policies: %+v %+v", ps[0], ps[1])
	}
	sc := c.Service("test", nil)
	if sc.Targets[0].VerifyReadData != "sample" || sc.Targets[0].VerifySample != 7 || sc.Targets[1].MaxJobs != 1 || sc.Targets[1].GC == nil {
		t.Fatalf("targets: %+v", sc.Targets)
	}
}
