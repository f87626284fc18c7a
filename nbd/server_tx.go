package nbd

import (
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
)

// maxStatusExtents caps the descriptors of one block status reply; the
// client asks again for the rest.
const maxStatusExtents = 1 << 16

// budget is a byte semaphore. Only the connection's reading goroutine
// acquires, so waiters never deadlock each other.
type budget struct {
	mu    sync.Mutex
	cond  *sync.Cond
	avail int64
}

func newBudget(n int64) *budget {
	b := &budget{avail: n}
	b.cond = sync.NewCond(&b.mu)
	return b
}

func (b *budget) acquire(n int64, total int64) {
	n = min(n, total)
	b.mu.Lock()
	for b.avail < n {
		b.cond.Wait()
	}
	b.avail -= n
	b.mu.Unlock()
}

func (b *budget) release(n int64, total int64) {
	n = min(n, total)
	b.mu.Lock()
	b.avail += n
	b.mu.Unlock()
	b.cond.Broadcast()
}

var bufPool = sync.Pool{New: func() any { b := make([]byte, 4<<20); return &b }}

func (c *serverConn) transmission() error {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	total := c.s.Budget
	if total <= 0 {
		total = 64 << 20
	}
	bud := newBudget(total)
	status := make(chan struct{}, cmp.Or(c.s.MaxStatus, 4))
	size := c.exp.Source.Size()
	for {
		var h [28]byte
		if _, err := io.ReadFull(c.br, h[:]); err != nil {
			return err
		}
		if m := binary.BigEndian.Uint32(h[0:]); m != requestMagic {
			return fmt.Errorf("request magic %#x", m)
		}
		flags := binary.BigEndian.Uint16(h[4:])
		cmd := binary.BigEndian.Uint16(h[6:])
		cookie := binary.BigEndian.Uint64(h[8:])
		off := binary.BigEndian.Uint64(h[16:])
		length := int64(binary.BigEndian.Uint32(h[24:]))
		inRange := off <= uint64(size) && int64(off)+length <= size
		switch cmd {
		case cmdDisc:
			return nil
		case cmdWrite:
			if length > int64(c.s.maxBlock()) {
				return fmt.Errorf("WRITE of %d bytes", length)
			}
			if _, err := io.CopyN(io.Discard, c.br, length); err != nil {
				return err
			}
			c.errorReply(cookie, false, errPerm, "export is read-only")
		case cmdTrim, cmdWriteZeroes:
			c.errorReply(cookie, false, errPerm, "export is read-only")
		case cmdFlush, cmdCache:
			c.simple(cookie, 0, nil)
		case cmdRead:
			switch {
			case length > int64(c.s.maxBlock()):
				c.errorReply(cookie, true, errOverflow, "request larger than the maximum block size")
			case !inRange:
				c.errorReply(cookie, true, errInval, "request past the end of the export")
			case length == 0:
				c.errorReply(cookie, true, errInval, "zero-length read")
			default:
				bud.acquire(length, total)
				wg.Add(1)
				go func() {
					defer wg.Done()
					defer bud.release(length, total)
					c.read(ctx, cookie, int64(off), length, flags&cmdFlagDF != 0)
				}()
			}
		case cmdBlockStatus:
			switch {
			case !c.allocation:
				c.errorReply(cookie, true, errInval, "no meta context selected")
			case !inRange || length == 0:
				c.errorReply(cookie, true, errInval, "block status range outside the export")
			default:
				status <- struct{}{} // at most MaxStatus at once: stop reading until one ends
				wg.Add(1)
				go func() {
					defer wg.Done()
					defer func() { <-status }()
					c.blockStatus(ctx, cookie, int64(off), length, flags&cmdFlagReqOne != 0)
				}()
			}
		default:
			c.errorReply(cookie, false, errInval, fmt.Sprintf("unknown command %d", cmd))
		}
	}
}

func (c *serverConn) send(bufs net.Buffers) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if _, err := bufs.WriteTo(c.conn); err != nil {
		c.conn.Close() // the reading loop ends on it
	}
}

func (c *serverConn) simple(cookie uint64, errno uint32, data []byte) {
	var h [16]byte
	binary.BigEndian.PutUint32(h[0:], simpleMagic)
	binary.BigEndian.PutUint32(h[4:], errno)
	binary.BigEndian.PutUint64(h[8:], cookie)
	c.send(net.Buffers{h[:], data})
}

func chunkHeader(flags, typ uint16, cookie uint64, n int) []byte {
	h := make([]byte, 20)
	binary.BigEndian.PutUint32(h[0:], structMagic)
	binary.BigEndian.PutUint16(h[4:], flags)
	binary.BigEndian.PutUint16(h[6:], typ)
	binary.BigEndian.PutUint64(h[8:], cookie)
	binary.BigEndian.PutUint32(h[16:], uint32(n))
	return h
}

// errorReply answers a request with an error: a structured error chunk when
// structured replies are on and the command may have them, else simple.
func (c *serverConn) errorReply(cookie uint64, structuredOK bool, errno uint32, msg string) {
	if !(c.structured && structuredOK) {
		c.simple(cookie, errno, nil)
		return
	}
	if len(msg) > 4096 {
		msg = msg[:4096]
	}
	p := binary.BigEndian.AppendUint32(nil, errno)
	p = binary.BigEndian.AppendUint16(p, uint16(len(msg)))
	p = append(p, msg...)
	c.send(net.Buffers{chunkHeader(replyFlagDone, replyTypeError, cookie, len(p)), p})
}

func errnoOf(err error) uint32 {
	var e Errno
	if errors.As(err, &e) {
		return uint32(e)
	}
	return errIO
}

func (c *serverConn) read(ctx context.Context, cookie uint64, off, length int64, df bool) {
	src := c.exp.Source
	var buf []byte
	var pooled *[]byte
	if length <= 4<<20 {
		pooled = bufPool.Get().(*[]byte)
		buf = (*pooled)[:length]
		defer bufPool.Put(pooled)
	} else {
		buf = make([]byte, length)
	}
	if !c.structured {
		if err := src.ReadAt(ctx, buf, off); err != nil {
			c.log.Warn("nbd read failed", "off", off, "len", length, "err", err)
			c.simple(cookie, errnoOf(err), nil)
			return
		}
		c.simple(cookie, 0, buf)
		return
	}
	// Structured: data chunks, and hole chunks where the source knows it
	// holds zeroes (unless the client asked not to fragment the reply).
	var exts []Extent
	if m, ok := src.(Mapper); ok && !df {
		err := m.Extents(ctx, off, length, func(e Extent) error {
			if n := len(exts); n > 0 && (exts[n-1].Flags&StateZero == e.Flags&StateZero) {
				exts[n-1].Len += e.Len
				return nil
			}
			exts = append(exts, e)
			return nil
		})
		if err != nil {
			c.errorReply(cookie, true, errnoOf(err), "map failed: "+err.Error())
			return
		}
	}
	if !coversExactly(exts, off, length) {
		exts = []Extent{{Off: off, Len: length}}
	}
	bufs := make(net.Buffers, 0, 2*len(exts))
	for i, e := range exts {
		var flags uint16
		if i == len(exts)-1 {
			flags = replyFlagDone
		}
		if e.Flags&StateZero != 0 {
			p := binary.BigEndian.AppendUint64(nil, uint64(e.Off))
			p = binary.BigEndian.AppendUint32(p, uint32(e.Len))
			bufs = append(bufs, chunkHeader(flags, replyTypeOffsetHole, cookie, len(p)), p)
			continue
		}
		b := buf[e.Off-off : e.Off-off+e.Len]
		if err := src.ReadAt(ctx, b, e.Off); err != nil {
			c.log.Warn("nbd read failed", "off", e.Off, "len", e.Len, "err", err)
			c.errorReply(cookie, true, errnoOf(err), "read failed")
			return
		}
		hdr := chunkHeader(flags, replyTypeOffsetData, cookie, 8+len(b))
		bufs = append(bufs, binary.BigEndian.AppendUint64(hdr, uint64(e.Off)), b)
	}
	c.send(bufs)
}

// coversExactly reports whether exts are contiguous over [off, off+length).
func coversExactly(exts []Extent, off, length int64) bool {
	if len(exts) == 0 {
		return false
	}
	at := off
	for _, e := range exts {
		if e.Off != at || e.Len <= 0 {
			return false
		}
		at += e.Len
	}
	return at == off+length
}

func (c *serverConn) blockStatus(ctx context.Context, cookie uint64, off, length int64, one bool) {
	var exts []Extent
	if m, ok := c.exp.Source.(Mapper); ok {
		errStop := errors.New("stop")
		err := m.Extents(ctx, off, length, func(e Extent) error {
			if n := len(exts); n > 0 && exts[n-1].Flags == e.Flags {
				exts[n-1].Len += e.Len
				return nil
			}
			if len(exts) == maxStatusExtents || (one && len(exts) == 1) {
				return errStop
			}
			exts = append(exts, e)
			return nil
		})
		if err != nil && !errors.Is(err, errStop) {
			c.errorReply(cookie, true, errnoOf(err), "map failed: "+err.Error())
			return
		}
	}
	if len(exts) == 0 {
		exts = []Extent{{Off: off, Len: length}}
	}
	p := binary.BigEndian.AppendUint32(make([]byte, 0, 4+8*len(exts)), baseAllocationID)
	for _, e := range exts {
		p = binary.BigEndian.AppendUint32(p, uint32(e.Len))
		p = binary.BigEndian.AppendUint32(p, e.Flags)
	}
	c.send(net.Buffers{chunkHeader(replyFlagDone, replyTypeBlockStatus, cookie, len(p)), p})
}
