package statedir_test

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/virtkeep/virtkeep/hostd/statedir"
)

// TestReadGuestFile: what a guest's QEMU or swtpm can write (NVRAM, TPM
// state) is read as root only when it is a plain file of its own: a
// symlink to a key file, a device, a hard link, a file of another owner
// or one too large is refused.
func TestReadGuestFile(t *testing.T) {
	dir := t.TempDir()
	secret := filepath.Join(dir, "secret.key")
	os.WriteFile(secret, []byte("root's secret"), 0o600)
	nvram := filepath.Join(dir, "vm_VARS.fd")
	os.WriteFile(nvram, []byte("variables"), 0o600)
	if b, err := statedir.ReadGuestFile(nvram, 1<<20); err != nil || string(b) != "variables" {
		t.Fatalf("plain NVRAM: %q %v", b, err)
	}
	link := filepath.Join(dir, "link_VARS.fd")
	os.Symlink(secret, link)
	zero := filepath.Join(dir, "zero_VARS.fd")
	os.Symlink("/dev/zero", zero)
	hard := filepath.Join(dir, "hard_VARS.fd")
	os.Link(secret, hard)
	fifo := filepath.Join(dir, "fifo_VARS.fd")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	other := filepath.Join(dir, "other_VARS.fd")
	os.WriteFile(other, []byte("x"), 0o600)
	os.Chown(other, 12345, 12345)
	for name, p := range map[string]string{"symlink to a key": link, "symlink to /dev/zero": zero, "hard link": hard, "fifo": fifo,
		"device": "/dev/zero", "another owner": other} {
		if b, err := statedir.ReadGuestFile(p, 1<<20); !errors.Is(err, statedir.ErrUnsafeFile) {
			t.Errorf("%s: read %q, %v: want ErrUnsafeFile", name, b, err)
		}
	}
	if _, err := statedir.ReadGuestFile(other, 1<<20, 12345); err != nil {
		t.Errorf("a file of an expected owner: %v", err)
	}
	if _, err := statedir.ReadGuestFile(nvram, 4); !errors.Is(err, statedir.ErrUnsafeFile) {
		t.Errorf("a file past the size bound: %v", err)
	}
}

// TestRequestedPaths: directories and files a request names are not
// reached through a planted symlink, nor taken when another user owns or
// can write them.
func TestRequestedPaths(t *testing.T) {
	dir := t.TempDir()
	victim := filepath.Join(dir, "etc")
	os.Mkdir(victim, 0o755)
	mnt := filepath.Join(dir, "mnt")
	os.Symlink(victim, mnt)
	if err := statedir.Private(mnt, 0o700); !errors.Is(err, statedir.ErrNotPrivate) {
		t.Fatalf("private directory through a symlink: %v", err)
	}
	if fi, _ := os.Stat(victim); fi.Mode().Perm() != 0o755 {
		t.Fatalf("the symlink's target was chmod-ed to %v", fi.Mode().Perm())
	}
	if err := statedir.Trusted(mnt); !errors.Is(err, statedir.ErrNotPrivate) {
		t.Errorf("trusted directory through a symlink: %v", err)
	}
	open := filepath.Join(dir, "open")
	os.Mkdir(open, 0o777)
	os.Chmod(open, 0o777)
	if err := statedir.Trusted(open); !errors.Is(err, statedir.ErrNotPrivate) {
		t.Errorf("a directory others can write: %v", err)
	}
	theirs := filepath.Join(dir, "theirs")
	os.Mkdir(theirs, 0o755)
	os.Chown(theirs, 12345, 12345)
	if err := statedir.Trusted(theirs); !errors.Is(err, statedir.ErrNotPrivate) {
		t.Errorf("a directory another user owns: %v", err)
	}
	if err := statedir.MkdirTrusted(filepath.Join(open, "sub")); !errors.Is(err, statedir.ErrNotPrivate) {
		t.Errorf("a directory whose parent others can write: %v", err)
	}
	if err := statedir.MkdirTrusted(filepath.Join(dir, "ok", "sub")); err != nil {
		t.Errorf("a directory of our own: %v", err)
	}
	planted := filepath.Join(dir, "ok", "vm_VARS.fd")
	os.Symlink(filepath.Join(victim, "passwd"), planted)
	if err := statedir.CreateFile(planted, []byte("x"), 0o600); err == nil {
		t.Error("created a file through a planted symlink")
	}
	if _, err := os.Stat(filepath.Join(victim, "passwd")); err == nil {
		t.Error("the symlink's target was written")
	}
}
