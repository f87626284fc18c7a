package service

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/virtkeep/virtkeep/hostd/api"
	"github.com/virtkeep/virtkeep/target"
	"github.com/virtkeep/virtkeep/target/all"
)

// TestTargetErrorsClassified: only what may pass is retried. A key file
// others can read is the operator's to fix (bad_request, the file named),
// damage and a missing object are failures, a server that cannot be
// reached is unavailable (retried).
func TestTargetErrorsClassified(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "repo.key")
	k, _ := target.NewKey()
	if err := target.WriteKeyFile(key, k, nil, target.DefaultKDF); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(key, 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := all.Open(context.Background(), all.Config{Name: "enc", Kind: "local", Path: filepath.Join(dir, "repo"), KeyFile: key}, true, nil)
	if err == nil {
		t.Fatal("a key file of mode 0644 was used")
	}
	err = targetError(err)
	if c := api.CodeOf(err); c != api.CodeBadRequest || transient(err) || !strings.Contains(err.Error(), key) {
		t.Errorf("key file of mode 0644: %v (code %s, transient %v), want bad_request naming the file", err, c, transient(err))
	}
	for _, tc := range []struct {
		err  error
		code api.Code
	}{
		{fmt.Errorf("copy x: chunk y: %w", target.ErrMissing), api.CodeFailed},
		{fmt.Errorf("load z: %w", target.ErrCorrupt), api.CodeFailed},
		{fmt.Errorf("copy x: %w", target.ErrNoPoint), api.CodeFailed},
		{errors.New("dial tcp 127.0.0.1:9: connect: connection refused"), api.CodeUnavailable},
	} {
		if c := api.CodeOf(targetError(tc.err)); c != tc.code {
			t.Errorf("%v: code %s, want %s", tc.err, c, tc.code)
		}
	}
}
