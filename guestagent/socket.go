package guestagent

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"sync"
	"time"

	"github.com/virtkeep/virtkeep/qmp"
)

// SocketAgent reaches the agent of a QEMU process that libvirt does not
// manage, through the host side of its virtio-serial port (a unix socket
// chardev). Each command opens a fresh connection and resynchronises with
// guest-sync-delimited, so a reply left over from a timed-out command is
// never taken for the next one's.
type SocketAgent struct {
	Path string
	mu   sync.Mutex // the agent serves one client at a time
}

// Command runs one agent command within ctx's deadline (30 s without one).
func (a *SocketAgent) Command(ctx context.Context, cmd string, args, out any) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", a.Path)
	if err != nil {
		return fmt.Errorf("guest agent %s: %w: %v", cmd, ErrUnavailable, err)
	}
	defer conn.Close()
	dl, _ := ctx.Deadline()
	_ = conn.SetDeadline(dl)
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	r := bufio.NewReader(conn)
	id := rand.Int64N(1 << 40)
	sync, _ := json.Marshal(request{"guest-sync-delimited", map[string]int64{"id": id}})
	if _, err := conn.Write(append([]byte{0xff}, append(sync, '\n')...)); err != nil {
		return fmt.Errorf("guest agent %s: %w: %v", cmd, ErrUnavailable, err)
	}
	// Skip everything up to the 0xFF the agent sends before the sync reply.
	for {
		b, err := r.ReadByte()
		if err != nil {
			return fmt.Errorf("guest agent %s: %w: no answer to sync: %v", cmd, ErrUnavailable, err)
		}
		if b == 0xff {
			break
		}
	}
	for {
		line, err := qmp.ReadLine(r, qmp.MaxLine)
		if err != nil {
			return fmt.Errorf("guest agent %s: %w: %w", cmd, ErrUnavailable, err)
		}
		var got int64
		if err := decodeReply("guest-sync-delimited", trimFF(line), &got); err == nil && got == id {
			break
		}
	}
	b, err := json.Marshal(request{cmd, args})
	if err != nil {
		return err
	}
	if _, err := conn.Write(append(b, '\n')); err != nil {
		return fmt.Errorf("guest agent %s: %w: %v", cmd, ErrUnavailable, err)
	}
	line, err := qmp.ReadLine(r, qmp.MaxLine)
	if err != nil {
		return fmt.Errorf("guest agent %s: %w: %w", cmd, ErrUnavailable, err)
	}
	return decodeReply(cmd, line, out)
}

// trimFF drops the 0xFF delimiter bytes the agent sends before a sync reply.
func trimFF(b []byte) []byte {
	for len(b) > 0 && b[0] == 0xff {
		b = b[1:]
	}
	return b
}
