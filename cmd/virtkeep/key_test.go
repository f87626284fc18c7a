package main

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/virtkeep/virtkeep/target"
	"github.com/virtkeep/virtkeep/target/local"
)

// TestKeyCommands: a passphrase-protected key file is created, used through
// passphrase_file (and refused without a passphrase off a terminal), and
// exported for safekeeping, unwrapped or under a new passphrase; the
// export opens the repository.
func TestKeyCommands(t *testing.T) {
	dir := t.TempDir()
	pf := filepath.Join(dir, "pass")
	os.WriteFile(pf, []byte("correct horse battery\n"), 0o600)
	key := filepath.Join(dir, "repo.key")
	if code, _, errw := runCLI(t, "key", "create", key, "--passphrase-file", pf); code != 0 {
		t.Fatalf("key create: %d %s", code, errw)
	}
	if _, err := target.ReadKeyFile(key, nil); !errors.Is(err, target.ErrPassphraseNeeded) {
		t.Fatalf("created key file read without a passphrase: %v, want ErrPassphraseNeeded", err)
	}
	if code, _, _ := runCLI(t, "key", "create", key); code == 0 {
		t.Fatal("key create replaced an existing key file")
	}
	// An encrypted repository with that key.
	k, err := target.ReadKeyFile(key, []byte("correct horse battery"))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	b, _ := local.Open(local.Config{Path: filepath.Join(dir, "repo")})
	if err := target.Init(ctx, b, target.InitOptions{Key: &k}); err != nil {
		t.Fatal(err)
	}
	cfg := func(name, extra string) string {
		p := filepath.Join(dir, name+".yaml")
		os.WriteFile(p, []byte("state_dir: "+filepath.Join(dir, "st")+"\ntargets:\n  - {name: enc, kind: local, path: "+filepath.Join(dir, "repo")+", key_file: "+key+extra+"}\n"), 0o600)
		return p
	}
	withPass, noPass := cfg("with", ", passphrase_file: "+pf), cfg("without", "")
	if code, out, errw := runCLI(t, "--config", withPass, "list", "--json"); code != 0 || !strings.Contains(out, "[") {
		t.Fatalf("list with passphrase_file: %d %q %s", code, out, errw)
	}
	// list answers from the catalog; what reads the repository needs the key.
	if code, _, errw := runCLI(t, "--config", noPass, "verify", "--all"); code != exitUsage || !strings.Contains(errw, "needs a passphrase") {
		t.Fatalf("verify without a passphrase: %d %s", code, errw)
	}
	exported := filepath.Join(dir, "exported.key")
	if code, _, errw := runCLI(t, "--config", withPass, "key", "export", "--out", exported); code != 0 {
		t.Fatalf("key export: %d %s", code, errw)
	}
	if fi, _ := os.Stat(exported); fi.Mode().Perm() != 0o600 {
		t.Fatalf("exported key file mode %v", fi.Mode().Perm())
	}
	ek, err := target.ReadKeyFile(exported, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := target.Open(ctx, b, target.OpenOptions{Key: &ek}); err != nil {
		t.Fatalf("the exported key does not open the repository: %v", err)
	}
	pf2 := filepath.Join(dir, "pass2")
	os.WriteFile(pf2, []byte("another one"), 0o600)
	code, out, errw := runCLI(t, "--config", withPass, "key", "export", "--passphrase-file", pf2)
	if code != 0 || !strings.Contains(out, "argon2id") {
		t.Fatalf("key export to stdout under a new passphrase: %d %s", code, errw)
	}
	wrapped := filepath.Join(dir, "wrapped.key")
	os.WriteFile(wrapped, []byte(out), 0o600)
	if wk, err := target.ReadKeyFile(wrapped, []byte("another one")); err != nil || wk != k {
		t.Fatalf("the exported wrapped key: %v", err)
	}
	os.Chmod(pf, 0o644)
	if code, _, errw := runCLI(t, "--config", withPass, "verify", "--all"); code != exitUsage || !strings.Contains(errw, "0644") {
		t.Fatalf("a passphrase file of mode 0644: %d %s", code, errw)
	}
}
