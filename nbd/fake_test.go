package nbd

import (
	"bufio"
	"context"
	"encoding/binary"
	"io"
	"net"
	"testing"
)

// fakeServer runs a minimal correct handshake (structured replies,
// base:allocation as context 1, an export of size bytes) on conn, then hands
// each request to respond and writes back whatever bytes it returns.
func fakeServer(conn net.Conn, size int64, respond func(cmd uint16, cookie uint64, off int64, length uint32) []byte) {
	fakeServerInfo(conn, size, nil, respond)
}

// fakeServerInfo is fakeServer sending extra NBD_INFO replies to GO.
func fakeServerInfo(conn net.Conn, size int64, infos [][]byte, respond func(cmd uint16, cookie uint64, off int64, length uint32) []byte) {
	defer conn.Close()
	br := bufio.NewReader(conn)
	w := func(b []byte) bool { _, err := conn.Write(b); return err == nil }
	g := binary.BigEndian.AppendUint64(nil, nbdMagic)
	g = binary.BigEndian.AppendUint64(g, ihaveOpt)
	g = binary.BigEndian.AppendUint16(g, flagFixedNewstyle|flagNoZeroes)
	if !w(g) {
		return
	}
	var cf [4]byte
	if _, err := io.ReadFull(br, cf[:]); err != nil {
		return
	}
	rep := func(opt, typ uint32, data []byte) bool {
		b := binary.BigEndian.AppendUint64(nil, optReplyMagc)
		b = binary.BigEndian.AppendUint32(b, opt)
		b = binary.BigEndian.AppendUint32(b, typ)
		b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
		return w(append(b, data...))
	}
	for {
		var h [16]byte
		if _, err := io.ReadFull(br, h[:]); err != nil {
			return
		}
		opt := binary.BigEndian.Uint32(h[8:])
		data := make([]byte, binary.BigEndian.Uint32(h[12:]))
		if _, err := io.ReadFull(br, data); err != nil {
			return
		}
		switch opt {
		case optStructuredReply:
			rep(opt, repAck, nil)
		case optSetMetaContext:
			rep(opt, repMetaContext, append(binary.BigEndian.AppendUint32(nil, 1), ContextBaseAllocation...))
			rep(opt, repAck, nil)
		case optGo:
			d := binary.BigEndian.AppendUint16(nil, infoExport)
			d = binary.BigEndian.AppendUint64(d, uint64(size))
			d = binary.BigEndian.AppendUint16(d, FlagHasFlags|FlagReadOnly)
			rep(opt, repInfo, d)
			for _, i := range infos {
				rep(opt, repInfo, i)
			}
			rep(opt, repAck, nil)
			goto transmission
		default:
			rep(opt, repErrUnsup, nil)
		}
	}
transmission:
	for {
		var h [28]byte
		if _, err := io.ReadFull(br, h[:]); err != nil {
			return
		}
		cmd := binary.BigEndian.Uint16(h[6:])
		if cmd == cmdDisc {
			return
		}
		out := respond(cmd, binary.BigEndian.Uint64(h[8:]), int64(binary.BigEndian.Uint64(h[16:])), binary.BigEndian.Uint32(h[24:]))
		if out == nil {
			continue
		}
		if !w(out) {
			return
		}
	}
}

func chunk(flags, typ uint16, cookie uint64, payload []byte) []byte {
	b := binary.BigEndian.AppendUint32(nil, structMagic)
	b = binary.BigEndian.AppendUint16(b, flags)
	b = binary.BigEndian.AppendUint16(b, typ)
	b = binary.BigEndian.AppendUint64(b, cookie)
	b = binary.BigEndian.AppendUint32(b, uint32(len(payload)))
	return append(b, payload...)
}

func dialFake(t testing.TB, size int64, respond func(cmd uint16, cookie uint64, off int64, length uint32) []byte) *Client {
	t.Helper()
	a, b := net.Pipe()
	go fakeServer(b, size, respond)
	c, err := NewClient(context.Background(), a, Options{MetaContexts: []string{ContextBaseAllocation}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func netPipe() (net.Conn, net.Conn) { return net.Pipe() }
