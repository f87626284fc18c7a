package testenv

import (
	"bytes"
	"net"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// QemuNBD serves image read-only with qemu-nbd on a unix socket for the rest
// of the test and returns the socket path. extra are more qemu-nbd arguments
// (e.g. "--bitmap=NAME", "-A", "-x", "name"). The export is shared by up to
// four clients. stop ends it early (it is idempotent), so the image can be
// written again.
func QemuNBD(t testing.TB, image, format string, extra ...string) (sock string, stop func()) {
	t.Helper()
	Integration(t)
	RequireCommands(t, "qemu-nbd")
	sock = filepath.Join(TempDir(t), "nbd.sock")
	args := append([]string{"-r", "-f", format, "-k", sock, "-e", "4", "--persistent"}, extra...)
	args = append(args, image)
	cmd := exec.Command("qemu-nbd", args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatalf("testenv: qemu-nbd: %v", err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	stop = func() {
		_ = cmd.Process.Kill()
		<-exited
	}
	t.Cleanup(func() {
		stop()
		if t.Failed() {
			t.Logf("testenv: qemu-nbd %v:\n%s", args, out.String())
		}
	})
	for deadline := time.Now().Add(10 * time.Second); ; {
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			return sock, stop
		}
		select {
		case <-exited:
			t.Fatalf("testenv: qemu-nbd %v exited: %s", args, out.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("testenv: qemu-nbd socket %s did not appear", sock)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
