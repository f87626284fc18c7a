package local

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/virtkeep/virtkeep/target"
)

// Config configures a local backend.
type Config struct {
	// Path is the repository directory; it is created if missing.
	Path string
	// FsyncEach makes every Put fsync its directory before it returns
	// (slower; Sync does the same work once for all puts).
	FsyncEach bool
}

// Local is a target.Backend on a directory.
type Local struct {
	cfg Config

	mu    sync.Mutex
	dirty map[string]struct{} // directories with renames not yet fsynced

	syncMu  sync.Mutex // one Sync at a time, so each covers every put before it
	syncErr error      // a failed fsync: sticky, the kernel reports it once
}

var _ target.Backend = (*Local)(nil)

// Open opens (creating if needed) the directory backend.
func Open(cfg Config) (*Local, error) {
	if cfg.Path == "" {
		return nil, errors.New("local: no path")
	}
	p, err := filepath.Abs(cfg.Path)
	if err != nil {
		return nil, fmt.Errorf("local: %w", err)
	}
	cfg.Path = p
	if err := os.MkdirAll(p, 0o700); err != nil {
		return nil, fmt.Errorf("local: %w", err)
	}
	return &Local{cfg: cfg, dirty: map[string]struct{}{}}, nil
}

func (l *Local) path(key string) (string, error) {
	if err := target.CheckKey(key); err != nil {
		return "", fmt.Errorf("local: %w", err)
	}
	return filepath.Join(l.cfg.Path, filepath.FromSlash(key)), nil
}

// Put writes data to a temporary file, fsyncs it and renames it over key.
// The rename comes only after the data is durable, so after a power loss
// the key holds the old object or the new one, never a torn one; Sync
// makes the renames themselves durable.
func (l *Local) Put(ctx context.Context, key string, data []byte) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	p, err := l.path(key)
	if err != nil {
		return err
	}
	dir := filepath.Dir(p)
	f, err := l.createTemp(dir)
	if err != nil {
		return err
	}
	tmp := f.Name()
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, p)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("local: put %s: %w", key, err)
	}
	if l.cfg.FsyncEach {
		return syncDir(dir)
	}
	l.mu.Lock()
	l.dirty[dir] = struct{}{}
	l.mu.Unlock()
	return nil
}

func (l *Local) createTemp(dir string) (*os.File, error) {
	name := filepath.Join(dir, target.TempName())
	f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, fs.ErrNotExist) {
		if err = l.mkdirs(dir); err == nil {
			f, err = os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("local: %w", err)
	}
	return f, nil
}

// mkdirs makes dir and its missing parents below the repository, marking
// the parent of each one it made dirty: every new entry must reach the
// disk, not only the last one.
func (l *Local) mkdirs(dir string) error {
	if dir == l.cfg.Path || !strings.HasPrefix(dir, l.cfg.Path+string(filepath.Separator)) {
		return os.MkdirAll(dir, 0o700)
	}
	if _, err := os.Stat(dir); err == nil {
		return nil
	}
	if err := l.mkdirs(filepath.Dir(dir)); err != nil {
		return err
	}
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	l.mu.Lock()
	l.dirty[filepath.Dir(dir)] = struct{}{}
	l.mu.Unlock()
	return nil
}

// SyncObjects fsyncs the directories holding the objects at keys, and
// their parents up to the repository: another process may have put them
// and never synced (it was killed, or is still running).
func (l *Local) SyncObjects(ctx context.Context, keys []string) error {
	dirs := map[string]bool{}
	for _, k := range keys {
		p, err := l.path(k)
		if err != nil {
			return err
		}
		for d := filepath.Dir(p); !dirs[d] && strings.HasPrefix(d+string(filepath.Separator), l.cfg.Path+string(filepath.Separator)); d = filepath.Dir(d) {
			dirs[d] = true
		}
	}
	for d := range dirs {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := syncDir(d); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	return nil
}

// syncDir fsyncs a directory (a variable: tests observe and fail it).
var syncDir = fsyncDir

func fsyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("local: sync %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("local: sync %s: %w", dir, err)
	}
	return nil
}

// Get reads a range of the object.
func (l *Local) Get(ctx context.Context, key string, off, length int64) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	p, err := l.path(key)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("local: %s: %w", key, target.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("local: %w", err)
	}
	defer f.Close()
	if off < 0 {
		return nil, fmt.Errorf("local: get %s: negative offset %d", key, off)
	}
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("local: %w", err)
	}
	// Allocate what exists, never more than asked.
	if left := max(fi.Size()-off, 0); length < 0 || length > left {
		length = left
	}
	b := make([]byte, length)
	n, err := f.ReadAt(b, off)
	if err != nil && err != io.EOF {
		return nil, fmt.Errorf("local: get %s: %w", key, err)
	}
	return b[:n], nil
}

// Stat describes the object.
func (l *Local) Stat(ctx context.Context, key string) (target.ObjectInfo, error) {
	p, err := l.path(key)
	if err != nil {
		return target.ObjectInfo{}, err
	}
	fi, err := os.Stat(p)
	if errors.Is(err, fs.ErrNotExist) {
		return target.ObjectInfo{}, fmt.Errorf("local: %s: %w", key, target.ErrNotFound)
	}
	if err != nil {
		return target.ObjectInfo{}, fmt.Errorf("local: %w", err)
	}
	return target.ObjectInfo{Key: key, Size: fi.Size(), ModTime: fi.ModTime()}, nil
}

// List walks the directory under prefix.
func (l *Local) List(ctx context.Context, prefix string, fn func(target.ObjectInfo) error) error {
	// Walk the deepest directory the prefix names, then filter.
	dir := l.cfg.Path
	if i := strings.LastIndex(prefix, "/"); i >= 0 {
		dir = filepath.Join(dir, filepath.FromSlash(prefix[:i]))
	}
	err := walkFiles(ctx, dir, func(p string, fi fs.FileInfo) error {
		if target.IsTemp(fi.Name()) {
			return nil
		}
		rel, err := filepath.Rel(l.cfg.Path, p)
		if err != nil {
			return err
		}
		key := filepath.ToSlash(rel)
		if !strings.HasPrefix(key, prefix) {
			return nil
		}
		return fn(target.ObjectInfo{Key: key, Size: fi.Size(), ModTime: fi.ModTime()})
	})
	if err != nil {
		return fmt.Errorf("local: list %q: %w", prefix, err)
	}
	return nil
}

// Delete removes the object.
func (l *Local) Delete(ctx context.Context, key string) error {
	p, err := l.path(key)
	if err != nil {
		return err
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("local: delete %s: %w", key, err)
	}
	l.mu.Lock()
	l.dirty[filepath.Dir(p)] = struct{}{}
	l.mu.Unlock()
	return nil
}

// Sync makes every put and delete before it durable: the files were
// fsynced by Put, so it fsyncs the directories that gained or lost
// entries. Concurrent Syncs (several jobs on one backend) run one at a
// time, so a Sync that finds nothing left to do returns only after the
// Sync that took its directories has finished. A failed fsync is returned
// by that Sync and by every later one: after it the kernel may have
// dropped the data and will not say so again.
func (l *Local) Sync(ctx context.Context) error {
	l.syncMu.Lock()
	defer l.syncMu.Unlock()
	if l.syncErr != nil {
		return l.syncErr
	}
	l.mu.Lock()
	dirs := l.dirty
	l.dirty = map[string]struct{}{}
	l.mu.Unlock()
	for dir := range dirs {
		if err := ctx.Err(); err != nil {
			l.redirty(dirs)
			return err
		}
		if err := syncDir(dir); err != nil && !errors.Is(err, fs.ErrNotExist) {
			l.syncErr = err
			return err
		}
	}
	return nil
}

// redirty gives directories back to the next Sync.
func (l *Local) redirty(dirs map[string]struct{}) {
	l.mu.Lock()
	for d := range dirs {
		l.dirty[d] = struct{}{}
	}
	l.mu.Unlock()
}

// Properties describes the backend.
func (l *Local) Properties() target.Properties {
	return target.Properties{Name: "local:" + l.cfg.Path, Local: true}
}

// Close does nothing.
func (l *Local) Close() error { return nil }

var _ target.TempSweeper = (*Local)(nil)

// SweepTemp removes temporary files older than cutoff (see
// target.TempSweeper).
func (l *Local) SweepTemp(ctx context.Context, cutoff time.Time) (int, error) {
	n := 0
	err := walkFiles(ctx, l.cfg.Path, func(p string, fi fs.FileInfo) error {
		if !target.IsTemp(fi.Name()) || !fi.ModTime().Before(cutoff) {
			return nil
		}
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		n++
		return nil
	})
	if err != nil {
		return n, fmt.Errorf("local: sweep temporary files: %w", err)
	}
	return n, nil
}

// walkFiles calls fn for each file below dir, skipping files and
// directories that vanish meanwhile, until ctx ends.
func walkFiles(ctx context.Context, dir string, fn func(p string, fi fs.FileInfo) error) error {
	return filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if cerr := ctx.Err(); cerr != nil {
			return cerr
		}
		if d.IsDir() {
			return nil
		}
		fi, err := d.Info()
		if errors.Is(err, fs.ErrNotExist) {
			return nil // deleted meanwhile
		}
		if err != nil {
			return err
		}
		return fn(p, fi)
	})
}
