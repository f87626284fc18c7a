package virt

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"sync"
	"time"
)

// ErrTimeout is returned by WaitFor when time runs out.
var ErrTimeout = errors.New("timed out")

// WaitFor polls ok every 20 ms for up to d.
func WaitFor(ctx context.Context, d time.Duration, ok func() bool) error {
	for deadline := time.Now().Add(d); ; time.Sleep(20 * time.Millisecond) {
		if ok() {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if time.Now().After(deadline) {
			return ErrTimeout
		}
	}
}

// Process is a helper process that serves on a unix socket (qemu-nbd, an
// NBD server of a point).
type Process struct {
	cmd    *exec.Cmd
	out    *lockedBuffer // nil when the caller sent the output elsewhere
	exited chan struct{}
	err    error // of Wait, once exited is closed
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return string(bytes.TrimSpace(l.b.Bytes()))
}

// StartListening starts cmd and waits, up to timeout, until it accepts on
// sock. Its output is kept for errors unless cmd.Stdout is set. When it
// fails the process is killed, unless it already exited.
func StartListening(ctx context.Context, cmd *exec.Cmd, sock string, timeout time.Duration) (*Process, error) {
	p := &Process{cmd: cmd, exited: make(chan struct{})}
	if cmd.Stdout == nil && cmd.Stderr == nil {
		p.out = &lockedBuffer{}
		cmd.Stdout, cmd.Stderr = p.out, p.out
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", cmd.Path, err)
	}
	go func() { p.err = cmd.Wait(); close(p.exited) }()
	for start := time.Now(); ; {
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			return p, nil
		}
		select {
		case <-p.exited:
			return nil, fmt.Errorf("%s exited: %s", cmd.Path, p.output())
		case <-ctx.Done():
			p.Kill()
			return nil, ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
		if time.Since(start) > timeout {
			p.Kill()
			return nil, fmt.Errorf("%s did not listen on %s in %v", cmd.Path, sock, timeout)
		}
	}
}

func (p *Process) output() string {
	if p.out == nil {
		return "(see its log)"
	}
	return p.out.String()
}

// PID is the process's ID.
func (p *Process) PID() int { return p.cmd.Process.Pid }

// Kill kills the process and waits for it.
func (p *Process) Kill() {
	_ = p.cmd.Process.Kill()
	<-p.exited
}

// Wait waits up to timeout for the process to exit by itself (qemu-nbd
// when its client leaves), then kills it; it returns the exit's error.
func (p *Process) Wait(timeout time.Duration) error {
	select {
	case <-p.exited:
		if p.err != nil {
			return fmt.Errorf("%s: %v: %s", p.cmd.Path, p.err, p.output())
		}
		return nil
	case <-time.After(timeout):
		p.Kill()
		return fmt.Errorf("%s did not exit in %v", p.cmd.Path, timeout)
	}
}
