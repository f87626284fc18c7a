package guestagent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"time"

	"libvirt.org/go/libvirt"
)

// Agent sends commands to one guest's qemu-guest-agent. Command decodes the
// command's return value into out (nil to ignore it). A command that does
// not answer within ctx's deadline fails with an error wrapping
// ErrUnavailable; an error reply from the agent is an *Error.
type Agent interface {
	Command(ctx context.Context, cmd string, args, out any) error
}

// ErrUnavailable means no agent answered: none configured, not running in
// the guest, or not answering in time.
var ErrUnavailable = errors.New("guest agent unavailable")

// Error is an error reply from the agent.
type Error struct {
	Command string
	Class   string
	Desc    string
}

func (e *Error) Error() string {
	return fmt.Sprintf("guest agent %s: %s (%s)", e.Command, e.Desc, e.Class)
}

type request struct {
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

func decodeReply(cmd string, raw []byte, out any) error {
	var r reply
	if err := json.Unmarshal(raw, &r); err != nil {
		return fmt.Errorf("guest agent %s: undecodable reply %.200q: %w", cmd, raw, err)
	}
	if r.Error != nil {
		return &Error{Command: cmd, Class: r.Error.Class, Desc: r.Error.Desc}
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(r.Return, out); err != nil {
		return fmt.Errorf("guest agent %s: decode return value: %w", cmd, err)
	}
	return nil
}

// LibvirtAgent reaches a libvirt domain's agent through
// virDomainQemuAgentCommand.
type LibvirtAgent struct {
	Dom *libvirt.Domain
}

// Command runs one agent command; ctx's deadline (rounded up to whole
// seconds, at least 1) bounds the wait, 30 s when ctx has none.
func (a LibvirtAgent) Command(ctx context.Context, cmd string, args, out any) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	b, err := json.Marshal(request{cmd, args})
	if err != nil {
		return err
	}
	timeout := 30
	if dl, ok := ctx.Deadline(); ok {
		timeout = max(1, int(math.Ceil(time.Until(dl).Seconds())))
	}
	type result struct {
		s   string
		err error
	}
	done := make(chan result, 1)
	go func() {
		s, err := a.Dom.QemuAgentCommand(string(b), libvirt.DomainQemuAgentCommandTimeout(timeout), 0)
		done <- result{s, err}
	}()
	var r result
	select {
	case r = <-done:
	case <-ctx.Done():
		return fmt.Errorf("guest agent %s: %w: %w", cmd, ErrUnavailable, ctx.Err())
	}
	if r.err != nil {
		var le libvirt.Error
		if errors.As(r.err, &le) {
			switch le.Code {
			case libvirt.ERR_AGENT_UNRESPONSIVE, libvirt.ERR_AGENT_UNSYNCED, libvirt.ERR_ARGUMENT_UNSUPPORTED,
				libvirt.ERR_OPERATION_UNSUPPORTED, libvirt.ERR_OPERATION_INVALID, libvirt.ERR_OPERATION_TIMEOUT:
				return fmt.Errorf("guest agent %s: %w: %v", cmd, ErrUnavailable, r.err)
			case libvirt.ERR_AGENT_COMMAND_FAILED, libvirt.ERR_INTERNAL_ERROR:
				return &Error{Command: cmd, Class: "GenericError", Desc: le.Message}
			}
		}
		return fmt.Errorf("guest agent %s: %w", cmd, r.err)
	}
	return decodeReply(cmd, []byte(r.s), out)
}
