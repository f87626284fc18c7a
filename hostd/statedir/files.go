package statedir

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"

	"golang.org/x/sys/unix"
)

// ErrUnsafeFile is wrapped by errors for a file virtkeep was to read or
// write as root that is not what it should be: a symlink, a device, a
// FIFO, a hard link, too large, or owned by an unexpected user.
var ErrUnsafeFile = errors.New("file is not safe to use")

// openNoFollow opens path refusing a symlink as its last component:
// that is the name a less trusted user (QEMU's, a local user where a
// request pointed) could have replaced. Symlinks further up are the
// operator's (a state directory moved elsewhere), and what is opened is
// checked after opening, through the descriptor.
func openNoFollow(path string, flags int, mode uint32) (int, error) {
	fd, err := unix.Open(path, flags|unix.O_CLOEXEC|unix.O_NOFOLLOW, mode)
	if errors.Is(err, unix.ELOOP) {
		return -1, fmt.Errorf("%s is a symlink: %w", path, ErrUnsafeFile)
	}
	if err != nil {
		return -1, &fs.PathError{Op: "open", Path: path, Err: err}
	}
	return fd, nil
}

// ReadGuestFile reads a file a guest's processes (QEMU, swtpm) can write,
// such as NVRAM or TPM state: not a symlink, a regular file with
// one link, owned by root or one of owners (uids), at most max bytes.
// Reading as root must never reach another file through it.
func ReadGuestFile(path string, max int64, owners ...int) ([]byte, error) {
	fd, err := openNoFollow(path, unix.O_RDONLY|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(fd), path)
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, err
	}
	switch {
	case st.Mode&unix.S_IFMT != unix.S_IFREG:
		return nil, fmt.Errorf("%s is not a regular file: %w", path, ErrUnsafeFile)
	case st.Nlink != 1:
		return nil, fmt.Errorf("%s has %d links: %w", path, st.Nlink, ErrUnsafeFile)
	case st.Uid != 0 && !slices.Contains(owners, int(st.Uid)):
		return nil, fmt.Errorf("%s is owned by uid %d: %w", path, st.Uid, ErrUnsafeFile)
	case st.Size > max:
		return nil, fmt.Errorf("%s has %d bytes, more than %d: %w", path, st.Size, max, ErrUnsafeFile)
	}
	b, err := io.ReadAll(io.LimitReader(f, max+1))
	if err == nil && int64(len(b)) > max {
		err = fmt.Errorf("%s grew past %d bytes: %w", path, max, ErrUnsafeFile)
	}
	return b, err
}

// CreateFile creates path, which must not exist, with data and mode,
// not through a symlink: in a directory a request named, a planted link
// must not make root write elsewhere.
func CreateFile(path string, data []byte, mode fs.FileMode) error {
	fd, err := openNoFollow(path, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL, uint32(mode.Perm()))
	if err != nil {
		return err
	}
	f := os.NewFile(uintptr(fd), path)
	if _, err := f.Write(data); err != nil {
		f.Close()
		os.Remove(path)
		return err
	}
	return f.Close()
}

// MkdirTrusted makes dir and its missing parents (0755) and checks it
// with Trusted.
func MkdirTrusted(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	return Trusted(dir)
}

// Trusted checks a directory a request named (a restore or boot
// destination) before root writes into it: a real directory (not a
// symlink), owned by root, and neither it nor its parent writable by
// anyone else (a parent others can write but with the sticky bit, as
// /tmp, is fine: they cannot move our directory).
func Trusted(dir string) error {
	for i, p := range []string{dir, filepath.Dir(filepath.Clean(dir))} {
		fd, err := openNoFollow(p, unix.O_RDONLY|unix.O_DIRECTORY, 0)
		if errors.Is(err, unix.ENOTDIR) {
			return fmt.Errorf("%s is not a directory (or is a symlink): %w", p, ErrNotPrivate)
		}
		if err != nil {
			return err
		}
		var st unix.Stat_t
		err = unix.Fstat(fd, &st)
		unix.Close(fd)
		if err != nil {
			return err
		}
		sticky := st.Mode&unix.S_ISVTX != 0
		switch {
		case i == 0 && int(st.Uid) != os.Geteuid():
			return fmt.Errorf("%s is owned by uid %d: %w", dir, st.Uid, ErrNotPrivate)
		case i == 0 && st.Mode&0o022 != 0:
			return fmt.Errorf("%s is writable by group or others (mode %04o): %w", dir, st.Mode&0o7777, ErrNotPrivate)
		case i == 1 && st.Uid != 0 && int(st.Uid) != os.Geteuid():
			return fmt.Errorf("%s: its parent %s is owned by uid %d: %w", dir, p, st.Uid, ErrNotPrivate)
		case i == 1 && st.Mode&0o022 != 0 && !sticky:
			return fmt.Errorf("%s: its parent %s is writable by group or others (mode %04o): %w", dir, p, st.Mode&0o7777, ErrNotPrivate)
		}
	}
	return nil
}
