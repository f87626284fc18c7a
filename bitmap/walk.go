package bitmap

import "fmt"

// Action is what a backup does with a piece of a disk.
type Action uint8

// Actions of a Piece.
const (
	// Skip: unchanged since the checkpoint; the previous point's chunks stand.
	Skip Action = iota
	// Zeroes: the piece reads as zeroes; nothing is read, nothing stored.
	Zeroes
	// Read: the piece's Reads ranges are read; the rest of it is zeroes.
	Read
)

func (a Action) String() string {
	switch a {
	case Skip:
		return "skip"
	case Zeroes:
		return "zeroes"
	case Read:
		return "read"
	}
	return fmt.Sprintf("action(%d)", uint8(a))
}

// Range is a byte range [Off, Off+Len).
type Range struct{ Off, Len int64 }

// Piece is a chunk-aligned part of a disk and what to do with it. Skip and
// Zeroes pieces may span many chunks; a Read piece is one chunk (the last
// chunk of the disk may be short).
type Piece struct {
	Off, Len int64
	Action   Action
	Reads    []Range // Read only: the data ranges, in order, inside the piece
}

// Walk cuts the disk into chunks of chunkSize bytes aligned to the disk and
// calls fn for each piece, in order, on the caller's goroutine. With
// incremental set, chunks with no Dirty byte are skipped; otherwise every
// chunk is treated as changed (a full backup). A changed chunk that reads as
// zeroes throughout becomes Zeroes (this keeps incrementals small after the
// guest trims); otherwise it is read, only where it holds data. Runs of
// Skip or Zeroes chunks are passed as one piece.
func (m *Map) Walk(chunkSize int64, incremental bool, fn func(Piece) error) error {
	if chunkSize <= 0 {
		return fmt.Errorf("bitmap: chunk size %d", chunkSize)
	}
	var run Piece // pending Skip/Zeroes run
	flush := func() error {
		if run.Len == 0 {
			return nil
		}
		p := run
		run = Piece{}
		return fn(p)
	}
	i := 0
	var reads []Range
	for off := int64(0); off < m.size; off += chunkSize {
		end := min(off+chunkSize, m.size)
		for m.ext[i].Off+m.ext[i].Len <= off {
			i++
		}
		dirty := !incremental
		reads = reads[:0]
		for j := i; j < len(m.ext) && m.ext[j].Off < end; j++ {
			e := m.ext[j]
			if e.State&Dirty != 0 {
				dirty = true
			}
			if e.State&Zero == 0 {
				lo, hi := max(e.Off, off), min(e.Off+e.Len, end)
				if n := len(reads); n > 0 && reads[n-1].Off+reads[n-1].Len == lo {
					reads[n-1].Len += hi - lo
				} else {
					reads = append(reads, Range{lo, hi - lo})
				}
			}
		}
		act := Read
		switch {
		case !dirty:
			act = Skip
		case len(reads) == 0:
			act = Zeroes
		}
		if act != Read {
			if run.Len > 0 && run.Action != act {
				if err := flush(); err != nil {
					return err
				}
			}
			if run.Len == 0 {
				run = Piece{Off: off, Action: act}
			}
			run.Len += end - off
			continue
		}
		if err := flush(); err != nil {
			return err
		}
		if err := fn(Piece{Off: off, Len: end - off, Action: Read, Reads: append([]Range(nil), reads...)}); err != nil {
			return err
		}
	}
	return flush()
}
