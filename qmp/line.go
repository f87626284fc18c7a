package qmp

import (
	"bufio"
	"errors"
	"fmt"
)

// MaxLine bounds one message of QEMU's monitor or of a guest agent (which
// speaks the same JSON-lines protocol): the largest replies virtkeep asks
// for (query-named-block-nodes of a big domain) are a few MiB, and a guest
// streaming an endless line must not exhaust the host's memory.
const MaxLine = 16 << 20

// ErrLineTooLong is wrapped by ReadLine's error for a line over its limit.
var ErrLineTooLong = errors.New("message longer than the limit")

// ReadLine reads up to and including '\n', at most limit bytes: a longer
// line is an error wrapping ErrLineTooLong and ErrProtocol, and whatever
// was read of it is dropped.
func ReadLine(r *bufio.Reader, limit int) ([]byte, error) {
	var line []byte
	for {
		frag, err := r.ReadSlice('\n')
		if len(line)+len(frag) > limit {
			return nil, fmt.Errorf("%w: %w (%d bytes)", ErrProtocol, ErrLineTooLong, limit)
		}
		line = append(line, frag...)
		if !errors.Is(err, bufio.ErrBufferFull) {
			return line, err
		}
	}
}
