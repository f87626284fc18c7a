package config

import (
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"testing"
)

// FuzzConfig: any configuration file is loaded or refused with an error;
// never a panic. A loaded one satisfies what loadConfig promises.
func FuzzConfig(f *testing.F) {
	f.Add([]byte("targets:\n  - {name: a, kind: local, path: /x}\n"))
	f.Add([]byte("version: 1\nstate_dir: /s\ntargets:\n  - name: r\n    kind: sftp\n    host: h\n    port: 22\n    user: u\n    path: /p\n    identity_file: /k\n    known_hosts_file: /kh\n"))
	f.Add([]byte("targets:\n  - {name: o, kind: s3, endpoint: 'e:9000', bucket: b, access_key: k, secret_key_file: /dev/null, insecure: true}\n"))
	f.Add([]byte("targets: [{name: a, kind: local, path: /x, compression: none, key_file: /k}]\nlibvirt_uri: test:///default\n"))
	f.Add([]byte("targets: [\n"))
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, data []byte) {
		p := filepath.Join(dir, "c.yaml")
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		c, err := Load(p, true)
		if err != nil {
			return
		}
		if len(c.Targets) == 0 || c.StateDir == "" || c.Version != 1 {
			t.Fatalf("loaded an invalid config: %+v", c)
		}
		seen := map[string]bool{}
		for _, tc := range c.Targets {
			if !nameRe.MatchString(tc.Name) || seen[tc.Name] {
				t.Fatalf("loaded a bad target name %q", tc.Name)
			}
			seen[tc.Name] = true
			_ = tc.Open()
		}
	})
}

// TestEverySettingHasAKind: each setting of a target is common to all
// kinds or belongs to at least one, so none is refused everywhere.
func TestEverySettingHasAKind(t *testing.T) {
	typ := reflect.TypeOf(TargetConfig{})
	for _, f := range reflect.VisibleFields(typ) {
		name := f.Tag.Get("mapstructure")
		if !f.IsExported() || slices.Contains(commonSettings, name) {
			continue
		}
		found := false
		for _, names := range kindSettings {
			found = found || slices.Contains(names, name)
		}
		if !found {
			t.Errorf("setting %s belongs to no kind", name)
		}
	}
}
