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
