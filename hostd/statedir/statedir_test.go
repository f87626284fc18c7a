package statedir

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/virtkeep/virtkeep/testenv"
)

func owner(t *testing.T, p string) (uint32, uint32, os.FileMode) {
	t.Helper()
	fi, err := os.Lstat(p)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	return st.Uid, st.Gid, fi.Mode().Perm()
}

// TestPrivateDirs: state_dir is 0711, a backup's runtime directory is new,
// 0700 and QEMU's, and a state_dir or run directory someone else owns or
// replaced with a symlink is refused; sockets shared with QEMU are 0660
// in its group; only our own scratch directories are ever removed.
func TestPrivateDirs(t *testing.T) {
	if os.Geteuid() != 0 {
		testenv.Unavailable(t, "root, to give directories to QEMU's user")
	}
	base := t.TempDir()
	e := Dir(filepath.Join(base, "state"))
	dir, err := e.NewScratch()
	if err != nil {
		t.Fatal(err)
	}
	quid, qgid := QEMUIDs()
	if uid, _, mode := owner(t, dir); mode != 0o700 || int(uid) != quid {
		t.Fatalf("runtime dir: uid %d mode %v, want QEMU's (%d) and 0700", uid, mode, quid)
	}
	for _, p := range []string{string(e), filepath.Join(string(e), "run")} {
		if uid, _, mode := owner(t, p); mode != 0o711 || uid != 0 {
			t.Fatalf("%s: uid %d mode %v, want root and 0711", p, uid, mode)
		}
	}
	if got, ok := e.OwnScratch(filepath.Join(dir, "nbd.sock")); !ok || got != dir {
		t.Fatalf("our own scratch dir not recognised: %q %v", got, ok)
	}
	for _, sock := range []string{filepath.Join(string(e), "run", "..", "..", "b-00000000", "s"), filepath.Join(string(e), "run", "s"),
		"/etc/b-00000000/s", filepath.Join(string(e), "run", "b-0000000x", "s"), "run/b-00000000/s"} {
		if got, ok := e.OwnScratch(sock); ok {
			t.Fatalf("%s taken as our scratch dir %s", sock, got)
		}
	}

	// A state_dir owned by another user is not used.
	other := Dir(filepath.Join(base, "other"))
	os.Mkdir(string(other), 0o777)
	os.Chown(string(other), 65534, 65534)
	if _, err := other.NewScratch(); !errors.Is(err, ErrNotPrivate) {
		t.Fatalf("state_dir owned by nobody: %v", err)
	}
	// A run directory replaced by a symlink is not followed.
	sym := Dir(filepath.Join(base, "sym"))
	os.Mkdir(string(sym), 0o711)
	os.Symlink(t.TempDir(), filepath.Join(string(sym), "run"))
	if _, err := sym.NewScratch(); !errors.Is(err, ErrNotPrivate) {
		t.Fatalf("run symlink: %v", err)
	}

	sockPath := filepath.Join(base, "s.sock")
	ln, err := net.Listen("unix", sockPath)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if err := ShareWithQEMU(sockPath, 0o660); err != nil {
		t.Fatal(err)
	}
	if _, gid, mode := owner(t, sockPath); mode != 0o660 || int(gid) != qgid {
		t.Fatalf("shared socket: gid %d mode %v, want QEMU's group %d and 0660", gid, mode, qgid)
	}
}
