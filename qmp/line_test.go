package qmp

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"net"
	"runtime"
	"testing"
	"time"
)

// endless writes an endless line to w until it fails.
func endless(w net.Conn, prefix string) {
	_, _ = w.Write([]byte(prefix))
	buf := bytes.Repeat([]byte("a"), 1<<20)
	for {
		if _, err := w.Write(buf); err != nil {
			return
		}
	}
}

// TestEndlessLine: a QEMU (or guest agent behind one) that sends a line
// without end gets an error once the line passes MaxLine, not the host's
// memory.
func TestEndlessLine(t *testing.T) {
	r := bufio.NewReader(bytes.NewReader([]byte("short\n")))
	if l, err := ReadLine(r, 10); err != nil || string(l) != "short\n" {
		t.Fatalf("short line: %q %v", l, err)
	}
	r = bufio.NewReaderSize(bytes.NewReader(bytes.Repeat([]byte("x"), 100)), 16)
	if _, err := ReadLine(r, 50); !errors.Is(err, ErrLineTooLong) || !errors.Is(err, ErrProtocol) {
		t.Fatalf("long line: %v", err)
	}

	a, b := net.Pipe()
	go func() {
		defer b.Close()
		_, _ = b.Write([]byte(`{"QMP": {"version": {}, "capabilities": []}}` + "\n"))
		br := bufio.NewReader(b)
		_, _ = br.ReadBytes('\n')
		_, _ = b.Write([]byte(`{"return": {}}` + "\n"))
		_, _ = br.ReadBytes('\n')
		endless(b, `{"return": "`)
	}()
	mon := NewConnMonitor(a, 5*time.Second)
	if err := mon.Connect(); err != nil {
		t.Fatal(err)
	}
	defer mon.Disconnect()
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := NewClient(mon).Execute(ctx, "query-status", nil, nil)
	runtime.ReadMemStats(&after)
	if err == nil {
		t.Fatal("an endless reply was accepted")
	}
	if n := after.TotalAlloc - before.TotalAlloc; n > 8*MaxLine { // TotalAlloc counts the garbage of growing the line too
		t.Fatalf("an endless reply cost %d MiB", n>>20)
	}
}
