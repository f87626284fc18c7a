package secret_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"github.com/virtkeep/virtkeep/target/secret"
)

func TestSecretNeverPrints(t *testing.T) {
	s := secret.Value("hunter2-s3-secret")
	cfg := struct {
		Access string
		Secret secret.Value
	}{"AKIA", s}
	var logged bytes.Buffer
	slog.New(slog.NewJSONHandler(&logged, nil)).Info("config", "secret", s, "cfg", cfg)
	js, _ := json.Marshal(cfg)
	for _, out := range []string{fmt.Sprint(s), fmt.Sprintf("%s %q %v %+v %#v %x", s, s, cfg, cfg, cfg, s), logged.String(), string(js)} {
		if strings.Contains(out, "hunter2") {
			t.Fatalf("the secret printed: %s", out)
		}
	}
	if s.Reveal() != "hunter2-s3-secret" {
		t.Fatal("Reveal lost the value")
	}
}

// TestReadFileRefusesDirectory: only a regular file is a secret file.
func TestReadFileRefusesDirectory(t *testing.T) {
	if _, err := secret.ReadFile(t.TempDir()); !errors.Is(err, secret.ErrNotPrivate) {
		t.Fatalf("a directory: %v", err)
	}
}
