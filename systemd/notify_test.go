package systemd

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/virtkeep/virtkeep/testenv"
)

func listen(t *testing.T) *net.UnixConn {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "notify")
	ln, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	t.Setenv("NOTIFY_SOCKET", sock)
	return ln
}

func next(t *testing.T, ln *net.UnixConn) string {
	t.Helper()
	buf := make([]byte, 1024)
	ln.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := ln.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	return string(buf[:n])
}

// TestNotify: the messages reach the service manager's socket as sd_notify
// datagrams; without NOTIFY_SOCKET nothing fails.
func TestNotify(t *testing.T) {
	ln := listen(t)
	var n Notifier
	for _, c := range []struct {
		send func() error
		want string
	}{{n.Ready, "READY=1"}, {func() error { return n.Status("busy") }, "STATUS=busy"}, {n.Stopping, "STOPPING=1"}} {
		if err := c.send(); err != nil {
			t.Fatal(err)
		}
		if got := next(t, ln); got != c.want {
			t.Fatalf("got %q, want %q", got, c.want)
		}
	}
	os.Unsetenv("NOTIFY_SOCKET")
	if err := n.Ready(); err != nil {
		t.Fatalf("outside systemd: %v", err)
	}
}

// TestWatchdog: with WATCHDOG_USEC set for this process, pings come at half
// the interval while alive says so, and stop when it does not.
func TestWatchdog(t *testing.T) {
	ln := listen(t)
	t.Setenv("WATCHDOG_USEC", "200000")
	t.Setenv("WATCHDOG_PID", strconv.Itoa(os.Getpid()))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	alive := make(chan bool, 1)
	alive <- true
	ok := true
	go Notifier{}.Watchdog(ctx, func() bool {
		select {
		case ok = <-alive:
		default:
		}
		return ok
	})
	for i := 0; i < 3; i++ {
		if got := next(t, ln); got != "WATCHDOG=1" {
			t.Fatalf("got %q", got)
		}
	}
	alive <- false
	pings := 0 // at most one ping may race the change
	for {
		ln.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		if _, err := ln.Read(make([]byte, 64)); err != nil {
			break
		}
		if pings++; pings > 1 {
			t.Fatal("pinged while not alive")
		}
	}
}

// TestUnitFile: the shipped unit is what the daemon expects (Type=notify,
// a watchdog) and systemd-analyze finds nothing wrong with it.
func TestUnitFile(t *testing.T) {
	b, err := os.ReadFile("virtkeepd.service")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Type=notify", "WatchdogSec=", "ExecStart=/usr/local/bin/virtkeepd", "ExecReload=/bin/kill -HUP $MAINPID",
		"ExecStopPost=/usr/local/bin/virtkeepd --config /etc/virtkeep/virtkeep.yaml --cleanup", "NoNewPrivileges=yes", "CapabilityBoundingSet="} {
		if !strings.Contains(string(b), want) {
			t.Errorf("unit lacks %s", want)
		}
	}
	testenv.RequireCommands(t, "systemd-analyze") // fails, not skips, in CI
	dir := t.TempDir()
	unit := filepath.Join(dir, "virtkeepd.service")
	// Point ExecStart at an executable that exists here.
	os.WriteFile(unit, []byte(strings.ReplaceAll(string(b), "/usr/local/bin/virtkeepd", "/bin/true")), 0o644)
	if out, err := exec.Command("systemd-analyze", "verify", unit).CombinedOutput(); err != nil {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
	out, _ := exec.Command("systemd-analyze", "security", "--offline=yes", "--no-pager", unit).CombinedOutput()
	i := strings.Index(string(out), "Overall exposure level")
	if i < 0 {
		t.Fatalf("systemd-analyze security: %s", out)
	}
	t.Logf("systemd-analyze security: %s", strings.TrimSpace(string(out[i:])))
}
