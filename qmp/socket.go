package qmp

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"time"

	goqmp "github.com/digitalocean/go-qemu/qmp"
)

// SocketMonitor is a Monitor over a QMP socket of a QEMU process (started with
// -qmp unix:PATH,server=on,wait=off). Unlike go-qemu's socket monitor it
// returns error replies as bytes, so Client keeps their class, supports
// several commands in flight (matched by id), and abandons a command when its
// context ends.
type SocketMonitor struct {
	network, addr string
	timeout       time.Duration
	dial          func(ctx context.Context, network, addr string) (net.Conn, error)

	mu      sync.Mutex
	conn    net.Conn
	nextID  uint64
	pending map[string]chan []byte
	subs    map[chan goqmp.Event]struct{}
	readErr error
	done    chan struct{}
	writeMu sync.Mutex
}

var _ Monitor = (*SocketMonitor)(nil)

// NewSocketMonitor returns a monitor for the QMP server at addr on network
// ("unix" or "tcp"). timeout bounds connecting and the capabilities handshake.
func NewSocketMonitor(network, addr string, timeout time.Duration) *SocketMonitor {
	var d net.Dialer
	return &SocketMonitor{network: network, addr: addr, timeout: timeout, dial: d.DialContext}
}

// NewConnMonitor returns a monitor over an established connection, such as one
// end of net.Pipe in tests. Connect runs the handshake on it.
func NewConnMonitor(conn net.Conn, timeout time.Duration) *SocketMonitor {
	return &SocketMonitor{timeout: timeout, dial: func(context.Context, string, string) (net.Conn, error) { return conn, nil }}
}

// Connect dials QEMU, reads its greeting and negotiates capabilities.
func (m *SocketMonitor) Connect() error {
	ctx := context.Background()
	if m.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, m.timeout)
		defer cancel()
	}
	return m.ConnectContext(ctx)
}

// ConnectContext is Connect bounded by ctx.
func (m *SocketMonitor) ConnectContext(ctx context.Context) error {
	conn, err := m.dial(ctx, m.network, m.addr)
	if err != nil {
		return fmt.Errorf("qmp: connect to %s: %w", m.addr, err)
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	r := bufio.NewReader(conn)
	var greeting struct {
		QMP *json.RawMessage `json:"QMP"`
	}
	line, err := ReadLine(r, MaxLine)
	if err == nil {
		err = json.Unmarshal(line, &greeting)
	}
	if err != nil || greeting.QMP == nil {
		conn.Close()
		return fmt.Errorf("qmp: %s: %w: bad greeting %.200q: %v", m.addr, ErrProtocol, line, err)
	}
	if _, err := conn.Write([]byte(`{"execute":"qmp_capabilities"}` + "\n")); err != nil {
		conn.Close()
		return fmt.Errorf("qmp: %s: capabilities: %w", m.addr, err)
	}
	for {
		line, err := ReadLine(r, MaxLine)
		if err != nil {
			conn.Close()
			return fmt.Errorf("qmp: %s: capabilities: %w", m.addr, err)
		}
		var rep struct {
			Event  string          `json:"event"`
			Return json.RawMessage `json:"return"`
			Error  json.RawMessage `json:"error"`
		}
		if err := json.Unmarshal(line, &rep); err != nil {
			conn.Close()
			return fmt.Errorf("qmp: %s: %w: capabilities reply %.200q", m.addr, ErrProtocol, line)
		}
		if rep.Event != "" {
			continue
		}
		if rep.Error != nil {
			conn.Close()
			return fmt.Errorf("qmp: %s: capabilities refused: %s", m.addr, rep.Error)
		}
		break
	}
	_ = conn.SetDeadline(time.Time{})
	m.mu.Lock()
	m.conn = conn
	m.pending = make(map[string]chan []byte)
	m.subs = make(map[chan goqmp.Event]struct{})
	m.readErr = nil
	m.done = make(chan struct{})
	m.mu.Unlock()
	go m.readLoop(r, m.done)
	return nil
}

func (m *SocketMonitor) readLoop(r *bufio.Reader, done chan struct{}) {
	var err error
	for {
		var line []byte
		line, err = ReadLine(r, MaxLine)
		if err != nil {
			break
		}
		var msg struct {
			ID    json.RawMessage `json:"id"`
			Event string          `json:"event"`
		}
		if jerr := json.Unmarshal(line, &msg); jerr != nil {
			err = fmt.Errorf("%w: undecodable message %.200q", ErrProtocol, line)
			break
		}
		if msg.Event != "" {
			var ev goqmp.Event
			if json.Unmarshal(line, &ev) == nil {
				m.mu.Lock()
				for ch := range m.subs {
					select {
					case ch <- ev:
					default: // a slow subscriber loses events rather than stalling replies
					}
				}
				m.mu.Unlock()
			}
			continue
		}
		var id string
		_ = json.Unmarshal(msg.ID, &id)
		m.mu.Lock()
		ch, ok := m.pending[id]
		delete(m.pending, id)
		m.mu.Unlock()
		if ok {
			ch <- line
		}
	}
	m.mu.Lock()
	m.readErr = fmt.Errorf("qmp: %s: connection lost: %w", m.addr, err)
	for id := range m.pending {
		delete(m.pending, id)
	}
	for ch := range m.subs {
		close(ch)
		delete(m.subs, ch)
	}
	m.mu.Unlock()
	close(done)
}

// Disconnect closes the connection.
func (m *SocketMonitor) Disconnect() error {
	m.mu.Lock()
	conn, done := m.conn, m.done
	m.conn = nil
	m.mu.Unlock()
	if conn == nil {
		return nil
	}
	err := conn.Close()
	<-done
	return err
}

// Run runs one command and returns QEMU's reply, error replies included.
func (m *SocketMonitor) Run(command []byte) ([]byte, error) {
	return m.RunContext(context.Background(), command)
}

// RunContext is Run that gives up when ctx ends. QEMU may still carry the
// command out.
func (m *SocketMonitor) RunContext(ctx context.Context, command []byte) ([]byte, error) {
	var cmd map[string]json.RawMessage
	if err := json.Unmarshal(command, &cmd); err != nil {
		return nil, fmt.Errorf("qmp: command is not a JSON object: %w", err)
	}
	ch := make(chan []byte, 1)
	m.mu.Lock()
	if m.conn == nil {
		m.mu.Unlock()
		return nil, errors.New("qmp: monitor is not connected")
	}
	if m.readErr != nil {
		err := m.readErr
		m.mu.Unlock()
		return nil, err
	}
	m.nextID++
	id := "vk-" + strconv.FormatUint(m.nextID, 10)
	m.pending[id] = ch
	conn, done := m.conn, m.done
	m.mu.Unlock()
	cmd["id"], _ = json.Marshal(id)
	b, err := json.Marshal(cmd)
	if err != nil {
		return nil, err
	}
	m.writeMu.Lock()
	_, err = conn.Write(append(b, '\n'))
	m.writeMu.Unlock()
	if err != nil {
		m.forget(id)
		return nil, fmt.Errorf("qmp: send: %w", err)
	}
	select {
	case r := <-ch:
		return r, nil
	case <-done:
		m.mu.Lock()
		err := m.readErr
		m.mu.Unlock()
		return nil, err
	case <-ctx.Done():
		m.forget(id)
		return nil, ctx.Err()
	}
}

func (m *SocketMonitor) forget(id string) {
	m.mu.Lock()
	delete(m.pending, id)
	m.mu.Unlock()
}

// Events returns a channel of QMP events that is closed when ctx ends or the
// connection is lost. Events are dropped for a receiver that falls behind by
// more than 64.
func (m *SocketMonitor) Events(ctx context.Context) (<-chan goqmp.Event, error) {
	ch := make(chan goqmp.Event, 64)
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.conn == nil || m.readErr != nil {
		return nil, errors.New("qmp: monitor is not connected")
	}
	m.subs[ch] = struct{}{}
	context.AfterFunc(ctx, func() {
		m.mu.Lock()
		defer m.mu.Unlock()
		if _, ok := m.subs[ch]; ok {
			delete(m.subs, ch)
			close(ch)
		}
	})
	return ch, nil
}
