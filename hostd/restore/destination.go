package restore

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// destination is where a restored disk is written. A file is written in a
// private (0700) directory beside its final name, created 0600, and renamed
// into place only when it is complete: a symlink planted at the final name
// is never followed, a file is never half-written under it, and a failed
// restore leaves what was there as it was. A block device (Force only) is
// opened with O_EXCL, so the kernel refuses one that is mounted or held.
type destination struct {
	final  string
	path   string   // where the data goes: the device, or the temporary file
	f      *os.File // raw only
	device bool
	force  bool
	tmpDir string
	old    fs.FileInfo // the regular file Force replaces, if any
}

// ErrDestination is wrapped by errors for destinations a restore refuses.
var ErrDestination = errors.New("unusable restore destination")

func openDestination(final, format string, force bool) (*destination, error) {
	d := &destination{final: final, force: force}
	lfi, err := os.Lstat(final)
	switch {
	case err == nil && !force:
		return nil, fmt.Errorf("%s: %w", final, ErrExists)
	case err != nil && !errors.Is(err, fs.ErrNotExist):
		return nil, err
	case err == nil && lfi.Mode()&fs.ModeSymlink != 0:
		// Force onto a symlink: the operator's layout (a disk path that
		// links to the real file or device) is kept, but a dangling link
		// is not followed to create a file wherever it points.
		real, rerr := filepath.EvalSymlinks(final)
		if rerr != nil {
			return nil, fmt.Errorf("%w: symlink that leads nowhere (%v)", ErrDestination, rerr)
		}
		d.final = real
		if lfi, err = os.Lstat(real); err != nil {
			return nil, err
		}
	}
	if err == nil {
		switch {
		case lfi.Mode()&fs.ModeDevice != 0 && lfi.Mode()&fs.ModeCharDevice == 0:
			if format != "raw" {
				return nil, fmt.Errorf("%w: only raw can go to a device", ErrDestination)
			}
			// O_EXCL on a block device: fails with EBUSY while it is
			// mounted, in use by device-mapper or open exclusively (QEMU).
			f, err := os.OpenFile(d.final, os.O_WRONLY|os.O_EXCL, 0)
			if errors.Is(err, syscall.EBUSY) {
				return nil, fmt.Errorf("%w: device is in use (mounted or held)", ErrDestination)
			}
			if err != nil {
				return nil, err
			}
			d.f, d.path, d.device = f, d.final, true
			return d, nil
		case !lfi.Mode().IsRegular():
			return nil, fmt.Errorf("%w: not a regular file or block device (%s)", ErrDestination, lfi.Mode().Type())
		}
		d.old = lfi
	}
	tmp, err := os.MkdirTemp(filepath.Dir(d.final), "."+tempPrefix)
	if err != nil {
		return nil, err
	}
	d.tmpDir = tmp
	d.path = filepath.Join(tmp, "disk."+format)
	if format == "raw" {
		d.f, err = os.OpenFile(d.path, os.O_RDWR|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW, 0o600)
		if err != nil {
			d.discard()
			return nil, err
		}
	}
	return d, nil
}

// tempPrefix starts the private directories a restore writes a disk in
// before renaming it into place, and those of qcow2 restores' NBD sockets.
const tempPrefix = "vk-restore-"

// SweepTemp removes the private directories interrupted restores left in
// dirs (.vk-restore-*), and those in the system's temporary directory
// (vk-restore-PID-*, ours) whose process is gone, and returns their paths.
// Only the holder of the host lock may, when no restore of its runs.
func SweepTemp(dirs []string) ([]string, error) {
	var gone []string
	sweep := func(dir, prefix string, dead func(name string) bool) error {
		ents, err := os.ReadDir(dir)
		if err != nil {
			return nil // gone, or not ours to read
		}
		for _, e := range ents {
			if !e.IsDir() || !strings.HasPrefix(e.Name(), prefix) || !dead(e.Name()) {
				continue
			}
			p := filepath.Join(dir, e.Name())
			if fi, err := os.Lstat(p); err != nil || fi.Sys().(*syscall.Stat_t).Uid != uint32(os.Geteuid()) {
				continue
			}
			if err := os.RemoveAll(p); err != nil {
				return err
			}
			gone = append(gone, p)
		}
		return nil
	}
	for _, d := range dirs {
		if err := sweep(d, "."+tempPrefix, func(string) bool { return true }); err != nil {
			return gone, err
		}
	}
	return gone, sweep(os.TempDir(), tempPrefix, func(name string) bool {
		pid, err := strconv.Atoi(strings.Split(strings.TrimPrefix(name, tempPrefix), "-")[0])
		return err == nil && pid > 0 && syscall.Kill(pid, 0) == syscall.ESRCH
	})
}

// commit puts the written file in place (the device needs nothing).
func (d *destination) commit() error {
	if d.f != nil {
		if err := d.f.Close(); err != nil {
			return err
		}
		d.f = nil
	}
	if d.device {
		return nil
	}
	mode, uid, gid := fs.FileMode(0o600), os.Getuid(), os.Getgid()
	if st, ok := d.oldStat(); ok {
		// Replacing a file in place (restore --in-place): keep its owner
		// and mode, which the domain's QEMU may need.
		mode, uid, gid = d.old.Mode().Perm(), int(st.Uid), int(st.Gid)
	}
	if err := os.Chown(d.path, uid, gid); err != nil {
		return err
	}
	if err := os.Chmod(d.path, mode); err != nil {
		return err
	}
	var err error
	if d.force {
		err = os.Rename(d.path, d.final)
	} else {
		// Something appeared at the final name meanwhile: keep it.
		err = unix.Renameat2(unix.AT_FDCWD, d.path, unix.AT_FDCWD, d.final, unix.RENAME_NOREPLACE)
		if errors.Is(err, unix.EEXIST) {
			err = fmt.Errorf("%s: %w", d.final, ErrExists)
		}
	}
	if err != nil {
		return err
	}
	if err := syncDir(filepath.Dir(d.final)); err != nil {
		return err
	}
	return os.RemoveAll(d.tmpDir)
}

func (d *destination) oldStat() (*syscall.Stat_t, bool) {
	if d.old == nil {
		return nil, false
	}
	st, ok := d.old.Sys().(*syscall.Stat_t)
	return st, ok
}

// discard drops what a failed restore wrote; the final name is untouched.
func (d *destination) discard() {
	if d.f != nil {
		d.f.Close()
		d.f = nil
	}
	if d.tmpDir != "" {
		os.RemoveAll(d.tmpDir)
	}
}

func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}
