package qmp

import (
	"errors"
	"fmt"
)

// Class is a QMP error class, as QEMU reports it in an error reply.
// errors.Is(err, qmp.ClassDeviceNotFound) matches an *Error of that class.
type Class string

// The error classes QEMU uses.
const (
	ClassGenericError    Class = "GenericError"
	ClassCommandNotFound Class = "CommandNotFound"
	ClassDeviceNotActive Class = "DeviceNotActive"
	ClassDeviceNotFound  Class = "DeviceNotFound"
	ClassKVMMissingCap   Class = "KVMMissingCap"
)

func (c Class) Error() string { return "qmp: " + string(c) }

// Error is an error reply from QEMU to a command.
type Error struct {
	Command string // the command that failed
	Class   Class  // the QMP error class
	Desc    string // QEMU's description
}

func (e *Error) Error() string {
	return fmt.Sprintf("qmp %s: %s (%s)", e.Command, e.Desc, e.Class)
}

// Is reports whether target is e's class.
func (e *Error) Is(target error) bool {
	c, ok := target.(Class)
	return ok && c == e.Class
}

// Errors the typed helpers return when what they were asked about does not
// exist. They are wrapped with the name that was not found.
var (
	ErrNodeNotFound   = errors.New("block node not found")
	ErrBitmapNotFound = errors.New("dirty bitmap not found")
	ErrDeviceNotFound = errors.New("block device not found")
	// ErrProtocol means QEMU (or the path to it) said something that is not QMP.
	ErrProtocol = errors.New("qmp protocol error")
)
