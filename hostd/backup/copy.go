package backup

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/virtkeep/virtkeep/bitmap"
	"github.com/virtkeep/virtkeep/nbd"
	"github.com/virtkeep/virtkeep/target"
)

// CopyOptions tune CopyDisk.
type CopyOptions struct {
	// InFlight is how many chunks are read at once (default 16).
	InFlight int
	// Progress, if set, is called on the caller's goroutine after each
	// piece with the bytes of the disk handled so far and the total.
	Progress func(done, total int64)
}

// CopyStats says what a copy read.
type CopyStats struct {
	BytesRead    int64 // bytes read from the source
	BytesSkipped int64 // unchanged bytes kept from the base point
	BytesZero    int64 // changed bytes that read as zeroes (not read)
	// Read is the time spent in reads from the source, summed over the
	// reads in flight.
	Read time.Duration
}

// CopyDisk copies a disk from src into dw following plan: with incremental
// set, chunks with no dirty byte are kept from dw's base point; chunks that
// read as zeroes are recorded without reading; the rest is read, only where
// the plan says there is data, and written in order. dw must be new; the
// caller Closes it.
func CopyDisk(ctx context.Context, src nbd.Reader, plan *bitmap.Map, incremental bool, dw *target.DiskWriter, o CopyOptions) (CopyStats, error) {
	var st CopyStats
	cs := int64(dw.ChunkSize())
	if plan.Size() != dw.Chunks()*cs && (plan.Size()+cs-1)/cs != dw.Chunks() {
		return st, fmt.Errorf("copy: plan of %d bytes for a disk of %d chunks", plan.Size(), dw.Chunks())
	}
	n := o.InFlight
	if n <= 0 {
		n = 16
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	type task struct {
		p    bitmap.Piece
		buf  *[]byte
		done chan error
	}
	tasks := make(chan *task, n)
	sem := make(chan struct{}, n)
	var walkErr error
	var readers sync.WaitGroup
	var readNS atomic.Int64
	go func() {
		defer close(tasks)
		walkErr = plan.Walk(cs, incremental, func(p bitmap.Piece) error {
			t := &task{p: p, done: make(chan error, 1)}
			if p.Action == bitmap.Read {
				select {
				case sem <- struct{}{}:
				case <-ctx.Done():
					return ctx.Err()
				}
				t.buf = dw.ChunkBuffer()
				readers.Add(1)
				go func() {
					defer readers.Done()
					defer func() { <-sem }()
					t0 := time.Now()
					err := readPiece(ctx, src, p, (*t.buf)[:p.Len])
					readNS.Add(int64(time.Since(t0)))
					t.done <- err
				}()
			} else {
				t.done <- nil
			}
			select {
			case tasks <- t:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		})
	}()
	var err error
	var done int64
	for t := range tasks {
		if err != nil {
			continue // drain
		}
		if rerr := <-t.done; rerr != nil {
			err = rerr
			cancel()
			continue
		}
		idx := t.p.Off / cs
		chunks := (t.p.Len + cs - 1) / cs
		switch t.p.Action {
		case bitmap.Skip:
			err = dw.Keep(ctx, idx, chunks)
			st.BytesSkipped += t.p.Len
		case bitmap.Zeroes:
			err = dw.Zero(ctx, idx, chunks)
			st.BytesZero += t.p.Len
		case bitmap.Read:
			err = dw.WriteChunkBuffer(ctx, idx, t.buf, int(t.p.Len))
			for _, r := range t.p.Reads {
				st.BytesRead += r.Len
			}
		}
		if err != nil {
			cancel()
			continue
		}
		done += t.p.Len
		if o.Progress != nil {
			o.Progress(done, plan.Size())
		}
	}
	readers.Wait()
	st.Read = time.Duration(readNS.Load())
	if err == nil && walkErr != nil {
		err = walkErr
	}
	if err != nil {
		return st, fmt.Errorf("copy: %w", err)
	}
	return st, nil
}

// readPiece reads a piece's data ranges into buf (which covers the piece)
// and zeroes the rest.
func readPiece(ctx context.Context, src nbd.Reader, p bitmap.Piece, buf []byte) error {
	at := p.Off
	for _, r := range p.Reads {
		clear(buf[at-p.Off : r.Off-p.Off])
		if err := src.Read(ctx, buf[r.Off-p.Off:r.Off-p.Off+r.Len], r.Off); err != nil {
			return fmt.Errorf("read [%d, +%d): %w", r.Off, r.Len, err)
		}
		at = r.Off + r.Len
	}
	clear(buf[at-p.Off:])
	return nil
}
