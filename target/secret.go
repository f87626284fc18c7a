package target

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"syscall"
)

// Secret is a credential such as an S3 secret key. It never prints: fmt,
// slog and encoders show "[redacted]"; Reveal gives the value to the one
// call that needs it.
type Secret string

const redacted = "[redacted]"

func (Secret) String() string                { return redacted }
func (Secret) GoString() string              { return `target.Secret("` + redacted + `")` }
func (Secret) LogValue() slog.Value          { return slog.StringValue(redacted) }
func (Secret) MarshalText() ([]byte, error)  { return []byte(redacted), nil }
func (s Secret) Reveal() string              { return string(s) }
func (s Secret) Empty() bool                 { return s == "" }
func (Secret) Format(f fmt.State, verb rune) { _, _ = io.WriteString(f, redacted) }

// ErrSecretFile is wrapped by errors for a secret file (key file, S3
// secret, SSH identity) that others could read or replace.
var ErrSecretFile = errors.New("secret file is not private")

// maxSecretFile bounds what ReadSecretFile reads.
const maxSecretFile = 64 << 10

// ReadSecretFile reads a file holding a secret. It must be a regular file
// owned by the user virtkeep runs as (root) with no permission for group
// or others; anything else is refused with an error naming the file, its
// owner and its mode. Checks are made on the opened file, so a swap
// between check and read changes nothing.
func ReadSecretFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	switch {
	case !fi.Mode().IsRegular():
		return nil, fmt.Errorf("%s is not a regular file: %w", path, ErrSecretFile)
	case !ok || int(st.Uid) != os.Geteuid():
		return nil, fmt.Errorf("%s is owned by uid %d, not %d: %w (chown)", path, st.Uid, os.Geteuid(), ErrSecretFile)
	case fi.Mode().Perm()&0o077 != 0:
		return nil, fmt.Errorf("%s has mode %04o: group and others must have no access: %w (chmod 600)", path, fi.Mode().Perm(), ErrSecretFile)
	}
	b, err := io.ReadAll(io.LimitReader(f, maxSecretFile+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxSecretFile {
		return nil, fmt.Errorf("%s is larger than %d bytes: not a secret file", path, maxSecretFile)
	}
	return b, nil
}

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
	return errors.Is(err, ErrConfig) || errors.Is(err, ErrSecretFile) || errors.Is(err, ErrWrongKey) || errors.Is(err, ErrChunkSize)
}
