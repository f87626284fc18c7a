// Package statedir keeps virtkeep's state directory private: state_dir
// (0711) and its run, locks, mounts and freeze directories, checked to be
// real directories root owns; the backup scratch directories QEMU writes
// its NBD socket and scratch files in; sharing a socket or directory with
// QEMU's group only; and the per-domain lock that serializes backups
// across processes.
package statedir

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// ErrNotPrivate is wrapped by errors for a directory virtkeep keeps state,
// sockets or scratch files in that someone else owns or could write.
var ErrNotPrivate = errors.New("directory is not private to virtkeep")

// qemuUsers are the accounts libvirt runs QEMU as (Debian, then Fedora).
var qemuUsers = []string{"libvirt-qemu", "qemu"}

// GuestOwners are the users a guest's processes run as, who may own its
// NVRAM and TPM state: QEMU's, and swtpm's (tss on Debian, swtpm on
// Fedora).
func GuestOwners() []int {
	out := []int{}
	if uid, _ := QEMUIDs(); uid != 0 {
		out = append(out, uid)
	}
	for _, name := range []string{"tss", "swtpm"} {
		if u, err := user.Lookup(name); err == nil {
			if uid, err := strconv.Atoi(u.Uid); err == nil {
				out = append(out, uid)
			}
		}
	}
	return out
}

// QEMUIDs returns the user and group libvirt's QEMU runs as; root when
// neither account exists (QEMU then runs as root).
func QEMUIDs() (uid, gid int) {
	for _, name := range qemuUsers {
		u, err := user.Lookup(name)
		if err != nil {
			continue
		}
		uid, err1 := strconv.Atoi(u.Uid)
		gid, err2 := strconv.Atoi(u.Gid)
		if err1 == nil && err2 == nil {
			return uid, gid
		}
	}
	return 0, 0
}

// Dir is a state directory (state_dir).
type Dir string

// Private makes dir (if missing) and checks it: a real directory (not a
// symlink), ours (the user virtkeep runs as) and with exactly
// mode, set through the directory itself, not its name. One someone else
// owns is refused, since whoever owns it could swap what we put in it.
func Private(dir string, mode fs.FileMode) error {
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	fd, err := openNoFollow(dir, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if errors.Is(err, unix.ENOTDIR) {
		return fmt.Errorf("%s is not a directory: %w", dir, ErrNotPrivate)
	}
	if err != nil {
		return fmt.Errorf("%s: %w (%w)", dir, err, ErrNotPrivate)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return err
	}
	if int(st.Uid) != os.Geteuid() {
		return fmt.Errorf("%s is owned by uid %d: %w", dir, st.Uid, ErrNotPrivate)
	}
	if fs.FileMode(st.Mode).Perm() != mode {
		return unix.Fchmod(fd, uint32(mode))
	}
	return nil
}

// Run prepares state_dir (0711: QEMU may pass through, nobody may list
// or write) and state_dir/run, checking that root owns both, and returns
// the latter.
func (d Dir) Run() (string, error) {
	if d == "" {
		return "", errors.New("no state_dir")
	}
	if err := os.MkdirAll(filepath.Dir(filepath.Clean(string(d))), 0o755); err != nil {
		return "", err
	}
	if err := Private(string(d), 0o711); err != nil {
		return "", fmt.Errorf("state_dir: %w", err)
	}
	run := filepath.Join(string(d), "run")
	if err := Private(run, 0o711); err != nil {
		return "", fmt.Errorf("state_dir: %w", err)
	}
	return run, nil
}

// Sub makes the private directory state_dir/name (0700) and returns it.
func (d Dir) Sub(name string) (string, error) {
	if _, err := d.Run(); err != nil {
		return "", err
	}
	p := filepath.Join(string(d), name)
	if err := Private(p, 0o700); err != nil {
		return "", fmt.Errorf("state_dir: %w", err)
	}
	return p, nil
}

// Path is state_dir/name, made or not.
func (d Dir) Path(name string) string { return filepath.Join(string(d), name) }

// NewScratch makes a backup's private runtime directory: new (never one
// that exists), 0700 and owned by QEMU's user, which creates its NBD
// socket and scratch files in it; no other local user can replace the
// socket (and feed forged data into the backup) or plant symlinks.
func (d Dir) NewScratch() (string, error) {
	run, err := d.Run()
	if err != nil {
		return "", fmt.Errorf("runtime dir: %w", err)
	}
	// Short: a unix socket path must fit in 108 bytes.
	var rnd [4]byte
	_, _ = rand.Read(rnd[:])
	dir := filepath.Join(run, "b-"+hex.EncodeToString(rnd[:]))
	if err := os.Mkdir(dir, 0o700); err != nil {
		return "", fmt.Errorf("runtime dir: %w", err)
	}
	uid, gid := QEMUIDs()
	if err := os.Lchown(dir, uid, gid); err != nil {
		os.Remove(dir)
		return "", fmt.Errorf("runtime dir: %w", err)
	}
	return dir, nil
}

// ShareWithQEMU gives a socket or directory virtkeep made to the group
// libvirt's QEMU runs in, with mode (0660 for a socket, 0750 for a
// directory): QEMU can connect to an NBD socket, other local users
// cannot read the decrypted disk behind it.
func ShareWithQEMU(path string, mode fs.FileMode) error {
	_, gid := QEMUIDs()
	if err := os.Lchown(path, os.Geteuid(), gid); err != nil {
		return err
	}
	return os.Chmod(path, mode)
}

// ErrHeld is returned by Flock, when it may not wait, for a lock another
// process holds.
var ErrHeld = errors.New("held by another process")

// Flock opens path (0600, never through a symlink) and takes an exclusive
// flock on it, held until the file is closed. When another process holds
// it: with wait, it tries again every 200 ms until ctx is done, calling
// waiting once; without, it returns ErrHeld.
func Flock(ctx context.Context, path string, wait bool, waiting func()) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return nil, err
	}
	for told := false; ; {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		switch {
		case err == nil:
			return f, nil
		case !errors.Is(err, syscall.EWOULDBLOCK):
		case !wait:
			err = ErrHeld
		case !told:
			waiting()
			told = true
			continue
		default:
			select {
			case <-ctx.Done():
				err = ctx.Err()
			case <-time.After(200 * time.Millisecond):
				continue
			}
		}
		f.Close()
		return nil, err
	}
}

// LockDomain serializes backups of one domain across processes (the
// daemon and a CLI run): it holds an flock on state_dir/locks/UUID until
// unlock, waiting while another process holds it. Under the lock, a
// backup job found in our runtime directory has no live owner.
func (d Dir) LockDomain(ctx context.Context, uuid, name string, log *slog.Logger) (unlock func(), err error) {
	dir, err := d.Sub("locks")
	if err != nil {
		return nil, err
	}
	f, err := Flock(ctx, filepath.Join(dir, uuid+".lock"), true, func() {
		log.Info("waiting for another backup of the domain to end", "domain", name)
	})
	switch {
	case err != nil && ctx.Err() != nil:
		return nil, fmt.Errorf("domain %s: waiting for another backup of it: %w", name, err)
	case err != nil:
		return nil, fmt.Errorf("domain lock: %w", err)
	}
	return func() { f.Close() }, nil
}

var scratchDirRe = regexp.MustCompile(`^b-[0-9a-f]{8}$`)

// SweepScratch removes every backup runtime directory left in
// state_dir/run and returns their names. Only the holder of the host lock
// may, once no backup of its runs and the libvirt jobs of interrupted
// ones were ended: a process killed between making the directory and
// starting the job (or between the job's end and the directory's removal)
// leaves one no job names.
func (d Dir) SweepScratch() ([]string, error) {
	run := filepath.Join(string(d), "run")
	ents, err := os.ReadDir(run)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var gone []string
	for _, e := range ents {
		if !e.IsDir() || !scratchDirRe.MatchString(e.Name()) {
			continue
		}
		if err := os.RemoveAll(filepath.Join(run, e.Name())); err != nil {
			return gone, err
		}
		gone = append(gone, e.Name())
	}
	return gone, nil
}

// OwnScratch returns the runtime directory a backup job's NBD socket
// is in when it is one of ours (state_dir/run/b-XXXXXXXX): only such a
// directory is ever removed, whatever path libvirt reports.
func (d Dir) OwnScratch(socket string) (string, bool) {
	if !filepath.IsAbs(socket) {
		return "", false
	}
	dir := filepath.Dir(filepath.Clean(socket))
	return dir, filepath.Dir(dir) == filepath.Join(filepath.Clean(string(d)), "run") && scratchDirRe.MatchString(filepath.Base(dir))
}
