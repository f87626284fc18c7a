package nbd

import (
	"context"
	"encoding/binary"
	"errors"
	"strings"
	"testing"
	"time"
)

func u64(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }

func TestProtocolViolations(t *testing.T) {
	type respond = func(cmd uint16, cookie uint64, off int64, length uint32) []byte
	cases := []struct {
		name    string
		respond respond
		want    string
	}{
		{"bad reply magic", func(_ uint16, c uint64, _ int64, _ uint32) []byte {
			return []byte{1, 2, 3, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}
		}, "reply magic"},
		{"unknown cookie", func(_ uint16, c uint64, _ int64, _ uint32) []byte {
			return chunk(replyFlagDone, replyTypeNone, c+100, nil)
		}, "unknown cookie"},
		{"data past the request", func(_ uint16, c uint64, off int64, l uint32) []byte {
			return chunk(replyFlagDone, replyTypeOffsetData, c, append(u64(uint64(off)+1), make([]byte, l)...))
		}, "outside the request"},
		{"data before the request", func(_ uint16, c uint64, off int64, l uint32) []byte {
			return chunk(replyFlagDone, replyTypeOffsetData, c, append(u64(uint64(off)-1), make([]byte, 1)...))
		}, "outside the request"},
		{"hole past the request", func(_ uint16, c uint64, off int64, l uint32) []byte {
			p := binary.BigEndian.AppendUint32(u64(uint64(off)), l+1)
			return chunk(replyFlagDone, replyTypeOffsetHole, c, p)
		}, "outside the request"},
		{"hole with wrong length", func(_ uint16, c uint64, off int64, l uint32) []byte {
			return chunk(replyFlagDone, replyTypeOffsetHole, c, u64(uint64(off)))
		}, "OFFSET_HOLE chunk of 8 bytes"},
		{"short read reply", func(_ uint16, c uint64, off int64, l uint32) []byte {
			return chunk(replyFlagDone, replyTypeOffsetData, c, append(u64(uint64(off)), make([]byte, l-1)...))
		}, "covered"},
		{"none chunk with data", func(_ uint16, c uint64, _ int64, _ uint32) []byte {
			return chunk(replyFlagDone, replyTypeNone, c, []byte{1})
		}, "NONE chunk"},
		{"unknown chunk type", func(_ uint16, c uint64, _ int64, _ uint32) []byte {
			return chunk(replyFlagDone, 77, c, nil)
		}, "unknown chunk type"},
		{"error chunk with bad message length", func(_ uint16, c uint64, _ int64, _ uint32) []byte {
			p := binary.BigEndian.AppendUint32(nil, 5)
			p = binary.BigEndian.AppendUint16(p, 100)
			return chunk(replyFlagDone, replyTypeError, c, append(p, "short"...))
		}, "error chunk"},
		{"error chunk with errno 0", func(_ uint16, c uint64, _ int64, _ uint32) []byte {
			p := binary.BigEndian.AppendUint32(nil, 0)
			p = binary.BigEndian.AppendUint16(p, 0)
			return chunk(replyFlagDone, replyTypeError, c, p)
		}, "errno 0"},
		{"block status chunk for a read", func(_ uint16, c uint64, _ int64, _ uint32) []byte {
			return chunk(replyFlagDone, replyTypeBlockStatus, c, make([]byte, 12))
		}, "BLOCK_STATUS chunk"},
		{"two data chunks over one half", func(_ uint16, c uint64, off int64, l uint32) []byte {
			half := make([]byte, l/2)
			out := chunk(0, replyTypeOffsetData, c, append(u64(uint64(off)), half...))
			return append(out, chunk(replyFlagDone, replyTypeOffsetData, c, append(u64(uint64(off)), half...))...)
		}, "overlaps"},
		{"a hole inside a data chunk", func(_ uint16, c uint64, off int64, l uint32) []byte {
			out := chunk(0, replyTypeOffsetData, c, append(u64(uint64(off)), make([]byte, l/2)...))
			return append(out, chunk(replyFlagDone, replyTypeOffsetHole, c, binary.BigEndian.AppendUint32(u64(uint64(off)+1), l/2))...)
		}, "overlaps"},
		{"connection closed mid-reply", func(_ uint16, c uint64, off int64, l uint32) []byte {
			return chunk(replyFlagDone, replyTypeOffsetData, c, u64(uint64(off)))[:24]
		}, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			calls := 0
			c := dialFake(t, 1<<20, func(cmd uint16, cookie uint64, off int64, l uint32) []byte {
				calls++
				out := tc.respond(cmd, cookie, off, l)
				if tc.name == "connection closed mid-reply" {
					return append(out, 0xff) // then the fake stops answering; the pipe closes on Close
				}
				return out
			})
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			err := c.Read(ctx, make([]byte, 4096), 8192)
			if err == nil {
				t.Fatal("no error")
			}
			if tc.want != "" && (!errors.Is(err, ErrProtocol) || !strings.Contains(err.Error(), tc.want)) {
				t.Fatalf("error %q, want ErrProtocol mentioning %q", err, tc.want)
			}
			// The connection is dead afterwards, and says so at once.
			if tc.want != "" {
				if err2 := c.Read(ctx, make([]byte, 512), 0); err2 == nil {
					t.Fatal("connection still used after a violation")
				}
			}
		})
	}
}

func TestServerErrorsAndBlockStatus(t *testing.T) {
	c := dialFake(t, 1<<20, func(cmd uint16, cookie uint64, off int64, l uint32) []byte {
		switch {
		case cmd == cmdRead && off == 0:
			msg := "disk on fire"
			p := binary.BigEndian.AppendUint32(nil, errIO)
			p = binary.BigEndian.AppendUint16(p, uint16(len(msg)))
			p = append(p, msg...)
			p = append(p, u64(uint64(off)+512)...)
			return chunk(replyFlagDone, replyTypeErrorOffset, cookie, p)
		case cmd == cmdRead:
			// Data and a hole in two chunks, then a NONE to finish.
			var out []byte
			out = append(out, chunk(0, replyTypeOffsetHole, cookie, binary.BigEndian.AppendUint32(u64(uint64(off)), 512))...)
			d := make([]byte, l-512)
			for i := range d {
				d[i] = 0xab
			}
			out = append(out, chunk(0, replyTypeOffsetData, cookie, append(u64(uint64(off)+512), d...))...)
			return append(out, chunk(replyFlagDone, replyTypeNone, cookie, nil)...)
		case cmd == cmdBlockStatus && off == 0:
			// Two extents; the last runs past the request.
			p := binary.BigEndian.AppendUint32(nil, 1)
			p = binary.BigEndian.AppendUint32(p, 4096)
			p = binary.BigEndian.AppendUint32(p, StateHole|StateZero)
			p = binary.BigEndian.AppendUint32(p, 1<<20)
			p = binary.BigEndian.AppendUint32(p, 0)
			return chunk(replyFlagDone, replyTypeBlockStatus, cookie, p)
		case cmd == cmdBlockStatus:
			p := binary.BigEndian.AppendUint32(nil, 9) // unknown context id
			p = binary.BigEndian.AppendUint32(p, 4096)
			p = binary.BigEndian.AppendUint32(p, 0)
			return chunk(replyFlagDone, replyTypeBlockStatus, cookie, p)
		}
		return nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := c.Read(ctx, make([]byte, 4096), 0)
	var re *RequestError
	if !errors.As(err, &re) || re.Errno != EIO || re.Offset != 512 || re.Message != "disk on fire" || !errors.Is(err, EIO) {
		t.Fatalf("error reply: %#v", err)
	}
	// A request error leaves the connection usable.
	b := make([]byte, 4096)
	for i := range b {
		b[i] = 1
	}
	if err := c.Read(ctx, b, 4096); err != nil {
		t.Fatal(err)
	}
	for i, v := range b {
		if (i < 512 && v != 0) || (i >= 512 && v != 0xab) {
			t.Fatalf("byte %d = %#x", i, v)
		}
	}
	m, err := c.BlockStatus(ctx, 0, 65536)
	if err != nil {
		t.Fatal(err)
	}
	want := []Extent{{0, 4096, StateHole | StateZero}, {4096, 65536 - 4096, 0}}
	if got := m[ContextBaseAllocation]; len(got) != 2 || got[0] != want[0] || got[1] != want[1] {
		t.Fatalf("extents %v, want %v", got, want)
	}
	if _, err := c.BlockStatus(ctx, 4096, 4096); !errors.Is(err, ErrProtocol) || !strings.Contains(err.Error(), "unknown meta context id 9") {
		t.Fatalf("unknown context id: %v", err)
	}
}

func TestHangingServerAndCancel(t *testing.T) {
	c := dialFake(t, 1<<20, func(uint16, uint64, int64, uint32) []byte { return nil })
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	if err := c.Read(ctx, make([]byte, 512), 0); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("hung read: %v", err)
	}
	if time.Since(start) > 5*time.Second {
		t.Fatal("read did not honour its deadline")
	}
	// Handshake with a silent server times out too.
	a, b := netPipe()
	defer b.Close()
	hctx, hcancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer hcancel()
	if _, err := NewClient(hctx, a, Options{}); err == nil {
		t.Fatal("handshake with a silent server succeeded")
	}
}

// TestOutOfOrderChunks: chunks of one read may come in any order; only
// overlaps are refused.
func TestOutOfOrderChunks(t *testing.T) {
	c := dialFake(t, 1<<20, func(_ uint16, cookie uint64, off int64, l uint32) []byte {
		q := l / 4
		var out []byte
		for _, i := range []uint32{3, 1, 0, 2} {
			if i%2 == 0 {
				out = append(out, chunk(0, replyTypeOffsetHole, cookie, binary.BigEndian.AppendUint32(u64(uint64(off)+uint64(i*q)), q))...)
				continue
			}
			d := make([]byte, q)
			for j := range d {
				d[j] = byte(i)
			}
			out = append(out, chunk(0, replyTypeOffsetData, cookie, append(u64(uint64(off)+uint64(i*q)), d...))...)
		}
		return append(out, chunk(replyFlagDone, replyTypeNone, cookie, nil)...)
	})
	b := make([]byte, 4096)
	for i := range b {
		b[i] = 0xee
	}
	if err := c.Read(context.Background(), b, 0); err != nil {
		t.Fatal(err)
	}
	for i, v := range b {
		if want := [4]byte{0, 1, 0, 3}[i/1024]; v != want {
			t.Fatalf("byte %d = %#x, want %#x", i, v, want)
		}
	}
}

// TestTinyMaxBlock: a server advertising a maximum block size under 4 KiB
// (every read cut into byte-sized requests) is refused at the handshake.
func TestTinyMaxBlock(t *testing.T) {
	for _, mx := range []uint32{1, 4095} {
		a, b := netPipe()
		info := binary.BigEndian.AppendUint16(nil, infoBlockSize)
		info = binary.BigEndian.AppendUint32(info, 1)
		info = binary.BigEndian.AppendUint32(info, 1)
		info = binary.BigEndian.AppendUint32(info, mx)
		go fakeServerInfo(b, 1<<20, [][]byte{info}, func(uint16, uint64, int64, uint32) []byte { return nil })
		_, err := NewClient(context.Background(), a, Options{})
		a.Close()
		if !errors.Is(err, ErrProtocol) || !strings.Contains(err.Error(), "block sizes") {
			t.Fatalf("max block %d: %v", mx, err)
		}
	}
}

// TestClientTimeouts: a server that stalls in the handshake, or never
// answers a request, fails the client with ErrTimeout instead of hanging
// it, even when the caller's context has no deadline.
func TestClientTimeouts(t *testing.T) {
	a, b := netPipe()
	defer b.Close()
	start := time.Now()
	if _, err := NewClient(context.Background(), a, Options{HandshakeTimeout: 200 * time.Millisecond}); !errors.Is(err, ErrTimeout) {
		t.Fatalf("stalled handshake: %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("stalled handshake took %v", d)
	}
	a, b = netPipe()
	go fakeServer(b, 1<<20, func(uint16, uint64, int64, uint32) []byte { return nil })
	c, err := NewClient(context.Background(), a, Options{RequestTimeout: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Read(context.Background(), make([]byte, 512), 0); !errors.Is(err, ErrTimeout) {
		t.Fatalf("unanswered read: %v", err)
	}
	if err := c.Read(context.Background(), make([]byte, 512), 0); err == nil {
		t.Fatal("connection used after a timed-out request")
	}
}
