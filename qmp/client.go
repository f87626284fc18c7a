package qmp

import (
	"context"
	"encoding/json"
	"fmt"

	goqmp "github.com/digitalocean/go-qemu/qmp"
)

// Monitor is go-qemu's QMP monitor interface. Its Run returns QEMU's raw reply
// to one command. Monitors of this package return error replies as bytes, so
// Client can keep their class; other monitors' errors are kept as they are.
type Monitor = goqmp.Monitor

// contextRunner is implemented by monitors that can abandon a command when
// its context ends.
type contextRunner interface {
	RunContext(ctx context.Context, command []byte) ([]byte, error)
}

// Client runs QMP commands over a Monitor. It is safe for concurrent use if
// its Monitor is.
type Client struct {
	mon Monitor
}

// NewClient returns a client over mon, which must be connected.
func NewClient(mon Monitor) *Client { return &Client{mon: mon} }

// Monitor returns the monitor the client runs commands on.
func (c *Client) Monitor() Monitor { return c.mon }

type command struct {
	Execute string `json:"execute"`
	Args    any    `json:"arguments,omitempty"`
}

type reply struct {
	Return json.RawMessage `json:"return"`
	Error  *struct {
		Class string `json:"class"`
		Desc  string `json:"desc"`
	} `json:"error"`
}

// Execute runs cmd with args (nil for none) and decodes its return value into
// out (nil to ignore it). An error reply is an *Error.
func (c *Client) Execute(ctx context.Context, cmd string, args, out any) error {
	b, err := json.Marshal(command{Execute: cmd, Args: args})
	if err != nil {
		return fmt.Errorf("qmp %s: encode arguments: %w", cmd, err)
	}
	raw, err := c.run(ctx, b)
	if err != nil {
		return fmt.Errorf("qmp %s: %w", cmd, err)
	}
	var r reply
	if err := json.Unmarshal(raw, &r); err != nil {
		return fmt.Errorf("qmp %s: %w: reply %.200q: %v", cmd, ErrProtocol, raw, err)
	}
	if r.Error != nil {
		return &Error{Command: cmd, Class: Class(r.Error.Class), Desc: r.Error.Desc}
	}
	if out == nil {
		return nil
	}
	if len(r.Return) == 0 {
		return fmt.Errorf("qmp %s: %w: reply has no return value: %.200q", cmd, ErrProtocol, raw)
	}
	if err := json.Unmarshal(r.Return, out); err != nil {
		return fmt.Errorf("qmp %s: %w: decode return value: %v", cmd, ErrProtocol, err)
	}
	return nil
}

func (c *Client) run(ctx context.Context, b []byte) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if cr, ok := c.mon.(contextRunner); ok {
		return cr.RunContext(ctx, b)
	}
	type result struct {
		b   []byte
		err error
	}
	done := make(chan result, 1)
	go func() {
		b, err := c.mon.Run(b)
		done <- result{b, err}
	}()
	select {
	case r := <-done:
		return r.b, r.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// HumanMonitorCommand runs an HMP command line and returns its output.
func (c *Client) HumanMonitorCommand(ctx context.Context, line string) (string, error) {
	var out string
	err := c.Execute(ctx, "human-monitor-command", map[string]string{"command-line": line}, &out)
	return out, err
}

// Status is the VM run state (query-status).
type Status struct {
	Running bool   `json:"running"`
	Status  string `json:"status"`
}

// QueryStatus returns the VM's run state.
func (c *Client) QueryStatus(ctx context.Context) (Status, error) {
	var s Status
	err := c.Execute(ctx, "query-status", nil, &s)
	return s, err
}
