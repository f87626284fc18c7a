package nbd

import (
	"errors"
	"fmt"
)

// ErrProtocol marks a violation of the NBD protocol by the peer. The
// connection is unusable after it.
var ErrProtocol = errors.New("nbd protocol violation")

// ErrClosed is returned for requests on a closed client.
var ErrClosed = errors.New("nbd: client closed")

// ErrUnsupported is returned for a command or option the server did not offer.
var ErrUnsupported = errors.New("nbd: not supported by the server")

func protoErr(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrProtocol, fmt.Sprintf(format, args...))
}

// Errno is an error code the server sent for a request (EIO, EINVAL, ...).
type Errno uint32

// Errno values of the protocol.
const (
	EPERM     Errno = errPerm
	EIO       Errno = errIO
	ENOMEM    Errno = errNoMem
	EINVAL    Errno = errInval
	ENOSPC    Errno = errNoSpc
	EOVERFLOW Errno = errOverflow
	ENOTSUP   Errno = errNotSup
	ESHUTDOWN Errno = errShutdown
)

func (e Errno) Error() string {
	switch e {
	case EPERM:
		return "EPERM (operation not permitted)"
	case EIO:
		return "EIO (input/output error)"
	case ENOMEM:
		return "ENOMEM (out of memory)"
	case EINVAL:
		return "EINVAL (invalid argument)"
	case ENOSPC:
		return "ENOSPC (no space left)"
	case EOVERFLOW:
		return "EOVERFLOW (request too large)"
	case ENOTSUP:
		return "ENOTSUP (not supported)"
	case ESHUTDOWN:
		return "ESHUTDOWN (server shutting down)"
	}
	return fmt.Sprintf("errno %d", uint32(e))
}

// RequestError is a server's error reply to one request. The connection
// stays usable.
type RequestError struct {
	Command string
	Offset  int64
	Length  int64
	Errno   Errno
	Message string // optional text from a structured error chunk
}

func (e *RequestError) Error() string {
	s := fmt.Sprintf("nbd %s [%d, +%d): %v", e.Command, e.Offset, e.Length, e.Errno)
	if e.Message != "" {
		s += ": " + e.Message
	}
	return s
}

func (e *RequestError) Unwrap() error { return e.Errno }

// OptionError is a server's refusal of a handshake option.
type OptionError struct {
	Option string
	Reply  uint32
	Text   string
}

func (e *OptionError) Error() string {
	s := fmt.Sprintf("nbd: option %s refused: %s", e.Option, repName(e.Reply))
	if e.Text != "" {
		s += ": " + e.Text
	}
	return s
}

// Is makes errors.Is(err, ErrUnsupported) true for NBD_REP_ERR_UNSUP.
func (e *OptionError) Is(target error) bool {
	return target == ErrUnsupported && e.Reply == repErrUnsup
}

func repName(r uint32) string {
	switch r {
	case repErrUnsup:
		return "unsupported"
	case repErrPolicy:
		return "forbidden by policy"
	case repErrInvalid:
		return "invalid"
	case repErrPlatform:
		return "unsupported on this platform"
	case repErrTLSReqd:
		return "TLS required"
	case repErrUnknown:
		return "unknown export"
	case repErrShutdown:
		return "server shutting down"
	case repErrBlockSizeReqd:
		return "block size negotiation required"
	case repErrTooBig:
		return "request too big"
	}
	return fmt.Sprintf("reply type %#x", r)
}

func optName(o uint32) string {
	switch o {
	case optExportName:
		return "EXPORT_NAME"
	case optAbort:
		return "ABORT"
	case optList:
		return "LIST"
	case optStartTLS:
		return "STARTTLS"
	case optInfo:
		return "INFO"
	case optGo:
		return "GO"
	case optStructuredReply:
		return "STRUCTURED_REPLY"
	case optListMetaContext:
		return "LIST_META_CONTEXT"
	case optSetMetaContext:
		return "SET_META_CONTEXT"
	case optExtendedHeaders:
		return "EXTENDED_HEADERS"
	}
	return fmt.Sprintf("option %d", o)
}

func cmdName(c uint16) string {
	switch c {
	case cmdRead:
		return "READ"
	case cmdWrite:
		return "WRITE"
	case cmdDisc:
		return "DISC"
	case cmdFlush:
		return "FLUSH"
	case cmdTrim:
		return "TRIM"
	case cmdCache:
		return "CACHE"
	case cmdWriteZeroes:
		return "WRITE_ZEROES"
	case cmdBlockStatus:
		return "BLOCK_STATUS"
	}
	return fmt.Sprintf("command %d", c)
}
