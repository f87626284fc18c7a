package nbd

import (
	"context"
	"fmt"
	"io"
	"sort"
)

// maxPayload is the largest READ or WRITE the client sends in one request.
func (c *Client) maxPayload() int64 { return int64(c.info.MaxBlock) }

// Read fills p with the export's data at off. Reads larger than the server's
// maximum block size are split into requests that are all in flight at once.
func (c *Client) Read(ctx context.Context, p []byte, off int64) error {
	if off < 0 || off+int64(len(p)) > c.info.Size {
		return fmt.Errorf("nbd READ [%d, +%d): outside the export of %d bytes", off, len(p), c.info.Size)
	}
	max := c.maxPayload()
	if int64(len(p)) <= max {
		return c.readOne(ctx, p, off)
	}
	errc := make(chan error, (int64(len(p))+max-1)/max)
	n := 0
	for done := int64(0); done < int64(len(p)); done += max {
		end := min(done+max, int64(len(p)))
		go func(b []byte, o int64) { errc <- c.readOne(ctx, b, o) }(p[done:end], off+done)
		n++
	}
	var first error
	for ; n > 0; n-- {
		if err := <-errc; err != nil && first == nil {
			first = err
		}
	}
	return first
}

func (c *Client) readOne(ctx context.Context, p []byte, off int64) error {
	if len(p) == 0 {
		return nil
	}
	return c.do(ctx, &request{cmd: cmdRead, off: off, length: int64(len(p)), buf: p}, 0, nil)
}

// ReaderAt returns an io.ReaderAt over the export whose reads use ctx.
func (c *Client) ReaderAt(ctx context.Context) io.ReaderAt { return readerAt{c, ctx} }

type readerAt struct {
	c   *Client
	ctx context.Context
}

func (r readerAt) ReadAt(p []byte, off int64) (int, error) {
	if off >= r.c.info.Size {
		return 0, io.EOF
	}
	var eof error
	if rest := r.c.info.Size - off; int64(len(p)) > rest {
		p, eof = p[:rest], io.EOF
	}
	if err := r.c.Read(r.ctx, p, off); err != nil {
		return 0, err
	}
	return len(p), eof
}

// Write writes p at off; with fua the server makes it durable before it
// answers. Writes larger than the maximum block size are split.
func (c *Client) Write(ctx context.Context, p []byte, off int64, fua bool) error {
	if c.info.Flags&FlagReadOnly != 0 {
		return fmt.Errorf("nbd WRITE: export is read-only: %w", ErrUnsupported)
	}
	var flags uint16
	if fua {
		if c.info.Flags&FlagSendFUA == 0 {
			return fmt.Errorf("nbd WRITE with FUA: %w", ErrUnsupported)
		}
		flags |= cmdFlagFUA
	}
	for len(p) > 0 {
		n := min(int64(len(p)), c.maxPayload())
		if err := c.do(ctx, &request{cmd: cmdWrite, off: off, length: n}, flags, p[:n]); err != nil {
			return err
		}
		p, off = p[n:], off+n
	}
	return nil
}

// ZeroFlags modify WriteZeroes.
type ZeroFlags struct {
	NoHole   bool // the zeroes must be allocated, not punched
	FastZero bool // fail with ENOTSUP rather than write zeroes slowly
}

// WriteZeroes makes [off, off+length) read as zeroes.
func (c *Client) WriteZeroes(ctx context.Context, off, length int64, zf ZeroFlags) error {
	if c.info.Flags&FlagSendWriteZeroes == 0 {
		return fmt.Errorf("nbd WRITE_ZEROES: %w", ErrUnsupported)
	}
	var flags uint16
	if zf.NoHole {
		flags |= cmdFlagNoHole
	}
	if zf.FastZero {
		if c.info.Flags&FlagSendFastZero == 0 {
			return fmt.Errorf("nbd WRITE_ZEROES with FAST_ZERO: %w", ErrUnsupported)
		}
		flags |= cmdFlagFastZero
	}
	return c.ranged(ctx, cmdWriteZeroes, flags, off, length)
}

// Trim tells the server [off, off+length) is no longer needed.
func (c *Client) Trim(ctx context.Context, off, length int64) error {
	if c.info.Flags&FlagSendTrim == 0 {
		return fmt.Errorf("nbd TRIM: %w", ErrUnsupported)
	}
	return c.ranged(ctx, cmdTrim, 0, off, length)
}

// ranged sends a payload-less command over a range, split to fit 32 bits.
func (c *Client) ranged(ctx context.Context, cmd, flags uint16, off, length int64) error {
	step := c.maxRange()
	for length > 0 {
		n := min(length, step)
		if err := c.do(ctx, &request{cmd: cmd, off: off, length: n}, flags, nil); err != nil {
			return err
		}
		off, length = off+n, length-n
	}
	return nil
}

// maxRange is the largest length of a payload-less request: under 4 GiB and
// a multiple of the minimum block size.
func (c *Client) maxRange() int64 {
	mb := int64(c.info.MinBlock)
	return (0xffffffff - 1<<20 + 1) / mb * mb
}

// Flush makes every completed write durable.
func (c *Client) Flush(ctx context.Context) error {
	if c.info.Flags&FlagSendFlush == 0 {
		return fmt.Errorf("nbd FLUSH: %w", ErrUnsupported)
	}
	return c.do(ctx, &request{cmd: cmdFlush}, 0, nil)
}

// BlockStatus asks the status of [off, off+length) in every granted meta
// context. The server may describe less than asked (never more: a final
// extent past the end is clipped); the result maps context names to extents
// that start at off and are contiguous.
func (c *Client) BlockStatus(ctx context.Context, off, length int64) (map[string][]Extent, error) {
	if len(c.ctxByID) == 0 {
		return nil, fmt.Errorf("nbd BLOCK_STATUS: no meta context was negotiated: %w", ErrUnsupported)
	}
	length = min(length, c.maxRange())
	r := &request{cmd: cmdBlockStatus, off: off, length: length}
	if err := c.do(ctx, r, 0, nil); err != nil {
		return nil, err
	}
	out := make(map[string][]Extent, len(r.extents))
	for id, e := range r.extents {
		out[c.ctxByID[id]] = e
	}
	return out, nil
}

// mapWindows is how many block status requests Map keeps in flight.
const mapWindows = 8

// Map walks the status of [off, off+length) in meta context name and calls
// fn for each extent, in order, on the caller's goroutine. Neighbouring
// extents with equal flags may be reported separately. Several block status
// requests are in flight at once, each over its own window of the range.
func (c *Client) Map(ctx context.Context, name string, off, length int64, fn func(Extent) error) error {
	if !c.HasContext(name) {
		return fmt.Errorf("nbd: meta context %q was not negotiated: %w", name, ErrUnsupported)
	}
	if off < 0 || length < 0 || off+length > c.info.Size {
		return fmt.Errorf("nbd: map [%d, +%d): outside the export of %d bytes", off, length, c.info.Size)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	window := c.maxRange()
	type result struct {
		exts []Extent
		err  error
	}
	var chans []chan result
	start := func(wo, wl int64) chan result {
		ch := make(chan result, 1)
		go func() {
			var exts []Extent
			for wl > 0 {
				m, err := c.BlockStatus(ctx, wo, wl)
				if err != nil {
					ch <- result{err: err}
					return
				}
				e := m[name]
				if len(e) == 0 {
					ch <- result{err: protoErr("block status [%d, +%d) has no extents for %q", wo, wl, name)}
					return
				}
				var got int64
				for _, x := range e {
					got += x.Len
				}
				exts = append(exts, e...)
				wo, wl = wo+got, wl-got
			}
			ch <- result{exts: exts}
		}()
		return ch
	}
	next := off
	end := off + length
	for len(chans) < mapWindows && next < end {
		n := min(window, end-next)
		chans = append(chans, start(next, n))
		next += n
	}
	for len(chans) > 0 {
		r := <-chans[0]
		chans = chans[1:]
		if r.err != nil {
			return r.err
		}
		if next < end {
			n := min(window, end-next)
			chans = append(chans, start(next, n))
			next += n
		}
		for _, e := range r.exts {
			if err := fn(e); err != nil {
				return err
			}
		}
	}
	return nil
}

func sortedNames(m map[string]uint32) []string {
	out := make([]string, 0, len(m))
	for n := range m {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}
