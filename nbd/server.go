package nbd

import (
	"bufio"
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"
)

// Source is what an export serves: a read-only random-access byte range.
type Source interface {
	Size() int64
	// ReadAt fills p with the bytes at off. It is called from several
	// goroutines at once.
	ReadAt(ctx context.Context, p []byte, off int64) error
}

// Mapper is implemented by sources that know which ranges hold data. Extents
// reports [off, off+length) in order with base:allocation flags (StateHole,
// StateZero); the server uses it for block status and to send holes in
// reads without reading them.
type Mapper interface {
	Extents(ctx context.Context, off, length int64, fn func(Extent) error) error
}

// ReaderAtSource adapts an io.ReaderAt of a known size (a file, a
// bytes.Reader) into a Source.
func ReaderAtSource(r io.ReaderAt, size int64) Source { return &readerAtSource{r, size} }

type readerAtSource struct {
	r    io.ReaderAt
	size int64
}

func (s *readerAtSource) Size() int64 { return s.size }

func (s *readerAtSource) ReadAt(_ context.Context, p []byte, off int64) error {
	n, err := s.r.ReadAt(p, off)
	if n == len(p) {
		return nil
	}
	if err == nil || err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return err
}

// Export is one named export of a Server.
type Export struct {
	Name        string
	Description string
	Source      Source
}

// Server is a read-only NBD server: fixed newstyle negotiation, GO/INFO,
// structured replies with holes, base:allocation block status, and any
// number of clients and requests at once. Exports must be set before Serve.
type Server struct {
	Exports []Export
	Logger  *slog.Logger // nil: no logging
	// MaxBlock is the largest request served (default 32 MiB).
	MaxBlock uint32
	// Budget bounds the bytes of read requests in flight per connection
	// (default 64 MiB): memory stays bounded whatever clients send.
	Budget int64
	// MaxConns bounds the connections served at once (default 32); more
	// are closed at once, with a log line.
	MaxConns int
	// MaxStatus bounds the BLOCK_STATUS requests worked on at once per
	// connection (default 4): each may walk a large part of the index.
	MaxStatus int
	// HandshakeTimeout bounds a client's negotiation (default 30 s): one
	// that connects and says nothing holds no slot for long.
	HandshakeTimeout time.Duration

	mu     sync.Mutex
	lns    map[net.Listener]struct{}
	conns  map[net.Conn]struct{}
	closed bool
	wg     sync.WaitGroup
}

// ErrServerClosed is returned by Serve after Close.
var ErrServerClosed = errors.New("nbd: server closed")

func (s *Server) logger() *slog.Logger {
	if s.Logger != nil {
		return s.Logger
	}
	return slog.New(slog.DiscardHandler)
}

func (s *Server) maxBlock() uint32 {
	if s.MaxBlock != 0 {
		return s.MaxBlock
	}
	return DefaultMaxBlock
}

func (s *Server) export(name string) *Export {
	for i := range s.Exports {
		if s.Exports[i].Name == name {
			return &s.Exports[i]
		}
	}
	return nil
}

// Serve accepts clients on ln until Close. It returns ErrServerClosed after
// Close, or the listener's error.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return ErrServerClosed
	}
	if s.lns == nil {
		s.lns = map[net.Listener]struct{}{}
		s.conns = map[net.Conn]struct{}{}
	}
	s.lns[ln] = struct{}{}
	s.mu.Unlock()
	for {
		conn, err := ln.Accept()
		if err != nil {
			s.mu.Lock()
			closed := s.closed
			delete(s.lns, ln)
			s.mu.Unlock()
			if closed {
				return ErrServerClosed
			}
			return fmt.Errorf("nbd: accept: %w", err)
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			conn.Close()
			return ErrServerClosed
		}
		if max := cmp.Or(s.MaxConns, 32); len(s.conns) >= max {
			s.mu.Unlock()
			s.logger().Warn("nbd: refusing a connection: too many", "max", max)
			conn.Close()
			continue
		}
		s.conns[conn] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go func() {
			defer s.wg.Done()
			sc := &serverConn{s: s, conn: conn, br: bufio.NewReaderSize(conn, 64<<10), log: s.logger().With("remote", conn.RemoteAddr().String())}
			if err := sc.serve(); err != nil && !errors.Is(err, net.ErrClosed) && !errors.Is(err, io.EOF) {
				sc.log.Debug("nbd connection ended", "err", err)
			}
			// Out of the count before the client sees the close, so a
			// client that reconnects at once finds its slot free.
			s.mu.Lock()
			delete(s.conns, conn)
			s.mu.Unlock()
			conn.Close()
		}()
	}
}

// Close stops every listener, ends every connection, and waits until their
// handlers have returned.
func (s *Server) Close() error {
	s.mu.Lock()
	s.closed = true
	for ln := range s.lns {
		ln.Close()
	}
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
	return nil
}

type serverConn struct {
	s          *Server
	conn       net.Conn
	br         *bufio.Reader
	log        *slog.Logger
	noZeroes   bool
	structured bool
	allocation bool // base:allocation selected
	exp        *Export

	wmu sync.Mutex
}

const baseAllocationID = 1

func (c *serverConn) serve() error {
	_ = c.conn.SetDeadline(time.Now().Add(cmp.Or(c.s.HandshakeTimeout, 30*time.Second)))
	var g [18]byte
	binary.BigEndian.PutUint64(g[0:], nbdMagic)
	binary.BigEndian.PutUint64(g[8:], ihaveOpt)
	binary.BigEndian.PutUint16(g[16:], flagFixedNewstyle|flagNoZeroes)
	if _, err := c.conn.Write(g[:]); err != nil {
		return err
	}
	var cf [4]byte
	if _, err := io.ReadFull(c.br, cf[:]); err != nil {
		return err
	}
	flags := binary.BigEndian.Uint32(cf[:])
	if flags&flagCFixedNewstyle == 0 || flags&^uint32(flagCFixedNewstyle|flagCNoZeroes) != 0 {
		return fmt.Errorf("client flags %#x unsupported", flags)
	}
	c.noZeroes = flags&flagCNoZeroes != 0
	for c.exp == nil {
		if err := c.option(); err != nil {
			return err
		}
	}
	_ = c.conn.SetDeadline(time.Time{})
	return c.transmission()
}

func (c *serverConn) reply(opt, typ uint32, data []byte) error {
	b := make([]byte, 20+len(data))
	binary.BigEndian.PutUint64(b[0:], optReplyMagc)
	binary.BigEndian.PutUint32(b[8:], opt)
	binary.BigEndian.PutUint32(b[12:], typ)
	binary.BigEndian.PutUint32(b[16:], uint32(len(data)))
	copy(b[20:], data)
	_, err := c.conn.Write(b)
	return err
}

func (c *serverConn) option() error {
	var h [16]byte
	if _, err := io.ReadFull(c.br, h[:]); err != nil {
		return err
	}
	if binary.BigEndian.Uint64(h[0:]) != ihaveOpt {
		return errors.New("option without IHAVEOPT")
	}
	opt := binary.BigEndian.Uint32(h[8:])
	n := binary.BigEndian.Uint32(h[12:])
	if n > 64<<10 {
		if _, err := io.CopyN(io.Discard, c.br, int64(n)); err != nil {
			return err
		}
		return c.reply(opt, repErrTooBig, []byte("option data too large"))
	}
	data := make([]byte, n)
	if _, err := io.ReadFull(c.br, data); err != nil {
		return err
	}
	switch opt {
	case optExportName:
		e := c.s.export(string(data))
		if e == nil {
			return fmt.Errorf("EXPORT_NAME: unknown export %q", data)
		}
		b := make([]byte, 10, 134)
		binary.BigEndian.PutUint64(b, uint64(e.Source.Size()))
		binary.BigEndian.PutUint16(b[8:], c.transmissionFlags())
		if !c.noZeroes {
			b = b[:134]
		}
		if _, err := c.conn.Write(b); err != nil {
			return err
		}
		c.exp = e
		return nil
	case optAbort:
		_ = c.reply(opt, repAck, nil)
		return io.EOF
	case optList:
		if n != 0 {
			return c.reply(opt, repErrInvalid, []byte("LIST takes no data"))
		}
		for _, e := range c.s.Exports {
			if err := c.reply(opt, repServer, appendString32(nil, e.Name)); err != nil {
				return err
			}
		}
		return c.reply(opt, repAck, nil)
	case optStructuredReply:
		if n != 0 {
			return c.reply(opt, repErrInvalid, []byte("STRUCTURED_REPLY takes no data"))
		}
		c.structured = true
		return c.reply(opt, repAck, nil)
	case optListMetaContext, optSetMetaContext:
		return c.metaContext(opt, data)
	case optInfo, optGo:
		return c.infoGo(opt, data)
	default:
		return c.reply(opt, repErrUnsup, []byte(optName(opt)+" is not supported"))
	}
}

// parseString32 takes a 32-bit length-prefixed string from b.
func parseString32(b []byte) (string, []byte, bool) {
	if len(b) < 4 {
		return "", nil, false
	}
	n := binary.BigEndian.Uint32(b)
	if uint64(n) > uint64(len(b)-4) || n > maxStringLen {
		return "", nil, false
	}
	return string(b[4 : 4+n]), b[4+n:], true
}

func (c *serverConn) metaContext(opt uint32, data []byte) error {
	if !c.structured {
		return c.reply(opt, repErrInvalid, []byte("meta contexts need structured replies"))
	}
	name, rest, ok := parseString32(data)
	if !ok || len(rest) < 4 {
		return c.reply(opt, repErrInvalid, []byte("malformed meta context request"))
	}
	if c.s.export(name) == nil {
		return c.reply(opt, repErrUnknown, []byte(fmt.Sprintf("no export %q", name)))
	}
	nq := binary.BigEndian.Uint32(rest)
	rest = rest[4:]
	queries := make([]string, 0, min(nq, 16))
	for i := uint32(0); i < nq; i++ {
		var q string
		if q, rest, ok = parseString32(rest); !ok {
			return c.reply(opt, repErrInvalid, []byte("malformed meta context query"))
		}
		queries = append(queries, q)
	}
	if len(rest) != 0 {
		return c.reply(opt, repErrInvalid, []byte("trailing bytes in meta context request"))
	}
	match := false
	for _, q := range queries {
		if q == ContextBaseAllocation || (opt == optListMetaContext && q == "base:") {
			match = true
		}
	}
	if opt == optListMetaContext && len(queries) == 0 {
		match = true
	}
	if opt == optSetMetaContext {
		c.allocation = match
	}
	if match {
		b := binary.BigEndian.AppendUint32(nil, baseAllocationID)
		if err := c.reply(opt, repMetaContext, append(b, ContextBaseAllocation...)); err != nil {
			return err
		}
	}
	return c.reply(opt, repAck, nil)
}

func (c *serverConn) transmissionFlags() uint16 {
	return FlagHasFlags | FlagReadOnly | FlagSendFlush | FlagSendDF | FlagCanMultiConn | FlagSendCache
}

func (c *serverConn) infoGo(opt uint32, data []byte) error {
	name, rest, ok := parseString32(data)
	if !ok || len(rest) < 2 {
		return c.reply(opt, repErrInvalid, []byte("malformed INFO/GO request"))
	}
	nr := int(binary.BigEndian.Uint16(rest))
	rest = rest[2:]
	if len(rest) != 2*nr {
		return c.reply(opt, repErrInvalid, []byte("INFO/GO request count does not match its length"))
	}
	e := c.s.export(name)
	if e == nil {
		return c.reply(opt, repErrUnknown, []byte(fmt.Sprintf("no export %q", name)))
	}
	want := map[uint16]bool{}
	for i := 0; i < nr; i++ {
		want[binary.BigEndian.Uint16(rest[2*i:])] = true
	}
	b := binary.BigEndian.AppendUint16(nil, infoExport)
	b = binary.BigEndian.AppendUint64(b, uint64(e.Source.Size()))
	b = binary.BigEndian.AppendUint16(b, c.transmissionFlags())
	if err := c.reply(opt, repInfo, b); err != nil {
		return err
	}
	b = binary.BigEndian.AppendUint16(nil, infoBlockSize)
	b = binary.BigEndian.AppendUint32(b, 1)
	b = binary.BigEndian.AppendUint32(b, 4096)
	b = binary.BigEndian.AppendUint32(b, c.s.maxBlock())
	if err := c.reply(opt, repInfo, b); err != nil {
		return err
	}
	if want[infoName] {
		if err := c.reply(opt, repInfo, append(binary.BigEndian.AppendUint16(nil, infoName), e.Name...)); err != nil {
			return err
		}
	}
	if want[infoDescription] && e.Description != "" {
		if err := c.reply(opt, repInfo, append(binary.BigEndian.AppendUint16(nil, infoDescription), e.Description...)); err != nil {
			return err
		}
	}
	if err := c.reply(opt, repAck, nil); err != nil {
		return err
	}
	if opt == optGo {
		c.exp = e
	}
	return nil
}
