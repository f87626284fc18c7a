package systemd

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
)

// JournalSocket is where journald takes native-protocol entries.
const JournalSocket = "/run/systemd/journal/socket"

// UnderJournal reports whether standard error goes to the journal (systemd
// sets JOURNAL_STREAM to its device and inode) and journald listens.
func UnderJournal() bool {
	js := os.Getenv("JOURNAL_STREAM")
	if js == "" {
		return false
	}
	var st syscall.Stat_t
	if err := syscall.Fstat(2, &st); err != nil || fmt.Sprintf("%d:%d", st.Dev, st.Ino) != js {
		return false
	}
	_, err := os.Stat(JournalSocket)
	return err == nil
}

// JournalHandler is a slog.Handler that writes each record to journald as
// an entry of its own with structured fields: MESSAGE, PRIORITY,
// SYSLOG_IDENTIFIER, and one field per attribute (job=... becomes JOB=...,
// a group's attributes GROUP_KEY=...), so that journalctl JOB=... finds a
// job's lines.
type JournalHandler struct {
	conn  *net.UnixConn
	ident string
	level slog.Leveler
	attrs []slog.Attr
	group string
	mu    *sync.Mutex
}

// NewJournalHandler writes to the journald socket at path (JournalSocket).
func NewJournalHandler(path, ident string, level slog.Leveler) (*JournalHandler, error) {
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return nil, err
	}
	return &JournalHandler{conn: c, ident: ident, level: level, mu: &sync.Mutex{}}, nil
}

func (h *JournalHandler) Enabled(_ context.Context, l slog.Level) bool { return l >= h.level.Level() }

func (h *JournalHandler) WithAttrs(as []slog.Attr) slog.Handler {
	n := *h
	for _, a := range as {
		n.attrs = append(append([]slog.Attr(nil), n.attrs...), prefixed(h.group, a))
	}
	return &n
}

func (h *JournalHandler) WithGroup(name string) slog.Handler {
	n := *h
	n.group = joinKey(h.group, name)
	return &n
}

func joinKey(group, key string) string {
	if group == "" {
		return key
	}
	return group + "_" + key
}

func prefixed(group string, a slog.Attr) slog.Attr {
	return slog.Attr{Key: joinKey(group, a.Key), Value: a.Value}
}

// priority maps slog levels to syslog's.
func priority(l slog.Level) int {
	switch {
	case l >= slog.LevelError:
		return 3
	case l >= slog.LevelWarn:
		return 4
	case l >= slog.LevelInfo:
		return 6
	}
	return 7
}

// fieldName makes a journal field name of an attribute key: upper case
// letters, digits and underscores, not starting with one.
func fieldName(k string) string {
	b := []byte(strings.ToUpper(k))
	for i, c := range b {
		if !(c >= 'A' && c <= 'Z' || c >= '0' && c <= '9') {
			b[i] = '_'
		}
	}
	s := strings.TrimLeft(string(b), "_0123456789")
	if len(s) > 64 {
		s = s[:64]
	}
	if s == "" || s == "MESSAGE" || s == "PRIORITY" || s == "SYSLOG_IDENTIFIER" {
		s = "ATTR_" + s
	}
	return s
}

func (h *JournalHandler) Handle(_ context.Context, r slog.Record) error {
	var b bytes.Buffer
	text := r.Message
	field := func(k, v string) {
		if strings.ContainsRune(v, '\n') {
			// The binary form: name, newline, length, data.
			b.WriteString(k)
			b.WriteByte('\n')
			_ = binary.Write(&b, binary.LittleEndian, uint64(len(v)))
			b.WriteString(v)
			b.WriteByte('\n')
			return
		}
		fmt.Fprintf(&b, "%s=%s\n", k, v)
	}
	var attrs []slog.Attr
	attrs = append(attrs, h.attrs...)
	r.Attrs(func(a slog.Attr) bool { attrs = append(attrs, prefixed(h.group, a)); return true })
	for _, a := range attrs {
		v := a.Value.Resolve().String()
		field(fieldName(a.Key), v)
		text += " " + a.Key + "=" + v
	}
	field("MESSAGE", text)
	field("PRIORITY", fmt.Sprint(priority(r.Level)))
	field("SYSLOG_IDENTIFIER", h.ident)
	h.mu.Lock()
	defer h.mu.Unlock()
	_, err := h.conn.Write(b.Bytes())
	return err
}
