package main

import (
	"errors"
	"fmt"

	"github.com/virtkeep/virtkeep/cmd/internal/config"
	"github.com/virtkeep/virtkeep/hostd/api"
)

// Exit codes (documented in docs/CLI.md; scripts depend on them).
const (
	exitOK          = 0
	exitFailure     = 1 // the operation failed
	exitUsage       = 2 // bad flags, arguments or configuration
	exitNotFound    = 3 // no such domain, point, disk, target, job or session
	exitConsistency = 4 // --require-consistency and it was not reached
	exitLocked      = 5 // the repository is locked by another operation
	exitBusy        = 6 // the domain has a job already, or the daemon holds the host
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

// exitCode maps an error to the documented exit code, by its code only.
func exitCode(err error) int {
	var ce *cliError
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, &ce):
		return ce.code
	case errors.Is(err, config.ErrInvalid):
		return exitUsage
	}
	switch api.CodeOf(err) {
	case api.CodeBadRequest:
		return exitUsage
	case api.CodeNotFound:
		return exitNotFound
	case api.CodeConsistency:
		return exitConsistency
	case api.CodeLocked:
		return exitLocked
	case api.CodeBusy:
		return exitBusy
	}
	return exitFailure
}

// withAdvice adds what the user can do about an error: the service's
// errors say what is wrong, the CLI says which flag changes it.
func withAdvice(err error) error {
	switch api.CodeOf(err) {
	case api.CodeExists:
		return fmt.Errorf("%w (use --force to overwrite)", err)
	case api.CodeShutdown:
		return fmt.Errorf("%w (virtkeepd is stopping; try again when it is back)", err)
	}
	return err
}
