package testenv

import (
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"testing"
)

// RequireReal reports whether missing real components fail tests instead of
// skipping them: CI=true or VIRTKEEP_REQUIRE_REAL=1.
func RequireReal() bool {
	return os.Getenv("CI") == "true" || os.Getenv("VIRTKEEP_REQUIRE_REAL") == "1"
}

// Unavailable skips the test, or fails it when real components are required.
func Unavailable(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if RequireReal() {
		t.Fatalf("real component required (CI=true or VIRTKEEP_REQUIRE_REAL=1) but unavailable: %s", msg)
	}
	t.Skipf("real component unavailable: %s", msg)
}

// RequireCommands checks that the named programs are on PATH.
func RequireCommands(t testing.TB, names ...string) {
	t.Helper()
	for _, n := range names {
		if _, err := exec.LookPath(n); err != nil {
			Unavailable(t, "program %s not found (run make deps)", n)
		}
	}
}

var countOnce sync.Map

// Integration marks t as a test against real components: it is counted in
// VIRTKEEP_ITEST_LOG with its outcome when it ends.
func Integration(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("-short: skipping a test against real components")
	}
	path := os.Getenv("VIRTKEEP_ITEST_LOG")
	if path == "" {
		return
	}
	if _, dup := countOnce.LoadOrStore(t.Name(), true); dup {
		return
	}
	t.Cleanup(func() {
		outcome := "PASS"
		switch {
		case t.Failed():
			outcome = "FAIL"
		case t.Skipped():
			outcome = "SKIP"
		}
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
		if err != nil {
			t.Errorf("testenv: count integration test: %v", err)
			return
		}
		defer f.Close()
		fmt.Fprintf(f, "%s %s\n", outcome, t.Name())
	})
}

// BaseDir is where testenv keeps disk images and sockets. QEMU started by
// libvirt runs as libvirt-qemu and must be able to reach it, so it is under
// /var/tmp, not /tmp. VIRTKEEP_TESTENV_DIR overrides it.
func BaseDir() string {
	if d := os.Getenv("VIRTKEEP_TESTENV_DIR"); d != "" {
		return d
	}
	return "/var/tmp/virtkeep-testenv"
}

var nameRe = regexp.MustCompile(`[^a-zA-Z0-9]+`)

// TempDir makes a directory for one test under BaseDir, readable by QEMU and
// removed when the test ends.
func TempDir(t testing.TB) string {
	t.Helper()
	if err := os.MkdirAll(BaseDir(), 0o755); err != nil {
		Unavailable(t, "testenv directory: %v", err)
	}
	_ = os.Chmod(BaseDir(), 0o755)
	prefix := strings.ToLower(nameRe.ReplaceAllString(t.Name(), "-"))
	if len(prefix) > 40 {
		prefix = prefix[len(prefix)-40:]
	}
	dir, err := os.MkdirTemp(BaseDir(), prefix+"-")
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatalf("testenv: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() && os.Getenv("VIRTKEEP_KEEP_FAILED") == "1" {
			t.Logf("testenv: kept %s", dir)
			return
		}
		_ = os.RemoveAll(dir)
	})
	return dir
}

// Report records a measurement for the summary make test prints after the
// run (go test shows a passing test's output only with -v).
func Report(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	t.Log(msg)
	path := os.Getenv("VIRTKEEP_ITEST_LOG")
	if path == "" {
		return
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return
	}
	defer f.Close()
	fmt.Fprintf(f, "NOTE %s: %s\n", t.Name(), msg)
}
