package api

import (
	"errors"
	"fmt"
	"net/http"
)

// Code classifies an error, for exit codes and HTTP statuses. Decisions
// are taken on codes, never on message text.
type Code string

const (
	CodeBadRequest  Code = "bad_request"   // malformed or invalid request
	CodeForbidden   Code = "forbidden"     // the caller may not use the API
	CodeNotFound    Code = "not_found"     // no such domain, point, disk, target, job or session
	CodeBusy        Code = "busy"          // the domain has a job already; the host is held by another virtkeep
	CodeExists      Code = "exists"        // a restore destination exists (force overwrites)
	CodeLocked      Code = "locked"        // the repository is locked by another operation
	CodeConsistency Code = "consistency"   // the required consistency was not reached
	CodeUnavailable Code = "unavailable"   // a target or libvirt cannot be reached
	CodeCancelled   Code = "cancelled"     // the job was cancelled
	CodeShutdown    Code = "shutting_down" // the daemon takes no more jobs
	CodeFailed      Code = "failed"        // anything else
)

// Error is an error with a code; it is the API's error body.
type Error struct {
	Code    Code   `json:"code"`
	Message string `json:"message"`
	err     error
}

func (e *Error) Error() string { return e.Message }
func (e *Error) Unwrap() error { return e.err }

// Errorf makes an *Error with a formatted message; %w keeps the wrapped
// error reachable with errors.Is in process.
func Errorf(code Code, format string, args ...any) error {
	err := fmt.Errorf(format, args...)
	return &Error{Code: code, Message: err.Error(), err: errors.Unwrap(err)}
}

// WithCode gives err a code unless it has one; nil stays nil.
func WithCode(code Code, err error) error {
	if err == nil {
		return nil
	}
	var e *Error
	if errors.As(err, &e) {
		return err
	}
	return &Error{Code: code, Message: err.Error(), err: err}
}

// CodeOf returns err's code: CodeFailed for an error without one.
func CodeOf(err error) Code {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return CodeFailed
}

// HTTPStatus is the status the API answers an error of code c with.
func HTTPStatus(c Code) int {
	switch c {
	case CodeBadRequest:
		return http.StatusBadRequest
	case CodeForbidden:
		return http.StatusForbidden
	case CodeNotFound:
		return http.StatusNotFound
	case CodeBusy, CodeExists:
		return http.StatusConflict
	case CodeLocked:
		return http.StatusLocked
	case CodeConsistency:
		return http.StatusUnprocessableEntity
	case CodeUnavailable, CodeShutdown:
		return http.StatusServiceUnavailable
	}
	return http.StatusInternalServerError
}
