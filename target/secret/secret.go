// Package secret holds credentials so that they never print (Value) and
// reads the files that hold them only when no one else can read or
// replace them (ReadFile). It imports nothing of virtkeep, so every
// package that carries a credential can use it.
package secret

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"syscall"
)

// Value is a credential such as an S3 secret key or a webhook token. It never prints: fmt,
// slog and encoders show "[redacted]"; Reveal gives the value to the one
// call that needs it.
type Value string

const redacted = "[redacted]"

func (Value) String() string                { return redacted }
func (Value) GoString() string              { return `secret.Value("` + redacted + `")` }
func (Value) LogValue() slog.Value          { return slog.StringValue(redacted) }
func (Value) MarshalText() ([]byte, error)  { return []byte(redacted), nil }
func (s Value) Reveal() string              { return string(s) }
func (s Value) Empty() bool                 { return s == "" }
func (Value) Format(f fmt.State, verb rune) { _, _ = io.WriteString(f, redacted) }

// ErrNotPrivate is wrapped by errors for a secret file (key file, S3
// secret, SSH identity) that others could read or replace.
var ErrNotPrivate = errors.New("secret file is not private")

// maxFile bounds what ReadFile reads.
const maxFile = 64 << 10

// ReadFile reads a file holding a secret. It must be a regular file
// owned by the user virtkeep runs as (root) with no permission for group
// or others; anything else is refused with an error naming the file, its
// owner and its mode. Checks are made on the opened file, so a swap
// between check and read changes nothing.
func ReadFile(path string) ([]byte, error) {
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
		return nil, fmt.Errorf("%s is not a regular file: %w", path, ErrNotPrivate)
	case !ok || int(st.Uid) != os.Geteuid():
		return nil, fmt.Errorf("%s is owned by uid %d, not %d: %w (chown)", path, st.Uid, os.Geteuid(), ErrNotPrivate)
	case fi.Mode().Perm()&0o077 != 0:
		return nil, fmt.Errorf("%s has mode %04o: group and others must have no access: %w (chmod 600)", path, fi.Mode().Perm(), ErrNotPrivate)
	}
	b, err := io.ReadAll(io.LimitReader(f, maxFile+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxFile {
		return nil, fmt.Errorf("%s is larger than %d bytes: not a secret file", path, maxFile)
	}
	return b, nil
}
