package target_test

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/virtkeep/virtkeep/target"
	"github.com/virtkeep/virtkeep/target/secret"
)

// TestSecretFiles: a key file (or any secret file) open to group or
// others, or owned by another user, is refused with an error naming it and
// its mode or owner.
func TestSecretFiles(t *testing.T) {
	dir := t.TempDir()
	k, _ := target.NewKey()
	path := filepath.Join(dir, "key")
	if err := target.WriteKeyFile(path, k, nil, target.DefaultKDF); err != nil {
		t.Fatal(err)
	}
	if _, err := target.ReadKeyFile(path, nil); err != nil {
		t.Fatal(err)
	}
	for _, mode := range []os.FileMode{0o640, 0o604, 0o644} {
		os.Chmod(path, mode)
		_, err := target.ReadKeyFile(path, nil)
		if !errors.Is(err, secret.ErrNotPrivate) || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), fmt.Sprintf("%04o", mode)) {
			t.Fatalf("mode %04o: %v", mode, err)
		}
	}
	os.Chmod(path, 0o600)
	if os.Geteuid() == 0 {
		os.Chown(path, 65534, 65534)
		if _, err := target.ReadKeyFile(path, nil); !errors.Is(err, secret.ErrNotPrivate) || !strings.Contains(err.Error(), "uid 65534") {
			t.Fatalf("owned by nobody: %v", err)
		}
	}
}
