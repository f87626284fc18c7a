package guestagent

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// Consistency levels.
const (
	Crash = "crash" // no freeze: what the disk held when the power went out
	FS    = "fs"    // filesystems frozen through the agent
	App   = "app"   // fs, with application hooks run before the freeze and after the thaw
)

// Hook is a command run in the guest through guest-exec.
type Hook struct {
	Path    string        `json:"path"`
	Args    []string      `json:"args,omitempty"`
	Timeout time.Duration `json:"timeout,omitempty"` // default 30 s
}

// Policy says how to quiesce a guest.
type Policy struct {
	Level       string   // Crash, FS or App
	Mountpoints []string // freeze only these (default all)
	// Require fails the freeze instead of falling back to crash consistency.
	Require bool
	// PreFreeze and PostThaw run with App only. A pre-freeze hook that
	// fails or times out cancels the freeze.
	PreFreeze, PostThaw []Hook
	// FreezeTimeout bounds the freeze call (default 10 s).
	FreezeTimeout time.Duration
}

// ErrNotReached means the policy's level could not be reached and it was
// required.
var ErrNotReached = errors.New("consistency level not reached")

// Freezer quiesces one guest. It never leaves the guest frozen: every
// freeze is preceded by a durable intent record, every failure path thaws,
// and thawing runs on a fresh context with retries.
type Freezer struct {
	Agent   Agent
	Journal Journal
	Intent  Intent
	Log     *slog.Logger
}

// Frozen is a guest frozen by Freeze; Thaw it as soon as the backup job
// has started.
type Frozen struct {
	f        *Freezer
	p        Policy
	Level    string // what was reached: Crash after a fallback
	Reason   string // why the level is lower than asked
	frozenAt time.Time
	thawed   bool
}

func (f *Freezer) log() *slog.Logger {
	if f.Log != nil {
		return f.Log
	}
	return slog.New(slog.DiscardHandler)
}

// Freeze quiesces the guest per p. When p's level cannot be reached it
// falls back to crash consistency with a warning, or, with p.Require,
// returns an error wrapping ErrNotReached; either way the guest is thawed.
func (f *Freezer) Freeze(ctx context.Context, p Policy) (*Frozen, error) {
	fz := &Frozen{f: f, p: p, Level: Crash}
	if p.Level == "" || p.Level == Crash {
		return fz, nil
	}
	if p.Level != FS && p.Level != App {
		return nil, fmt.Errorf("consistency %q: want crash, fs or app", p.Level)
	}
	fail := func(reason string, err error) (*Frozen, error) {
		fz.Reason = fmt.Sprintf("%s: %v", reason, err)
		if p.Require {
			return nil, fmt.Errorf("%w (%s): %s: %w", ErrNotReached, p.Level, reason, err)
		}
		f.log().Warn("falling back to crash consistency", "asked", p.Level, "reason", fz.Reason)
		return fz, nil
	}
	sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	status, err := f.Status(sctx)
	cancel()
	if err != nil {
		return fail("guest agent does not answer", err)
	}
	if status == "frozen" {
		if !f.ours() {
			return fail("guest is already frozen by someone else", errors.New("left as it is"))
		}
		f.log().Warn("guest frozen by an interrupted run: thawing it first")
		if err := f.thaw(ctx); err != nil {
			return fail("thawing the guest left frozen by an interrupted run failed", err)
		}
	}
	if p.Level == App {
		for _, h := range p.PreFreeze {
			if err := f.runHook(ctx, "pre-freeze", h); err != nil {
				return fail("pre-freeze hook failed", err)
			}
		}
	}
	in := f.Intent.self()
	in.Since = time.Now().UTC()
	if err := f.Journal.Record(in); err != nil {
		return fail("cannot record the freeze intent", err)
	}
	timeout := p.FreezeTimeout
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	fctx, cancel := context.WithTimeout(ctx, timeout)
	var n int
	if len(p.Mountpoints) > 0 {
		err = f.Agent.Command(fctx, "guest-fsfreeze-freeze-list", map[string]any{"mountpoints": p.Mountpoints}, &n)
	} else {
		err = f.Agent.Command(fctx, "guest-fsfreeze-freeze", nil, &n)
	}
	cancel()
	if err != nil {
		// The freeze may have happened (in part) after we stopped waiting.
		if terr := f.thaw(ctx); terr != nil {
			f.log().Error("GUEST MAY BE FROZEN: thaw after a failed freeze failed", "err", terr)
		}
		return fail("freeze failed", err)
	}
	fz.frozenAt = time.Now()
	fz.Level = p.Level
	f.log().Info("guest frozen", "filesystems", n)
	return fz, nil
}

// Thaw thaws a frozen guest (a no-op after a fallback) and returns how long
// it was frozen: from the freeze call's return to the thaw call.
func (fz *Frozen) Thaw(ctx context.Context) (time.Duration, error) {
	if fz.frozenAt.IsZero() || fz.thawed {
		return 0, nil
	}
	d := time.Since(fz.frozenAt)
	fz.thawed = true
	if err := fz.f.thaw(ctx); err != nil {
		return d, err
	}
	if fz.p.Level == App {
		for _, h := range fz.p.PostThaw {
			if err := fz.f.runHook(context.WithoutCancel(ctx), "post-thaw", h); err != nil {
				fz.f.log().Warn("post-thaw hook failed", "hook", h.Path, "err", err)
			}
		}
	}
	return d, nil
}

// thaw thaws on a context of its own (a cancelled backup still thaws), with
// retries, checks the guest says thawed, and clears the intent record.
func (f *Freezer) thaw(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 60*time.Second)
	defer cancel()
	var err error
	for i := 0; i < 6; i++ {
		if i > 0 {
			time.Sleep(time.Duration(i) * 250 * time.Millisecond)
		}
		cctx, c := context.WithTimeout(ctx, 10*time.Second)
		err = f.Agent.Command(cctx, "guest-fsfreeze-thaw", nil, nil)
		var st string
		if err == nil {
			st, err = f.Status(cctx)
			if err == nil && st != "thawed" {
				err = fmt.Errorf("guest still says %q after thaw", st)
			}
		}
		c()
		if err == nil {
			return f.Journal.Done(f.Intent)
		}
		f.log().Warn("thaw attempt failed", "attempt", i+1, "err", err)
	}
	return fmt.Errorf("thaw: %w", err)
}

func (f *Freezer) ours() bool {
	pend, err := f.Journal.Pending()
	if err != nil {
		return false
	}
	for _, p := range pend {
		if p.Kind == f.Intent.Kind && p.Target == f.Intent.Target && p.URI == f.Intent.URI {
			return true
		}
	}
	return false
}

// Status is guest-fsfreeze-status: "thawed" or "frozen".
func (f *Freezer) Status(ctx context.Context) (string, error) {
	var s string
	err := f.Agent.Command(ctx, "guest-fsfreeze-status", nil, &s)
	return s, err
}

func (f *Freezer) runHook(ctx context.Context, kind string, h Hook) error {
	timeout := h.Timeout
	if timeout <= 0 {
		timeout = 30 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	res, err := Exec(ctx, f.Agent, h.Path, h.Args)
	f.log().Info("hook ran", "kind", kind, "hook", h.Path, "exit", res.ExitCode, "stdout", strings.TrimSpace(res.Stdout), "stderr", strings.TrimSpace(res.Stderr), "err", err)
	if err != nil {
		return fmt.Errorf("%s hook %s: %w", kind, h.Path, err)
	}
	if res.ExitCode != 0 {
		return fmt.Errorf("%s hook %s exited %d: %s", kind, h.Path, res.ExitCode, strings.TrimSpace(res.Stderr))
	}
	return nil
}

// ExecResult is what a command run in the guest did.
type ExecResult struct {
	ExitCode int
	// Stdout and Stderr are the command's output as text safe to log, show
	// on a terminal or mail: at most MaxOutput bytes each, control
	// characters but newline and tab replaced.
	Stdout, Stderr string
}

// MaxOutput is how much of a guest command's standard output and error is
// kept: the agent returns up to 16 MiB of each, which job logs, errors and
// notifications must not carry.
const MaxOutput = 16 << 10

// guestText decodes what the agent captured (base64) into Printable text
// of at most MaxOutput bytes, saying how much more there was.
func guestText(b64 string) string {
	raw, _ := base64.StdEncoding.DecodeString(b64[:min(len(b64), base64.StdEncoding.EncodedLen(MaxOutput+3))])
	total := base64.StdEncoding.DecodedLen(len(b64)) - strings.Count(b64[max(0, len(b64)-2):], "=")
	return Printable(string(raw[:min(len(raw), MaxOutput)]), MaxOutput, total-min(len(raw), MaxOutput))
}

// Printable makes text a guest chose (or that carries what it chose: a
// hook's output in a log line, an error) safe for a terminal, a log or a
// mail: control characters but newline and tab, and invalid UTF-8, become
// U+FFFD, so no escape sequence reaches a screen; it is cut at max bytes,
// and a note says how many bytes were left out (more, plus what was cut).
func Printable(s string, max, more int) string {
	if len(s) > max {
		more += len(s) - max
		s = s[:max]
	}
	var b strings.Builder
	for len(s) > 0 {
		r, n := utf8.DecodeRuneInString(s)
		switch {
		case r == utf8.RuneError && n <= 1, r != '\n' && r != '\t' && unicode.IsControl(r):
			b.WriteRune(utf8.RuneError)
		default:
			b.WriteString(s[:n])
		}
		s = s[n:]
	}
	if more > 0 {
		fmt.Fprintf(&b, " [%d more bytes not kept]", more)
	}
	return b.String()
}

// ErrExecTimeout means a guest command did not finish in time (it may still
// run in the guest: the agent cannot kill it).
var ErrExecTimeout = errors.New("guest command timed out")

// Exec runs path with args in the guest (guest-exec) and waits for it
// within ctx, polling guest-exec-status.
func Exec(ctx context.Context, a Agent, path string, args []string) (ExecResult, error) {
	var res ExecResult
	var started struct {
		PID int `json:"pid"`
	}
	if err := a.Command(ctx, "guest-exec", map[string]any{"path": path, "arg": args, "capture-output": true}, &started); err != nil {
		return res, err
	}
	for delay := 10 * time.Millisecond; ; delay = min(delay*2, 200*time.Millisecond) {
		var st struct {
			Exited   bool   `json:"exited"`
			ExitCode int    `json:"exitcode"`
			Signal   int    `json:"signal"`
			OutData  string `json:"out-data"`
			ErrData  string `json:"err-data"`
		}
		if err := a.Command(ctx, "guest-exec-status", map[string]int{"pid": started.PID}, &st); err != nil {
			if ctx.Err() != nil {
				return res, fmt.Errorf("%s: %w", path, ErrExecTimeout)
			}
			return res, err
		}
		if st.Exited {
			res = ExecResult{ExitCode: st.ExitCode, Stdout: guestText(st.OutData), Stderr: guestText(st.ErrData)}
			if st.Signal != 0 {
				res.ExitCode = 128 + st.Signal
			}
			return res, nil
		}
		select {
		case <-ctx.Done():
			return res, fmt.Errorf("%s: %w", path, ErrExecTimeout)
		case <-time.After(delay):
		}
	}
}

// ErrGone is returned by Recover's open for a guest that no longer
// exists: its record is retired, there is nothing to thaw.
var ErrGone = errors.New("guest no longer exists")

// Recover thaws every guest the journal says was frozen by a process that
// died before thawing it; a guest whose freezer still runs is left to it.
// open returns the agent of an intent's guest. Every record is tried: the
// first error (a damaged record, a thaw that failed) is returned.
func Recover(ctx context.Context, j Journal, open func(Intent) (Agent, error), log *slog.Logger) error {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	pend, first := j.Pending()
	for _, in := range pend {
		if in.PID == os.Getpid() || in.OwnerAlive() {
			continue
		}
		a, err := open(in)
		if errors.Is(err, ErrGone) {
			log.Warn("retiring the freeze record of a guest that no longer exists", "guest", in.Name, "target", in.Target, "since", in.Since)
			err = j.Done(in)
		} else if err == nil {
			f := &Freezer{Agent: a, Journal: j, Intent: in, Log: log}
			if err = f.thaw(ctx); err == nil {
				log.Warn("thawed a guest left frozen by an interrupted run", "guest", in.Name, "since", in.Since, "pid", in.PID)
			}
		}
		if err != nil && first == nil {
			first = fmt.Errorf("thaw %s %s (%s): %w", in.Kind, in.Target, in.Name, err)
		}
	}
	return first
}
