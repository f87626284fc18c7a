package systemd

import (
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"testing"
)

// TestJournalHandler: a record is one datagram of journal fields, with
// the attributes as fields of their own and a multi-line value in the
// protocol's binary form.
func TestJournalHandler(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "journal.sock")
	ln, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	h, err := NewJournalHandler(sock, "virtkeepd", slog.LevelInfo)
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(h).With("job", "20261201T000000Z-0000abcd")
	log.Debug("not sent")
	log.WithGroup("disk").Error("chunk damaged", "name", "vda", "err", "line one\nline two")
	buf := make([]byte, 64<<10)
	n, err := ln.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	got := string(buf[:n])
	for _, w := range []string{"JOB=20261201T000000Z-0000abcd\n", "DISK_NAME=vda\n", "PRIORITY=3\n", "SYSLOG_IDENTIFIER=virtkeepd\n",
		"DISK_ERR\n\x11\x00\x00\x00\x00\x00\x00\x00line one\nline two\n", "MESSAGE\n"} {
		if !strings.Contains(got, w) {
			t.Errorf("entry lacks %q:\n%q", w, got)
		}
	}
	if fieldName("9bytes-read") != "BYTES_READ" || fieldName("message") != "ATTR_MESSAGE" {
		t.Errorf("field names: %s %s", fieldName("9bytes-read"), fieldName("message"))
	}
}
