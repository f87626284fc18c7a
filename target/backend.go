package target

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Backend is where a repository's objects live: a directory, an SFTP
// directory, an S3 bucket. Keys are slash-separated relative paths such as
// "chunks/ab/ab12…"; see docs/FORMAT.md.
//
// A Backend is safe for concurrent use by any number of goroutines, and by
// several processes or hosts on the same storage. Put is atomic: a reader
// sees an object whole or not at all, never a part, even if the writer
// crashes. Put of an existing key replaces it atomically.
type Backend interface {
	// Put stores data under key.
	Put(ctx context.Context, key string, data []byte) error
	// Get returns length bytes of the object from off; length < 0 reads to
	// the end. A missing object is an error wrapping ErrNotFound. Reading
	// past the end returns what exists.
	Get(ctx context.Context, key string, off, length int64) ([]byte, error)
	// Stat describes the object, or returns an error wrapping ErrNotFound.
	Stat(ctx context.Context, key string) (ObjectInfo, error)
	// List calls fn for each object whose key starts with prefix, in no
	// particular order, on the caller's goroutine. An error from fn stops the
	// listing and is returned. Objects put or deleted during the listing may
	// or may not be seen.
	List(ctx context.Context, prefix string, fn func(ObjectInfo) error) error
	// Delete removes the object; deleting a missing object is not an error.
	Delete(ctx context.Context, key string) error
	// Sync makes every completed Put durable (it survives a power loss).
	Sync(ctx context.Context) error
	// SyncObjects makes the objects at keys durable whoever wrote them:
	// where an object can be visible before it is durable (a local file
	// system's directory entries), a point that reuses objects another
	// process wrote (and may not have synced: it crashed, or is still
	// running) must make them durable before its manifest names them.
	// Missing keys are no error; backends whose objects are durable once
	// visible do nothing.
	SyncObjects(ctx context.Context, keys []string) error
	// Properties describes the backend.
	Properties() Properties
	// Close releases the backend's resources.
	Close() error
}

// AfterLister is a Backend that can list only the keys that sort after a
// given one (S3's StartAfter), skipping the others on the server. Wrappers
// of backends implement it by passing it on (ListAfter).
type AfterLister interface {
	ListAfter(ctx context.Context, prefix, after string, fn func(ObjectInfo) error) error
}

// ListAfter is List of the keys under prefix that sort after prefix+after:
// done by the server where b can (AfterLister), else filtered here.
func ListAfter(ctx context.Context, b Backend, prefix, after string, fn func(ObjectInfo) error) error {
	if al, ok := b.(AfterLister); ok {
		return al.ListAfter(ctx, prefix, after, fn)
	}
	return b.List(ctx, prefix, func(fi ObjectInfo) error {
		if fi.Key <= prefix+after {
			return nil
		}
		return fn(fi)
	})
}

// ObjectInfo describes a stored object.
type ObjectInfo struct {
	Key     string
	Size    int64
	ModTime time.Time
}

// Properties are what a backend is and can do.
type Properties struct {
	// Name is a human-readable location with any credentials stripped.
	Name string
	// Local is true for backends on this host's file systems.
	Local bool
}

// TempPrefix starts the names of the temporary files backends that write
// files (local, SFTP) put an object into before renaming it into place.
// Such names are never keys: listings skip them and GC sweeps old ones.
const TempPrefix = ".tmp-"

// TempName returns a new random temporary file name.
func TempName() string {
	var rnd [8]byte
	_, _ = rand.Read(rnd[:])
	return TempPrefix + hex.EncodeToString(rnd[:])
}

// IsTemp reports whether a file's base name is a temporary file's.
func IsTemp(name string) bool { return strings.HasPrefix(name, TempPrefix) }

// ErrNotFound is wrapped by errors for objects that do not exist.
var ErrNotFound = errors.New("object not found")

// ErrBadKey is wrapped by errors for malformed object keys.
var ErrBadKey = errors.New("malformed object key")

// CheckKey validates an object key: non-empty slash-separated segments of
// [A-Za-z0-9._-], none "." or "..", no leading or trailing slash.
func CheckKey(key string) error {
	if key == "" || len(key) > 512 {
		return fmt.Errorf("key %q: %w", key, ErrBadKey)
	}
	for _, seg := range strings.Split(key, "/") {
		if seg == "" || seg == "." || seg == ".." {
			return fmt.Errorf("key %q: %w", key, ErrBadKey)
		}
		for _, r := range seg {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-') {
				return fmt.Errorf("key %q: %w", key, ErrBadKey)
			}
		}
	}
	return nil
}
