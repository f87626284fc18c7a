package notify

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/virtkeep/virtkeep/hostd/api"
	"github.com/virtkeep/virtkeep/testenv"
)

// smtpOnce answers one SMTP session on ln and sends the message it got.
func smtpOnce(ln net.Listener, got chan<- string) {
	c, err := ln.Accept()
	if err != nil {
		return
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	r := bufio.NewReader(c)
	fmt.Fprint(c, "220 test ESMTP\r\n")
	var data strings.Builder
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		cmd := strings.ToUpper(strings.TrimSpace(line))
		switch {
		case strings.HasPrefix(cmd, "EHLO"), strings.HasPrefix(cmd, "HELO"):
			fmt.Fprint(c, "250 test\r\n")
		case cmd == "DATA":
			fmt.Fprint(c, "354 go on\r\n")
			for {
				l, err := r.ReadString('\n')
				if err != nil {
					return
				}
				if l == ".\r\n" || l == ".\n" {
					break
				}
				data.WriteString(l)
			}
			got <- data.String()
			fmt.Fprint(c, "250 queued\r\n")
		case cmd == "QUIT":
			fmt.Fprint(c, "221 bye\r\n")
			return
		default:
			fmt.Fprint(c, "250 ok\r\n")
		}
	}
}

// TestMailThroughSendmail sends a failure through the host's real
// /usr/sbin/sendmail (msmtp's, from make deps) to an SMTP server of the
// test's.
func TestMailThroughSendmail(t *testing.T) {
	testenv.Integration(t)
	testenv.RequireCommands(t, "msmtp")
	if _, err := os.Stat("/usr/sbin/sendmail"); err != nil {
		testenv.Unavailable(t, "/usr/sbin/sendmail: %v (make deps installs msmtp-mta)", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan string, 1)
	go smtpOnce(ln, got)
	home := t.TempDir()
	port := ln.Addr().(*net.TCPAddr).Port
	os.WriteFile(filepath.Join(home, ".msmtprc"), []byte(fmt.Sprintf("defaults\nauth off\ntls off\naccount default\nhost 127.0.0.1\nport %d\nfrom virtkeep@kvm1.example.org\n", port)), 0o600)
	t.Setenv("HOME", home)
	n := New(Config{Host: "kvm1", Mail: Mail{To: []string{"ops@example.org"}, From: "virtkeep@kvm1.example.org"},
		Tail: func(_ context.Context, _ string) []api.LogLine {
			return []api.LogLine{{Level: "ERROR", Message: "target unreachable"}}
		}})
	n.Ended(api.Job{ID: "j9", Kind: api.KindPolicy, Policy: "nightly", State: api.Failed, Error: "1 of 3 domains failed"})
	n.Wait()
	select {
	case m := <-got:
		for _, w := range []string{"Subject: [virtkeep kvm1] run of policy nightly failed: 1 of 3 domains failed", "To: ops@example.org", "target unreachable"} {
			if !strings.Contains(m, w) {
				t.Errorf("mail lacks %q:\n%s", w, m)
			}
		}
	case <-time.After(30 * time.Second):
		t.Fatal("no mail reached the SMTP server")
	}
}
