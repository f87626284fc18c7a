package nbd

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"sort"
	"sync"
	"time"
)

// Options choose what a client negotiates.
type Options struct {
	// Export is the export name ("" is the default export).
	Export string
	// MetaContexts are the meta contexts to ask for (base:allocation,
	// qemu:dirty-bitmap:NAME, qemu:allocation-depth). Those the server
	// grants are listed by Client.Contexts. They need structured replies.
	MetaContexts []string
	// NoStructured keeps to simple replies (for servers and tests that need
	// them); meta contexts are then not negotiated.
	NoStructured bool
	// HandshakeTimeout bounds the negotiation (default 30 s) when ctx has
	// no earlier deadline: a server that stops answering cannot hang Dial.
	HandshakeTimeout time.Duration
	// RequestTimeout bounds the wait for one request's reply (default
	// 5 min). A request that times out ends the connection with an error
	// wrapping ErrTimeout: its reply may still come, so the connection can
	// no longer be trusted. A stuck QEMU cannot hang a backup forever.
	RequestTimeout time.Duration
}

// ErrTimeout is wrapped by errors for a server that did not answer in time.
var ErrTimeout = errors.New("nbd: server did not answer in time")

// minMaxBlock is the smallest maximum block size the client accepts: a
// server advertising less would have every read cut into tiny requests.
const minMaxBlock = 4096

// ExportInfo describes the export a client is attached to.
type ExportInfo struct {
	Name        string
	Description string
	Size        int64
	Flags       uint16 // Flag* transmission flags
	MinBlock    uint32 // minimum block size (alignment of requests)
	PrefBlock   uint32 // preferred block size
	MaxBlock    uint32 // largest payload of one request
}

// Extent is a run of bytes with one status in a meta context.
type Extent struct {
	Off, Len int64
	Flags    uint32
}

// Client is an NBD client on one connection, in the transmission phase. It
// is safe for concurrent use: requests from any number of goroutines are in
// flight together on the connection and their replies are matched by cookie.
// Any protocol violation by the server ends the connection with an error
// wrapping ErrProtocol; a server error reply fails only its request, with a
// *RequestError.
type Client struct {
	conn       net.Conn
	br         *bufio.Reader
	info       ExportInfo
	structured bool
	ctxByID    map[uint32]string
	ctxByName  map[string]uint32
	reqTimeout time.Duration

	wmu sync.Mutex // serialises requests on the wire

	mu      sync.Mutex
	pending map[uint64]*request
	cookie  uint64
	err     error // set once the connection is dead
	done    chan struct{}
}

type request struct {
	cmd    uint16
	off    int64
	length int64
	done   chan struct{}

	mu        sync.Mutex // held by the reader while it fills buf
	abandoned bool
	buf       []byte // READ: destination
	covered   int64  // READ: bytes filled by data and hole chunks
	spans     []span // READ: what the chunks so far covered, sorted, merged
	extents   map[uint32][]Extent
	err       error
}

// Dial connects to an NBD server at addr ("unix" path or "tcp" host:port) and
// negotiates o.
func Dial(ctx context.Context, network, addr string, o Options) (*Client, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, fmt.Errorf("nbd: dial %s: %w", addr, err)
	}
	c, err := NewClient(ctx, conn, o)
	if err != nil {
		conn.Close()
		return nil, err
	}
	return c, nil
}

// NewClient runs the handshake on conn and returns a client in the
// transmission phase. On error the caller closes conn.
func NewClient(ctx context.Context, conn net.Conn, o Options) (*Client, error) {
	c := &Client{
		conn:       conn,
		br:         bufio.NewReaderSize(conn, 64<<10),
		ctxByID:    map[uint32]string{},
		ctxByName:  map[string]uint32{},
		pending:    map[uint64]*request{},
		done:       make(chan struct{}),
		reqTimeout: o.RequestTimeout,
	}
	if c.reqTimeout <= 0 {
		c.reqTimeout = 5 * time.Minute
	}
	hs := o.HandshakeTimeout
	if hs <= 0 {
		hs = 30 * time.Second
	}
	dl := time.Now().Add(hs)
	if d, ok := ctx.Deadline(); ok && d.Before(dl) {
		dl = d
	}
	_ = conn.SetDeadline(dl)
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	err := c.handshake(o)
	if !stop() || ctx.Err() != nil {
		if err == nil {
			err = ctx.Err()
		}
		return nil, fmt.Errorf("nbd: handshake: %w", err)
	}
	if ne, ok := err.(net.Error); ok && ne.Timeout() || errors.Is(err, os.ErrDeadlineExceeded) {
		return nil, fmt.Errorf("nbd: handshake: %w after %v (%v)", ErrTimeout, hs, err)
	}
	if err != nil {
		return nil, err
	}
	_ = conn.SetDeadline(time.Time{})
	go c.readLoop()
	return c, nil
}

// Info returns what the server said of the export.
func (c *Client) Info() ExportInfo { return c.info }

// Size is the export's size in bytes.
func (c *Client) Size() int64 { return c.info.Size }

// Structured reports whether structured replies were negotiated.
func (c *Client) Structured() bool { return c.structured }

// HasContext reports whether the server granted meta context name.
func (c *Client) HasContext(name string) bool {
	_, ok := c.ctxByName[name]
	return ok
}

// Contexts lists the meta contexts the server granted, sorted.
func (c *Client) Contexts() []string {
	return sortedNames(c.ctxByName)
}

func (c *Client) readFull(b []byte) error {
	_, err := io.ReadFull(c.br, b)
	if errors.Is(err, io.ErrUnexpectedEOF) {
		err = protoErr("connection closed in the middle of a message")
	}
	return err
}

func (c *Client) handshake(o Options) error {
	var hdr [18]byte
	if err := c.readFull(hdr[:]); err != nil {
		return fmt.Errorf("nbd: read greeting: %w", err)
	}
	if m := binary.BigEndian.Uint64(hdr[0:]); m != nbdMagic {
		return protoErr("greeting magic %#x, want NBDMAGIC", m)
	}
	if m := binary.BigEndian.Uint64(hdr[8:]); m != ihaveOpt {
		return protoErr("greeting has magic %#x, want IHAVEOPT (oldstyle servers are not supported)", m)
	}
	sflags := binary.BigEndian.Uint16(hdr[16:])
	if sflags&flagFixedNewstyle == 0 {
		return protoErr("server does not offer fixed newstyle negotiation")
	}
	cflags := uint32(flagCFixedNewstyle)
	noZeroes := sflags&flagNoZeroes != 0
	if noZeroes {
		cflags |= flagCNoZeroes
	}
	if err := binary.Write(c.conn, binary.BigEndian, cflags); err != nil {
		return fmt.Errorf("nbd: send client flags: %w", err)
	}
	if !o.NoStructured {
		if err := c.sendOption(optStructuredReply, nil); err != nil {
			return err
		}
		typ, data, err := c.readOptReply(optStructuredReply)
		switch {
		case err != nil:
			return err
		case typ == repAck:
			c.structured = true
		case typ&repFlagError != 0:
			// Simple replies only; go on without.
		default:
			return protoErr("STRUCTURED_REPLY answered with reply type %#x (%d bytes)", typ, len(data))
		}
	}
	if c.structured && len(o.MetaContexts) > 0 {
		if err := c.setMetaContexts(o.Export, o.MetaContexts); err != nil {
			return err
		}
	}
	return c.optGo(o.Export, noZeroes)
}

func (c *Client) sendOption(opt uint32, data []byte) error {
	b := make([]byte, 16+len(data))
	binary.BigEndian.PutUint64(b[0:], ihaveOpt)
	binary.BigEndian.PutUint32(b[8:], opt)
	binary.BigEndian.PutUint32(b[12:], uint32(len(data)))
	copy(b[16:], data)
	if _, err := c.conn.Write(b); err != nil {
		return fmt.Errorf("nbd: send option %s: %w", optName(opt), err)
	}
	return nil
}

// readOptReply reads one option reply to opt. Error replies are returned as
// their type with data; the caller decides.
func (c *Client) readOptReply(opt uint32) (uint32, []byte, error) {
	var h [20]byte
	if err := c.readFull(h[:]); err != nil {
		return 0, nil, fmt.Errorf("nbd: read reply to %s: %w", optName(opt), err)
	}
	if m := binary.BigEndian.Uint64(h[0:]); m != optReplyMagc {
		return 0, nil, protoErr("option reply magic %#x", m)
	}
	if o := binary.BigEndian.Uint32(h[8:]); o != opt {
		return 0, nil, protoErr("reply is for %s, sent %s", optName(o), optName(opt))
	}
	typ := binary.BigEndian.Uint32(h[12:])
	n := binary.BigEndian.Uint32(h[16:])
	if n > 64<<10 {
		return 0, nil, protoErr("reply to %s has %d bytes of data", optName(opt), n)
	}
	data := make([]byte, n)
	if err := c.readFull(data); err != nil {
		return 0, nil, fmt.Errorf("nbd: read reply to %s: %w", optName(opt), err)
	}
	return typ, data, nil
}

func appendString32(b []byte, s string) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(len(s)))
	return append(b, s...)
}

func (c *Client) setMetaContexts(export string, names []string) error {
	data := appendString32(nil, export)
	data = binary.BigEndian.AppendUint32(data, uint32(len(names)))
	for _, n := range names {
		if len(n) > maxStringLen {
			return fmt.Errorf("nbd: meta context name of %d bytes is too long", len(n))
		}
		data = appendString32(data, n)
	}
	if err := c.sendOption(optSetMetaContext, data); err != nil {
		return err
	}
	for {
		typ, d, err := c.readOptReply(optSetMetaContext)
		if err != nil {
			return err
		}
		switch {
		case typ == repAck:
			return nil
		case typ == repMetaContext:
			if len(d) < 5 {
				return protoErr("META_CONTEXT reply of %d bytes", len(d))
			}
			id := binary.BigEndian.Uint32(d)
			name := string(d[4:])
			if _, dup := c.ctxByID[id]; dup {
				return protoErr("meta context id %d given twice", id)
			}
			c.ctxByID[id] = name
			c.ctxByName[name] = id
		case typ == repErrUnsup:
			return nil // no meta contexts; HasContext reports false
		case typ&repFlagError != 0:
			return &OptionError{Option: optName(optSetMetaContext), Reply: typ, Text: string(d)}
		default:
			return protoErr("SET_META_CONTEXT answered with reply type %#x", typ)
		}
	}
}

func (c *Client) optGo(export string, noZeroes bool) error {
	data := appendString32(nil, export)
	data = binary.BigEndian.AppendUint16(data, 3)
	data = binary.BigEndian.AppendUint16(data, infoBlockSize)
	data = binary.BigEndian.AppendUint16(data, infoName)
	data = binary.BigEndian.AppendUint16(data, infoDescription)
	if err := c.sendOption(optGo, data); err != nil {
		return err
	}
	c.info.Name = export
	gotExport := false
	for {
		typ, d, err := c.readOptReply(optGo)
		if err != nil {
			return err
		}
		switch {
		case typ == repAck:
			if !gotExport {
				return protoErr("GO acknowledged without NBD_INFO_EXPORT")
			}
			if c.info.MaxBlock == 0 {
				c.info.MaxBlock = DefaultMaxBlock
			}
			if c.info.MinBlock == 0 {
				c.info.MinBlock = 1
			}
			return nil
		case typ == repInfo:
			if len(d) < 2 {
				return protoErr("INFO reply of %d bytes", len(d))
			}
			switch it := binary.BigEndian.Uint16(d); it {
			case infoExport:
				if len(d) != 12 {
					return protoErr("INFO_EXPORT of %d bytes", len(d))
				}
				size := binary.BigEndian.Uint64(d[2:])
				if size > 1<<62 {
					return protoErr("export size %d", size)
				}
				c.info.Size = int64(size)
				c.info.Flags = binary.BigEndian.Uint16(d[10:])
				gotExport = true
			case infoBlockSize:
				if len(d) != 14 {
					return protoErr("INFO_BLOCK_SIZE of %d bytes", len(d))
				}
				mn, pref, mx := binary.BigEndian.Uint32(d[2:]), binary.BigEndian.Uint32(d[6:]), binary.BigEndian.Uint32(d[10:])
				if mn == 0 || mn&(mn-1) != 0 || mn > 64<<10 || pref < mn || mx < mn || mx < minMaxBlock {
					return protoErr("block sizes min %d preferred %d max %d", mn, pref, mx)
				}
				c.info.MinBlock, c.info.PrefBlock, c.info.MaxBlock = mn, pref, mx
			case infoName:
				c.info.Name = string(d[2:])
			case infoDescription:
				c.info.Description = string(d[2:])
			}
		case typ == repErrUnsup:
			return c.exportName(export, noZeroes)
		case typ&repFlagError != 0:
			return &OptionError{Option: fmt.Sprintf("GO (export %q)", export), Reply: typ, Text: string(d)}
		default:
			return protoErr("GO answered with reply type %#x", typ)
		}
	}
}

// exportName is the old way into transmission, for servers without GO.
func (c *Client) exportName(export string, noZeroes bool) error {
	if err := c.sendOption(optExportName, []byte(export)); err != nil {
		return err
	}
	n := 10
	if !noZeroes {
		n += 124
	}
	b := make([]byte, n)
	if err := c.readFull(b); err != nil {
		return fmt.Errorf("nbd: EXPORT_NAME %q: %w", export, err)
	}
	c.info = ExportInfo{Name: export, Size: int64(binary.BigEndian.Uint64(b)), Flags: binary.BigEndian.Uint16(b[8:]), MinBlock: 1, MaxBlock: DefaultMaxBlock}
	return nil
}

// fail ends the connection with err (the first error wins). The reader
// goroutine then fails every pending request; it alone completes requests.
func (c *Client) fail(err error) {
	c.mu.Lock()
	if c.err == nil {
		c.err = err
	}
	c.mu.Unlock()
	_ = c.conn.Close()
}

// Close sends NBD_CMD_DISC and closes the connection. Pending requests fail
// with ErrClosed.
func (c *Client) Close() error {
	c.mu.Lock()
	dead := c.err != nil
	c.mu.Unlock()
	if !dead {
		var h [28]byte
		putRequest(h[:], 0, cmdDisc, 0, 0, 0)
		c.wmu.Lock()
		_ = c.conn.SetWriteDeadline(time.Now().Add(time.Second))
		_, _ = c.conn.Write(h[:])
		c.wmu.Unlock()
	}
	c.fail(ErrClosed)
	<-c.done
	return nil
}

func putRequest(b []byte, flags, cmd uint16, cookie uint64, off int64, length uint32) {
	binary.BigEndian.PutUint32(b[0:], requestMagic)
	binary.BigEndian.PutUint16(b[4:], flags)
	binary.BigEndian.PutUint16(b[6:], cmd)
	binary.BigEndian.PutUint64(b[8:], cookie)
	binary.BigEndian.PutUint64(b[16:], uint64(off))
	binary.BigEndian.PutUint32(b[24:], length)
}

// do sends one request and waits for its reply or ctx.
func (c *Client) do(ctx context.Context, r *request, flags uint16, payload []byte) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if r.off < 0 || r.length < 0 || r.length > 0xffffffff || r.off+r.length > c.info.Size {
		return fmt.Errorf("nbd %s [%d, +%d): outside the export of %d bytes", cmdName(r.cmd), r.off, r.length, c.info.Size)
	}
	r.done = make(chan struct{})
	c.mu.Lock()
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		return err
	}
	c.cookie++
	cookie := c.cookie
	c.pending[cookie] = r
	c.mu.Unlock()

	var h [28]byte
	putRequest(h[:], flags, r.cmd, cookie, r.off, uint32(r.length))
	c.wmu.Lock()
	var err error
	if payload == nil {
		_, err = c.conn.Write(h[:])
	} else {
		bufs := net.Buffers{h[:], payload}
		_, err = bufs.WriteTo(c.conn)
	}
	c.wmu.Unlock()
	if err != nil {
		c.fail(fmt.Errorf("nbd: send %s: %w", cmdName(r.cmd), err))
	}
	timer := time.NewTimer(c.reqTimeout)
	defer timer.Stop()
	select {
	case <-r.done:
		return r.err
	case <-ctx.Done():
	case <-timer.C:
		c.fail(fmt.Errorf("%s [%d, +%d): %w after %v", cmdName(r.cmd), r.off, r.length, ErrTimeout, c.reqTimeout))
		<-r.done // the reader completes it with the connection's error
		return r.err
	}
	// Abandon: make sure the reader never touches r.buf after we return.
	if !r.mu.TryLock() {
		c.fail(fmt.Errorf("nbd: %s cancelled while its data was arriving: %w", cmdName(r.cmd), ctx.Err()))
		r.mu.Lock()
	}
	r.abandoned = true
	r.mu.Unlock()
	return ctx.Err()
}

func (c *Client) readLoop() {
	var err error
	for err == nil {
		err = c.readReply()
	}
	c.fail(err)
	c.mu.Lock()
	err = c.err
	reqs := c.pending
	c.pending = map[uint64]*request{}
	c.mu.Unlock()
	for _, r := range reqs {
		r.err = err
		close(r.done)
	}
	close(c.done)
}

func (c *Client) take(cookie uint64, done bool) (*request, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	r, ok := c.pending[cookie]
	if !ok {
		return nil, protoErr("reply for unknown cookie %d", cookie)
	}
	if done {
		delete(c.pending, cookie)
	}
	return r, nil
}

func (c *Client) finish(r *request) {
	if r.err == nil && r.cmd == cmdRead && c.structured && r.covered != r.length {
		r.err = protoErr("READ [%d, +%d): reply covered %d bytes", r.off, r.length, r.covered)
	}
	close(r.done)
}

func (c *Client) readReply() error {
	var m [4]byte
	if err := c.readFull(m[:]); err != nil {
		return fmt.Errorf("nbd: read reply: %w", err)
	}
	switch magic := binary.BigEndian.Uint32(m[:]); magic {
	case simpleMagic:
		var h [12]byte
		if err := c.readFull(h[:]); err != nil {
			return err
		}
		errno := binary.BigEndian.Uint32(h[0:])
		r, err := c.take(binary.BigEndian.Uint64(h[4:]), true)
		if err != nil {
			return err
		}
		if errno != 0 {
			r.err = &RequestError{Command: cmdName(r.cmd), Offset: r.off, Length: r.length, Errno: Errno(errno)}
		} else if r.cmd == cmdRead {
			if err := c.fill(r, 0, r.length); err != nil {
				r.err = err
				close(r.done)
				return err
			}
			r.covered = r.length
		}
		c.finish(r)
		return nil
	case structMagic:
		if !c.structured {
			return protoErr("structured reply without negotiation")
		}
		return c.readChunk()
	default:
		return protoErr("reply magic %#x", magic)
	}
}

// fill reads n bytes from the connection into r.buf at off (relative to the
// request), or discards them when r was abandoned.
func (c *Client) fill(r *request, off, n int64) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.abandoned {
		_, err := io.CopyN(io.Discard, c.br, n)
		return err
	}
	return c.readFull(r.buf[off : off+n])
}

func (c *Client) readChunk() error {
	var h [16]byte
	if err := c.readFull(h[:]); err != nil {
		return err
	}
	flags := binary.BigEndian.Uint16(h[0:])
	typ := binary.BigEndian.Uint16(h[2:])
	cookie := binary.BigEndian.Uint64(h[4:])
	n := int64(binary.BigEndian.Uint32(h[12:]))
	done := flags&replyFlagDone != 0
	r, err := c.take(cookie, done)
	if err != nil {
		return err
	}
	name := cmdName(r.cmd)
	if err := c.chunk(r, typ, n); err != nil {
		err = fmt.Errorf("%w (%s [%d, +%d])", err, name, r.off, r.length)
		if done { // no longer pending: complete it here
			r.err = err
			close(r.done)
		}
		return err
	}
	if done {
		c.finish(r)
	}
	return nil
}

func (c *Client) chunk(r *request, typ uint16, n int64) error {
	switch typ {
	case replyTypeNone:
		if n != 0 {
			return protoErr("NONE chunk with %d bytes", n)
		}
		return nil
	case replyTypeOffsetData:
		if r.cmd != cmdRead {
			return protoErr("OFFSET_DATA chunk")
		}
		if n <= 8 {
			return protoErr("OFFSET_DATA chunk of %d bytes", n)
		}
		var b [8]byte
		if err := c.readFull(b[:]); err != nil {
			return err
		}
		off := int64(binary.BigEndian.Uint64(b[:]))
		dlen := n - 8
		if off < r.off || off-r.off > r.length || dlen > r.length-(off-r.off) {
			return protoErr("data chunk [%d, +%d) outside the request", off, dlen)
		}
		if err := r.cover(off-r.off, dlen); err != nil {
			return err
		}
		if err := c.fill(r, off-r.off, dlen); err != nil {
			return err
		}
		r.covered += dlen
	case replyTypeOffsetHole:
		if r.cmd != cmdRead {
			return protoErr("OFFSET_HOLE chunk")
		}
		if n != 12 {
			return protoErr("OFFSET_HOLE chunk of %d bytes", n)
		}
		var b [12]byte
		if err := c.readFull(b[:]); err != nil {
			return err
		}
		off := int64(binary.BigEndian.Uint64(b[:]))
		hlen := int64(binary.BigEndian.Uint32(b[8:]))
		if hlen == 0 || off < r.off || off-r.off > r.length || hlen > r.length-(off-r.off) {
			return protoErr("hole chunk [%d, +%d) outside the request", off, hlen)
		}
		if err := r.cover(off-r.off, hlen); err != nil {
			return err
		}
		r.mu.Lock()
		if !r.abandoned {
			clear(r.buf[off-r.off : off-r.off+hlen])
		}
		r.mu.Unlock()
		r.covered += hlen
	case replyTypeBlockStatus:
		if r.cmd != cmdBlockStatus {
			return protoErr("BLOCK_STATUS chunk")
		}
		if n < 12 || (n-4)%8 != 0 || n > 8<<20 {
			return protoErr("BLOCK_STATUS chunk of %d bytes", n)
		}
		b := make([]byte, n)
		if err := c.readFull(b); err != nil {
			return err
		}
		id := binary.BigEndian.Uint32(b)
		if _, ok := c.ctxByID[id]; !ok {
			return protoErr("block status for unknown meta context id %d", id)
		}
		if _, dup := r.extents[id]; dup {
			return protoErr("two block status chunks for meta context id %d", id)
		}
		exts := make([]Extent, 0, (n-4)/8)
		off := r.off
		for p := b[4:]; len(p) > 0; p = p[8:] {
			l := int64(binary.BigEndian.Uint32(p))
			if l == 0 {
				return protoErr("zero-length extent")
			}
			if off >= r.off+r.length {
				return protoErr("extent at %d past the request", off)
			}
			exts = append(exts, Extent{Off: off, Len: l, Flags: binary.BigEndian.Uint32(p[4:])})
			off += l
		}
		// The final extent may run past the request; keep what was asked.
		if last := &exts[len(exts)-1]; last.Off+last.Len > r.off+r.length {
			last.Len = r.off + r.length - last.Off
		}
		if r.extents == nil {
			r.extents = map[uint32][]Extent{}
		}
		r.extents[id] = exts
	case replyTypeError, replyTypeErrorOffset:
		if n < 6 || n > 64<<10 {
			return protoErr("error chunk of %d bytes", n)
		}
		b := make([]byte, n)
		if err := c.readFull(b); err != nil {
			return err
		}
		errno := binary.BigEndian.Uint32(b)
		ml := int64(binary.BigEndian.Uint16(b[4:]))
		want := 6 + ml
		if typ == replyTypeErrorOffset {
			want += 8
		}
		if errno == 0 || want != n {
			return protoErr("error chunk: errno %d, message of %d bytes in %d", errno, ml, n)
		}
		off := r.off
		if typ == replyTypeErrorOffset {
			off = int64(binary.BigEndian.Uint64(b[6+ml:]))
			if off < r.off || off >= r.off+r.length {
				return protoErr("error offset %d outside the request", off)
			}
		}
		if r.err == nil {
			r.err = &RequestError{Command: cmdName(r.cmd), Offset: off, Length: r.length - (off - r.off), Errno: Errno(errno), Message: string(b[6 : 6+ml])}
		}
	default:
		if typ&(1<<15) != 0 && n >= 4 { // an error type we do not know: still an error
			b := make([]byte, min(n, 64<<10))
			if err := c.readFull(b); err != nil {
				return err
			}
			if _, err := io.CopyN(io.Discard, c.br, n-int64(len(b))); err != nil {
				return err
			}
			if r.err == nil {
				r.err = &RequestError{Command: cmdName(r.cmd), Offset: r.off, Length: r.length, Errno: Errno(binary.BigEndian.Uint32(b))}
			}
			return nil
		}
		return protoErr("unknown chunk type %d", typ)
	}
	return nil
}

type span struct{ off, end int64 }

// cover records that a chunk filled [off, off+n) of the request: chunks
// of one reply must not overlap (else two chunks over one half would leave
// the other half with whatever the buffer held, and the counts would
// still add up). Adjacent spans merge, so a well-behaved reply keeps one.
func (r *request) cover(off, n int64) error {
	end := off + n
	i := sort.Search(len(r.spans), func(i int) bool { return r.spans[i].end > off })
	if i < len(r.spans) && r.spans[i].off < end {
		return protoErr("chunk [%d, +%d) overlaps one already received", r.off+off, n)
	}
	left := i > 0 && r.spans[i-1].end == off
	right := i < len(r.spans) && r.spans[i].off == end
	switch {
	case left && right:
		r.spans[i-1].end = r.spans[i].end
		r.spans = slices.Delete(r.spans, i, i+1)
	case left:
		r.spans[i-1].end = end
	case right:
		r.spans[i].off = off
	default:
		r.spans = slices.Insert(r.spans, i, span{off, end})
	}
	return nil
}
