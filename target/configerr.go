package target

import (
	"errors"

	"github.com/virtkeep/virtkeep/target/secret"
)

// ErrConfig is wrapped by errors in what an operator configured for a
// target (a key or secret file, a setting): no retry can mend them.
var ErrConfig = errors.New("target configuration")

// configError marks err as a configuration error, its text unchanged.
type configError struct{ err error }

func (e configError) Error() string        { return e.err.Error() }
func (e configError) Unwrap() error        { return e.err }
func (e configError) Is(target error) bool { return target == ErrConfig }

// ConfigError marks err as a configuration error (errors.Is(err,
// ErrConfig)), its text unchanged; nil stays nil.
func ConfigError(err error) error {
	if err == nil {
		return nil
	}
	return configError{err}
}

// IsConfig reports whether err is a configuration error: the operator's
// files or settings, or a key that does not open the repository.
func IsConfig(err error) bool {
	return errors.Is(err, ErrConfig) || errors.Is(err, secret.ErrNotPrivate) || errors.Is(err, ErrWrongKey) || errors.Is(err, ErrChunkSize)
}
