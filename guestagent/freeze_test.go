package guestagent

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/virtkeep/virtkeep/qmp"
)

// fakeAgent is an in-memory qemu-guest-agent.
type fakeAgent struct {
	mu       sync.Mutex
	frozen   bool
	down     bool           // every command is unavailable
	hangOn   string         // this command never answers (until ctx ends)
	failOn   string         // this command returns an agent error
	execExit map[string]int // guest-exec path -> exit code
	calls    []string
}

func (f *fakeAgent) Command(ctx context.Context, cmd string, args, out any) error {
	f.mu.Lock()
	f.calls = append(f.calls, cmd)
	down, hang, fail := f.down, f.hangOn == cmd, f.failOn == cmd
	f.mu.Unlock()
	if down {
		return ErrUnavailable
	}
	if hang {
		<-ctx.Done()
		return ErrUnavailable
	}
	if fail {
		return &Error{Command: cmd, Class: "GenericError", Desc: "injected"}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	set := func(v any) {
		if out != nil {
			b, _ := json.Marshal(v)
			_ = json.Unmarshal(b, out)
		}
	}
	switch cmd {
	case "guest-fsfreeze-status":
		set(map[bool]string{true: "frozen", false: "thawed"}[f.frozen])
	case "guest-fsfreeze-freeze", "guest-fsfreeze-freeze-list":
		f.frozen = true
		set(2)
	case "guest-fsfreeze-thaw":
		f.frozen = false
		set(2)
	case "guest-exec":
		set(map[string]int{"pid": 7})
		b, _ := json.Marshal(args)
		var a struct {
			Path string `json:"path"`
		}
		_ = json.Unmarshal(b, &a)
		f.calls = append(f.calls, "exec:"+a.Path)
	case "guest-exec-status":
		code := 0
		for p, c := range f.execExit {
			if strings.Contains(strings.Join(f.calls, " "), "exec:"+p) {
				code = c
			}
		}
		set(map[string]any{"exited": code >= 0, "exitcode": code, "out-data": base64.StdEncoding.EncodeToString([]byte("out"))})
	}
	return nil
}

func freezer(t *testing.T, a Agent) *Freezer {
	return &Freezer{Agent: a, Journal: Journal{Dir: filepath.Join(t.TempDir(), "freeze")}, Intent: Intent{Kind: "socket", Target: "/x.sock", Name: "vm"}}
}

func TestFreezeThaw(t *testing.T) {
	a := &fakeAgent{}
	f := freezer(t, a)
	ctx := context.Background()
	fz, err := f.Freeze(ctx, Policy{Level: FS})
	if err != nil || fz.Level != FS || !a.frozen {
		t.Fatalf("freeze: %+v %v", fz, err)
	}
	if pend, _ := f.Journal.Pending(); len(pend) != 1 || pend[0].Name != "vm" {
		t.Fatalf("no intent recorded while frozen: %v", pend)
	}
	time.Sleep(5 * time.Millisecond)
	d, err := fz.Thaw(ctx)
	if err != nil || a.frozen || d <= 0 {
		t.Fatalf("thaw: %v %v frozen=%v", d, err, a.frozen)
	}
	if pend, _ := f.Journal.Pending(); len(pend) != 0 {
		t.Fatalf("intent left after thaw: %v", pend)
	}
	if d2, _ := fz.Thaw(ctx); d2 != 0 {
		t.Fatal("second thaw did something")
	}
	// Crash level: nothing sent.
	a.calls = nil
	if fz, err := f.Freeze(ctx, Policy{Level: Crash}); err != nil || fz.Level != Crash || len(a.calls) != 0 {
		t.Fatalf("crash: %+v %v %v", fz, err, a.calls)
	}
	if _, err := f.Freeze(ctx, Policy{Level: "perfect"}); err == nil {
		t.Fatal("bad level accepted")
	}
}

func TestFreezeFallbacks(t *testing.T) {
	ctx := context.Background()
	// No agent: fallback, or an error wrapping ErrNotReached with Require.
	down := &fakeAgent{down: true}
	fz, err := freezer(t, down).Freeze(ctx, Policy{Level: FS})
	if err != nil || fz.Level != Crash || fz.Reason == "" {
		t.Fatalf("fallback: %+v %v", fz, err)
	}
	if _, err := freezer(t, down).Freeze(ctx, Policy{Level: FS, Require: true}); !errors.Is(err, ErrNotReached) || !errors.Is(err, ErrUnavailable) {
		t.Fatalf("require: %v", err)
	}
	// The freeze call hangs: it times out and the guest is thawed anyway.
	hang := &fakeAgent{hangOn: "guest-fsfreeze-freeze"}
	f := freezer(t, hang)
	fz, err = f.Freeze(ctx, Policy{Level: FS, FreezeTimeout: 50 * time.Millisecond})
	if err != nil || fz.Level != Crash || !strings.Contains(strings.Join(hang.calls, " "), "guest-fsfreeze-thaw") {
		t.Fatalf("hung freeze: %+v %v %v", fz, err, hang.calls)
	}
	if pend, _ := f.Journal.Pending(); len(pend) != 0 {
		t.Fatalf("intent left: %v", pend)
	}
	// Frozen by someone else: left alone.
	other := &fakeAgent{frozen: true}
	fz, err = freezer(t, other).Freeze(ctx, Policy{Level: FS})
	if err != nil || fz.Level != Crash || !other.frozen || strings.Contains(strings.Join(other.calls, " "), "thaw") {
		t.Fatalf("foreign freeze: %+v %v %v", fz, err, other.calls)
	}
	// Frozen by an interrupted run of ours: thawed first, then frozen again.
	ours := &fakeAgent{frozen: true}
	f = freezer(t, ours)
	if err := f.Journal.Record(f.Intent); err != nil {
		t.Fatal(err)
	}
	if fz, err := f.Freeze(ctx, Policy{Level: FS}); err != nil || fz.Level != FS {
		t.Fatalf("our leftover freeze: %+v %v", fz, err)
	}
}

func TestAppHooks(t *testing.T) {
	ctx := context.Background()
	a := &fakeAgent{execExit: map[string]int{"/bad": 3}}
	f := freezer(t, a)
	fz, err := f.Freeze(ctx, Policy{Level: App, PreFreeze: []Hook{{Path: "/bad"}}})
	if err != nil || fz.Level != Crash || a.frozen || !strings.Contains(fz.Reason, "exited 3") {
		t.Fatalf("failing hook: %+v %v", fz, err)
	}
	a2 := &fakeAgent{}
	fz, err = freezer(t, a2).Freeze(ctx, Policy{Level: App, PreFreeze: []Hook{{Path: "/flush"}}, PostThaw: []Hook{{Path: "/resume"}}})
	if err != nil || fz.Level != App {
		t.Fatalf("app: %+v %v", fz, err)
	}
	if _, err := fz.Thaw(ctx); err != nil {
		t.Fatal(err)
	}
	calls := strings.Join(a2.calls, " ")
	if !strings.Contains(calls, "exec:/flush") || !strings.Contains(calls, "exec:/resume") ||
		strings.Index(calls, "exec:/flush") > strings.Index(calls, "guest-fsfreeze-freeze") {
		t.Fatalf("hook order: %s", calls)
	}
}

func TestRecover(t *testing.T) {
	a := &fakeAgent{frozen: true}
	j := Journal{Dir: t.TempDir()}
	in := Intent{Kind: "socket", Target: "/vm.sock", Name: "vm", PID: -1}
	if err := j.Record(in); err != nil {
		t.Fatal(err)
	}
	err := Recover(context.Background(), j, func(got Intent) (Agent, error) {
		if got.Target != in.Target {
			t.Errorf("intent %+v", got)
		}
		return a, nil
	}, nil)
	if err != nil || a.frozen {
		t.Fatalf("recover: %v frozen=%v", err, a.frozen)
	}
	if pend, _ := j.Pending(); len(pend) != 0 {
		t.Fatalf("journal: %v", pend)
	}
}

// TestSocketAgent speaks the agent's wire protocol: a sync with 0xFF, a
// stale reply from an earlier command to skip, then the command.
func TestSocketAgent(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "ga.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func(c net.Conn) {
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadBytes('\n')
					if err != nil {
						return
					}
					var req struct {
						Execute string         `json:"execute"`
						Args    map[string]any `json:"arguments"`
					}
					_ = json.Unmarshal(trimFF(line), &req)
					switch req.Execute {
					case "guest-sync-delimited":
						// A reply left over from a timed-out command, then ours.
						c.Write([]byte(`{"return": "stale"}` + "\n"))
						b, _ := json.Marshal(map[string]any{"return": req.Args["id"]})
						c.Write(append([]byte{0xff}, append(b, '\n')...))
					case "guest-fsfreeze-status":
						c.Write([]byte(`{"return": "thawed"}` + "\n"))
					case "guest-info":
						c.Write([]byte(`{"error": {"class": "GenericError", "desc": "nope"}}` + "\n"))
					}
				}
			}(c)
		}
	}()
	a := &SocketAgent{Path: sock}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var st string
	if err := a.Command(ctx, "guest-fsfreeze-status", nil, &st); err != nil || st != "thawed" {
		t.Fatalf("status: %q %v", st, err)
	}
	var ae *Error
	if err := a.Command(ctx, "guest-info", nil, nil); !errors.As(err, &ae) || ae.Desc != "nope" {
		t.Fatalf("agent error: %v", err)
	}
	hctx, hcancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer hcancel()
	if err := a.Command(hctx, "guest-ping", nil, nil); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("unanswered command: %v", err)
	}
	if err := (&SocketAgent{Path: sock + ".missing"}).Command(ctx, "guest-ping", nil, nil); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("no socket: %v", err)
	}
}

// TestSocketAgentEndlessLine: an agent that answers with a line without
// end fails the command once the line passes qmp.MaxLine.
func TestSocketAgentEndlessLine(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "ga.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		_, _ = bufio.NewReader(c).ReadBytes('\n')
		_, _ = c.Write([]byte{0xff})
		buf := bytes.Repeat([]byte("a"), 1<<20)
		for {
			if _, err := c.Write(buf); err != nil {
				return
			}
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err = (&SocketAgent{Path: sock}).Command(ctx, "guest-ping", nil, nil)
	if !errors.Is(err, qmp.ErrLineTooLong) {
		t.Fatalf("endless agent line: %v", err)
	}
}
