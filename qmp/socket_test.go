package qmp

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"net"
	"strings"
	"testing"
	"time"
)

// fakeQEMU serves QMP on one end of a pipe: it greets, accepts capabilities,
// and answers each command with handle's reply (the id is added).
func fakeQEMU(t *testing.T, conn net.Conn, handle func(cmd string, args json.RawMessage) string) {
	t.Helper()
	go func() {
		defer conn.Close()
		w := bufio.NewWriter(conn)
		send := func(s string) bool {
			if _, err := w.WriteString(s + "\n"); err != nil {
				return false
			}
			return w.Flush() == nil
		}
		if !send(`{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}}, "capabilities": []}}`) {
			return
		}
		r := bufio.NewReader(conn)
		for {
			line, err := r.ReadBytes('\n')
			if err != nil {
				return
			}
			var c struct {
				Execute string          `json:"execute"`
				Args    json.RawMessage `json:"arguments"`
				ID      json.RawMessage `json:"id"`
			}
			if json.Unmarshal(line, &c) != nil {
				return
			}
			if c.Execute == "qmp_capabilities" {
				send(`{"return": {}}`)
				continue
			}
			rep := handle(c.Execute, c.Args)
			if rep == "" {
				continue // never answer
			}
			if rep == "EVENT" {
				send(`{"event": "BLOCK_JOB_COMPLETED", "data": {"device": "x"}, "timestamp": {"seconds": 1, "microseconds": 2}}`)
				rep = `{"return": {}}`
			}
			if rep == "GARBAGE" {
				send(`not json`)
				return
			}
			var m map[string]json.RawMessage
			_ = json.Unmarshal([]byte(rep), &m)
			m["id"] = c.ID
			b, _ := json.Marshal(m)
			send(string(b))
		}
	}()
}

func newFake(t *testing.T, handle func(cmd string, args json.RawMessage) string) *Client {
	t.Helper()
	a, b := net.Pipe()
	fakeQEMU(t, b, handle)
	mon := NewConnMonitor(a, 5*time.Second)
	if err := mon.Connect(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = mon.Disconnect() })
	return NewClient(mon)
}

const nodesReply = `{"return": [
 {"node-name": "fmt0", "drv": "qcow2", "file": "/x.qcow2", "ro": false,
  "image": {"virtual-size": 1048576, "format": "qcow2", "cluster-size": 65536},
  "dirty-bitmaps": [{"name": "cp1", "count": 65536, "granularity": 65536, "recording": true, "busy": false, "persistent": true, "inconsistent": true}]},
 {"node-name": "file0", "drv": "file", "file": "/x.qcow2", "ro": false, "image": {"virtual-size": 2000000}}
]}`

func TestClientTyped(t *testing.T) {
	var got []string
	c := newFake(t, func(cmd string, args json.RawMessage) string {
		got = append(got, cmd+" "+string(args))
		switch cmd {
		case "query-named-block-nodes":
			return nodesReply
		case "transaction":
			return `{"return": {}}`
		case "device_del":
			return `{"error": {"class": "DeviceNotFound", "desc": "Device 'nope' not found"}}`
		}
		return `{"error": {"class": "CommandNotFound", "desc": "The command ` + cmd + ` has not been found"}}`
	})
	ctx := context.Background()
	bm, err := c.Bitmap(ctx, "fmt0", "cp1")
	if err != nil {
		t.Fatal(err)
	}
	want := DirtyBitmap{Name: "cp1", Count: 65536, Granularity: 65536, Recording: true, Persistent: true, Inconsistent: true}
	if bm != want {
		t.Fatalf("bitmap %+v, want %+v", bm, want)
	}
	if _, err := c.Bitmap(ctx, "fmt0", "cp2"); !errors.Is(err, ErrBitmapNotFound) || !strings.Contains(err.Error(), `"cp2"`) {
		t.Errorf("unknown bitmap: %v", err)
	}
	if _, err := c.Bitmaps(ctx, "nosuch"); !errors.Is(err, ErrNodeNotFound) || !strings.Contains(err.Error(), `"nosuch"`) {
		t.Errorf("unknown node: %v", err)
	}
	err = c.Execute(ctx, "device_del", map[string]string{"id": "nope"}, nil)
	var qe *Error
	if !errors.As(err, &qe) || qe.Class != ClassDeviceNotFound || !errors.Is(err, ClassDeviceNotFound) || errors.Is(err, ClassGenericError) {
		t.Errorf("error class lost: %#v", err)
	}
	if err := c.Execute(ctx, "nosuch", nil, nil); !errors.Is(err, ClassCommandNotFound) {
		t.Errorf("unknown command: %v", err)
	}

	// A transaction is checked before it is sent; later actions see earlier ones.
	got = nil
	if err := c.Transaction(ctx, AddBitmap("fmt0", "cp2", BitmapOptions{Persistent: true}), MergeBitmaps("fmt0", "cp2", "cp1"), RemoveBitmap("fmt0", "cp1")); err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || !strings.HasPrefix(got[1], `transaction {"actions":[{"type":"block-dirty-bitmap-add","data":{"node":"fmt0","name":"cp2","persistent":true}}`) {
		t.Errorf("sent %q", got)
	}
	got = nil
	if err := c.Transaction(ctx, RemoveBitmap("fmt0", "cp1"), ClearBitmap("fmt0", "cp1")); !errors.Is(err, ErrBitmapNotFound) {
		t.Errorf("clear after remove: %v", err)
	}
	if err := c.Transaction(ctx, AddBitmap("fmtX", "a", BitmapOptions{})); !errors.Is(err, ErrNodeNotFound) || !strings.Contains(err.Error(), "fmtX") {
		t.Errorf("add on unknown node: %v", err)
	}
	if len(got) != 2 { // two queries, no transaction
		t.Errorf("sent %q", got)
	}
}

func TestClientContextAndProtocol(t *testing.T) {
	c := newFake(t, func(cmd string, _ json.RawMessage) string {
		switch cmd {
		case "hang":
			return ""
		case "event":
			return "EVENT"
		case "garbage":
			return "GARBAGE"
		case "noreturn":
			return `{"foo": 1}`
		}
		return `{"return": {"running": false, "status": "paused"}}`
	})
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := c.Execute(ctx, "hang", nil, nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("hung command: %v", err)
	}
	// The connection still works after an abandoned command.
	s, err := c.QueryStatus(context.Background())
	if err != nil || s.Status != "paused" {
		t.Fatalf("status %+v, %v", s, err)
	}
	if err := c.Execute(context.Background(), "noreturn", nil, &s); !errors.Is(err, ErrProtocol) {
		t.Errorf("reply without return: %v", err)
	}
	evctx, evcancel := context.WithCancel(context.Background())
	events, err := c.Monitor().Events(evctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Execute(context.Background(), "event", nil, nil); err != nil {
		t.Fatal(err)
	}
	select {
	case ev := <-events:
		if ev.Event != "BLOCK_JOB_COMPLETED" || ev.Data["device"] != "x" {
			t.Errorf("event %+v", ev)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no event")
	}
	evcancel()
	for range events { // closed once the context ends
	}
	// Garbage from QEMU is a protocol error, and later commands fail at once.
	if err := c.Execute(context.Background(), "garbage", nil, nil); !errors.Is(err, ErrProtocol) {
		t.Errorf("garbage reply: %v", err)
	}
	if err := c.Execute(context.Background(), "query-status", nil, nil); err == nil {
		t.Error("command on a broken connection succeeded")
	}
}

func TestConnectBadGreeting(t *testing.T) {
	a, b := net.Pipe()
	go func() {
		_, _ = b.Write([]byte("hello\n"))
		b.Close()
	}()
	err := NewConnMonitor(a, time.Second).Connect()
	if !errors.Is(err, ErrProtocol) {
		t.Fatalf("bad greeting: %v", err)
	}
	a2, b2 := net.Pipe()
	defer b2.Close()
	start := time.Now()
	if err := NewConnMonitor(a2, 100*time.Millisecond).Connect(); err == nil {
		t.Fatal("silent server: connected")
	}
	if time.Since(start) > 5*time.Second {
		t.Fatal("silent server: connect did not time out")
	}
}
