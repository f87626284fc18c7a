package main

import (
	"errors"
	"fmt"

	"libvirt.org/go/libvirt"

	"github.com/virtkeep/virtkeep/hostd/engine"
	"github.com/virtkeep/virtkeep/target"
)

// Exit codes (documented in docs/CLI.md; scripts depend on them).
const (
	exitOK          = 0
	exitFailure     = 1 // the operation failed
	exitUsage       = 2 // bad flags, arguments or configuration
	exitNotFound    = 3 // no such domain, point, disk or target
	exitConsistency = 4 // --require-consistency and it was not reached
	exitLocked      = 5 // the repository is locked by another operation
)

// cliError carries an exit code with a message for the user.
type cliError struct {
	code int
	err  error
}

func (e *cliError) Error() string { return e.err.Error() }
func (e *cliError) Unwrap() error { return e.err }

func usageErr(format string, args ...any) error {
	return &cliError{exitUsage, fmt.Errorf(format, args...)}
}

func notFoundErr(format string, args ...any) error {
	return &cliError{exitNotFound, fmt.Errorf(format, args...)}
}

// exitCode maps an error to the documented exit code.
func exitCode(err error) int {
	var ce *cliError
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, &ce):
		return ce.code
	case errors.Is(err, engine.ErrConsistency):
		return exitConsistency
	case errors.Is(err, target.ErrLocked):
		return exitLocked
	case errors.Is(err, libvirt.ERR_NO_DOMAIN), errors.Is(err, target.ErrNoPoint), errors.Is(err, target.ErrNotFound):
		return exitNotFound
	}
	return exitFailure
}
