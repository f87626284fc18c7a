package nbd

import (
	"context"
	"encoding/binary"
	"io"
	"net"
	"testing"
	"time"
)

// FuzzReplies feeds arbitrary bytes as the server's replies to a READ and a
// BLOCK_STATUS (cookies 1 and 2) after a valid handshake. The client must
// return an error or data, never panic or hang.
func FuzzReplies(f *testing.F) {
	f.Add(chunk(replyFlagDone, replyTypeOffsetData, 1, append(u64(0), make([]byte, 512)...)))
	f.Add(append(chunk(0, replyTypeOffsetHole, 1, binary.BigEndian.AppendUint32(u64(0), 256)),
		chunk(replyFlagDone, replyTypeOffsetData, 1, append(u64(256), make([]byte, 256)...))...))
	f.Add(chunk(replyFlagDone, replyTypeError, 1, []byte{0, 0, 0, 5, 0, 2, 'h', 'i'}))
	bs := binary.BigEndian.AppendUint32(nil, 1)
	bs = binary.BigEndian.AppendUint32(bs, 512)
	bs = binary.BigEndian.AppendUint32(bs, 3)
	f.Add(append(chunk(replyFlagDone, replyTypeOffsetData, 1, append(u64(0), make([]byte, 512)...)), chunk(replyFlagDone, replyTypeBlockStatus, 2, bs)...))
	simple := binary.BigEndian.AppendUint32(nil, simpleMagic)
	simple = binary.BigEndian.AppendUint32(simple, 0)
	simple = binary.BigEndian.AppendUint64(simple, 1)
	f.Add(append(simple, make([]byte, 512)...))
	f.Fuzz(func(t *testing.T, data []byte) {
		a, b := net.Pipe()
		go func() {
			defer b.Close()
			sent := false
			fakeServer(&onceConn{Conn: b, onRequest: func() []byte {
				if sent {
					return nil
				}
				sent = true
				return data
			}}, 1<<20, func(uint16, uint64, int64, uint32) []byte { return nil })
		}()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		c, err := NewClient(ctx, a, Options{MetaContexts: []string{ContextBaseAllocation}})
		if err != nil {
			t.Fatalf("handshake: %v", err)
		}
		defer c.Close()
		done := make(chan struct{}, 2)
		go func() { _ = c.Read(ctx, make([]byte, 512), 0); done <- struct{}{} }()
		go func() { _, _ = c.BlockStatus(ctx, 0, 512); done <- struct{}{} }()
		<-done
		<-done
	})
}

// onceConn writes data from onRequest after the first request header the
// server reads in transmission, then closes: the client sees the fuzzed
// bytes and then EOF, so no iteration waits for a timeout.
type onceConn struct {
	net.Conn
	onRequest func() []byte
	reads     int
}

func (c *onceConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n >= 28 && binary.BigEndian.Uint32(p) == requestMagic {
		c.reads++
		if c.reads == 2 { // both requests are in: answer them, then hang up
			if d := c.onRequest(); d != nil {
				_, _ = c.Conn.Write(d)
			}
			c.Conn.Close()
			return 0, io.EOF
		}
	}
	return n, err
}

// FuzzHandshake feeds arbitrary bytes as everything the server says in the
// handshake.
func FuzzHandshake(f *testing.F) {
	g := binary.BigEndian.AppendUint64(nil, nbdMagic)
	g = binary.BigEndian.AppendUint64(g, ihaveOpt)
	g = binary.BigEndian.AppendUint16(g, flagFixedNewstyle|flagNoZeroes)
	rep := func(b []byte, opt, typ uint32, data []byte) []byte {
		b = binary.BigEndian.AppendUint64(b, optReplyMagc)
		b = binary.BigEndian.AppendUint32(b, opt)
		b = binary.BigEndian.AppendUint32(b, typ)
		b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
		return append(b, data...)
	}
	full := rep(append([]byte(nil), g...), optStructuredReply, repAck, nil)
	full = rep(full, optSetMetaContext, repMetaContext, append(binary.BigEndian.AppendUint32(nil, 1), ContextBaseAllocation...))
	full = rep(full, optSetMetaContext, repAck, nil)
	exp := binary.BigEndian.AppendUint16(nil, infoExport)
	exp = binary.BigEndian.AppendUint64(exp, 1<<20)
	exp = binary.BigEndian.AppendUint16(exp, 3)
	full = rep(full, optGo, repInfo, exp)
	full = rep(full, optGo, repInfo, []byte{0, 3, 0, 0, 0, 1, 0, 0, 16, 0, 2, 0, 0, 0})
	full = rep(full, optGo, repAck, nil)
	f.Add(full)
	f.Add(g)
	f.Add(rep(append([]byte(nil), g...), optStructuredReply, repErrUnsup, nil))
	f.Fuzz(func(t *testing.T, data []byte) {
		a, b := net.Pipe()
		go func() { _, _ = io.Copy(io.Discard, b) }()
		go func() { _, _ = b.Write(data); b.Close() }()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		c, err := NewClient(ctx, a, Options{MetaContexts: []string{ContextBaseAllocation}})
		if err == nil {
			if c.Size() < 0 || c.Info().MaxBlock == 0 {
				t.Fatalf("accepted bad info %+v", c.Info())
			}
			c.Close()
		}
		a.Close()
	})
}
