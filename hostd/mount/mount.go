// Package mount mounts a point's filesystems read-only for file-level
// restore, without the nbd kernel module: an NBD server of the point
// (in this process, or a detached one that outlives it), nbdfuse, a loop
// device with its partitions (or one per partition, and per logical
// volume), and mounts that replay no journal, follow no symlink and run
// nothing. Each mount is recorded under state_dir/mounts so that umount,
// or a daemon start, undoes all of it.
package mount

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/virtkeep/virtkeep/hostd/exports"
	"github.com/virtkeep/virtkeep/hostd/layout"
	"github.com/virtkeep/virtkeep/hostd/statedir"
	"github.com/virtkeep/virtkeep/hostd/virt"
	"github.com/virtkeep/virtkeep/nbd"
	"golang.org/x/sys/unix"
)

// Mounter mounts points.
type Mounter struct {
	State statedir.Dir
	Log   *slog.Logger
}

func (e *Mounter) log() *slog.Logger {
	if e.Log != nil {
		return e.Log
	}
	return slog.New(slog.DiscardHandler)
}

// Request asks for a point's disk to be mounted for file-level restore.
type Request struct {
	Point, Disk string
	Dir         string // created if missing; must be empty
	// Serve is the argv of a process that serves the point's disk read-only
	// over NBD on the unix socket given as its last argument, until killed
	// (virtkeep serve). It outlives the caller, as does nbdfuse.
	Serve []string
	// Start, instead of Serve, serves the disk in the caller's process
	// (the daemon): it returns once the server accepts on the socket, and
	// the caller stops it after Umount.
	Start func(ctx context.Context, socket string) error
}

// State records a mount so umount (or a daemon restart) undoes it.
type State struct {
	Dir      string `json:"dir"`
	Point    string `json:"point"`
	Disk     string `json:"disk"`
	Work     string `json:"work"` // socket, FUSE mount point, logs
	ServePID int    `json:"serve_pid"`
	FusePID  int    `json:"fuse_pid"`
	Loop     string `json:"loop"`
	// PartLoops are loop devices over single partitions, made when the
	// kernel cannot scan the disk's partition table itself.
	PartLoops []string `json:"part_loops,omitempty"`
	// LVFusePIDs are the nbdfuse processes of logical volumes (each is an
	// export of the server, attached under Work/fuse-lv-N).
	LVFusePIDs []int `json:"lv_fuse_pids,omitempty"`
	Mounts     []FS  `json:"mounts"`
}

// FS is one filesystem of the disk, mounted under Dir.
type FS struct {
	Device string `json:"device"`
	Type   string `json:"type"`
	Path   string `json:"path"`
}

func (e *Mounter) mountsDir() string { return e.State.Path("mounts") }

func (e *Mounter) statePath(dir string) string {
	sum := sha256.Sum256([]byte(dir))
	return filepath.Join(e.mountsDir(), hex.EncodeToString(sum[:8])+".json")
}

// Mount serves a point's disk over NBD, attaches it as a read-only block
// device without the nbd kernel module (nbdfuse + a loop device), scans its
// partitions, and mounts every filesystem it knows read-only, noexec,
// nodev, nosuid and without journal replay under Dir/<partition>. Nothing
// is written to the backup. On failure it undoes what it did.
func (e *Mounter) Mount(ctx context.Context, r Request) (_ *State, err error) {
	if len(r.Serve) == 0 && r.Start == nil {
		return nil, errors.New("mount: no NBD server")
	}
	dir, err := filepath.Abs(r.Dir)
	if err != nil {
		return nil, err
	}
	// The guest's files are readable by whoever reaches them: only root.
	// The directory (made if missing, its parent must be there) must be a
	// real one root owns: a symlink planted there would be followed.
	if err := statedir.Private(dir, 0o700); err != nil {
		return nil, fmt.Errorf("mount: %w", err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) > 0 {
		return nil, fmt.Errorf("mount: %s is not empty", dir)
	}
	if _, err := os.Stat(e.statePath(dir)); err == nil {
		return nil, fmt.Errorf("mount: %s is already a virtkeep mount (virtkeep umount %s)", dir, dir)
	}
	if _, err := e.State.Sub("mounts"); err != nil {
		return nil, fmt.Errorf("mount: %w", err)
	}
	work, err := os.MkdirTemp(e.mountsDir(), "m-")
	if err != nil {
		return nil, err
	}
	st := &State{Dir: dir, Point: r.Point, Disk: r.Disk, Work: work}
	defer func() {
		if err != nil {
			e.undoMount(context.WithoutCancel(ctx), st)
		}
	}()
	sock := filepath.Join(work, "nbd.sock")
	if r.Start != nil {
		err = r.Start(ctx, sock)
	} else {
		st.ServePID, err = exports.StartServer(ctx, r.Serve, sock, filepath.Join(work, "serve.log"))
	}
	if err != nil {
		return nil, fmt.Errorf("mount: %w", err)
	}
	image, pid, err := attachExport(ctx, work, "fuse", sock, r.Disk)
	st.FusePID = pid
	if err != nil {
		return nil, fmt.Errorf("mount: %w", err)
	}
	out, err := exec.CommandContext(ctx, "losetup", "--read-only", "--partscan", "--find", "--show", image).Output()
	if err != nil {
		return nil, fmt.Errorf("mount: losetup: %w", virt.CmdErr(err))
	}
	st.Loop = strings.TrimSpace(string(out))
	if err := e.saveMount(st); err != nil {
		return nil, err
	}
	var devs []part
	parts, _ := filepath.Glob(st.Loop + "p*")
	// Partitions appear a moment after the scan.
	_ = virt.WaitFor(ctx, time.Second, func() bool { parts, _ = filepath.Glob(st.Loop + "p*"); return len(parts) > 0 })
	sort.Strings(parts)
	for _, p := range parts {
		devs = append(devs, part{"p" + strings.TrimPrefix(p, st.Loop+"p"), p})
	}
	// The guest's partition table and LVM metadata, read from the image.
	table, lvs, err := readLayout(ctx, image)
	if err != nil {
		e.log().Warn("disk layout unreadable: only the kernel's partitions are mounted", "disk", r.Disk, "err", err)
	}
	if len(parts) == 0 {
		// No partition support in this kernel (GPT, say): give each
		// partition a loop device of its own.
		pl, err := e.partitionLoops(ctx, st, image, table)
		if err != nil {
			return nil, err
		}
		devs = append(devs, pl...)
	}
	lvDevs, err := e.lvLoops(ctx, st, lvs, sock, r.Disk)
	if err != nil {
		return nil, err
	}
	if len(devs) == 0 && len(lvDevs) == 0 { // no partition table: a filesystem on the whole disk
		devs = []part{{"disk", st.Loop}}
	}
	devs = append(devs, lvDevs...)
	for _, pd := range devs {
		dev := pd.dev
		typ := blkType(ctx, dev)
		opts, ok := mountOptions(typ)
		switch {
		case typ == "":
			continue
		case !ok:
			e.log().Info("filesystem type not mounted", "device", dev, "type", typ)
			continue
		}
		path := filepath.Join(dir, pd.name)
		if err := os.MkdirAll(path, 0o700); err != nil {
			return nil, err
		}
		if out, err := exec.CommandContext(ctx, "mount", "-t", typ, "-o", opts, dev, path).CombinedOutput(); err != nil {
			e.log().Warn("mount failed", "device", dev, "type", typ, "err", err, "output", string(bytes.TrimSpace(out)))
			os.Remove(path)
			continue
		}
		st.Mounts = append(st.Mounts, FS{Device: dev, Type: typ, Path: path})
		if err := e.saveMount(st); err != nil {
			return nil, err
		}
	}
	if len(st.Mounts) == 0 {
		return nil, fmt.Errorf("mount: no filesystem found on disk %s of point %s", r.Disk, r.Point)
	}
	return st, nil
}

// mountOptions are the options a guest filesystem of type typ is mounted
// with: read-only, no devices, no set-uid, no execution, symlinks not
// followed (a guest's link to /etc/shadow must not lead a restore there),
// and no journal or log replay, which would write to the device. False for
// types virtkeep does not mount.
func mountOptions(typ string) (string, bool) {
	const base = "ro,noexec,nodev,nosuid,nosymfollow"
	switch typ {
	case "ext2", "ext3", "ext4":
		return base + ",noload", true
	case "xfs":
		return base + ",norecovery", true
	case "btrfs":
		// Kernels since 5.9 take only rescue=nologreplay.
		return base + ",rescue=nologreplay", true
	case "vfat", "ntfs", "ntfs3", "iso9660":
		return base, true
	}
	return "", false
}

// readLayout reads the partition table and the logical volumes of the
// disk image at path (see layout.Read).
func readLayout(ctx context.Context, path string) ([]layout.Partition, []layout.LV, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, nil, err
	}
	return layout.Read(ctx, nbd.ReaderAtSource(f, fi.Size()))
}

// partitionLoops attaches one read-only loop device per partition of the
// image, at its offset.
func (e *Mounter) partitionLoops(ctx context.Context, st *State, image string, parts []layout.Partition) ([]part, error) {
	var devs []part
	for _, p := range parts {
		out, err := exec.CommandContext(ctx, "losetup", "--read-only", "--find", "--show",
			"--offset", fmt.Sprint(p.Off), "--sizelimit", fmt.Sprint(p.Len), image).Output()
		if err != nil {
			return nil, fmt.Errorf("mount: loop for partition %d: %w", p.Number, virt.CmdErr(err))
		}
		dev := strings.TrimSpace(string(out))
		st.PartLoops = append(st.PartLoops, dev)
		if err := e.saveMount(st); err != nil {
			return nil, err
		}
		devs = append(devs, part{fmt.Sprintf("p%d", p.Number), dev})
	}
	return devs, nil
}

// attachExport attaches an export of the server on sock as a file with
// nbdfuse (detached: it outlives the caller) under work/name, and returns
// the file and nbdfuse's PID (also on error, once started).
func attachExport(ctx context.Context, work, name, sock, export string) (string, int, error) {
	dir := filepath.Join(work, name)
	if err := os.Mkdir(dir, 0o700); err != nil {
		return "", 0, err
	}
	logPath := filepath.Join(work, name+".log")
	logf, err := os.Create(logPath)
	if err != nil {
		return "", 0, err
	}
	defer logf.Close()
	fuse := exec.Command("nbdfuse", "-r", dir, (&url.URL{Scheme: "nbd+unix", Path: "/" + export, RawQuery: "socket=" + sock}).String())
	fuse.Stdout, fuse.Stderr = logf, logf
	fuse.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := fuse.Start(); err != nil {
		return "", 0, fmt.Errorf("nbdfuse: %w", err)
	}
	go func() { _ = fuse.Wait() }()
	image := filepath.Join(dir, "nbd")
	if err := virt.WaitFor(ctx, 30*time.Second, func() bool { _, err := os.Stat(image); return err == nil }); err != nil {
		log, _ := os.ReadFile(logPath)
		return "", fuse.Process.Pid, fmt.Errorf("nbdfuse did not attach export %s: %s", export, bytes.TrimSpace(log))
	}
	return image, fuse.Process.Pid, nil
}

// lvLoops attaches the server's export of each linear logical volume
// and gives it a read-only loop device.
func (e *Mounter) lvLoops(ctx context.Context, st *State, lvs []layout.LV, sock, disk string) ([]part, error) {
	var devs []part
	for i, lv := range lvs {
		if lv.Unsupported != "" {
			e.log().Warn("logical volume not mounted", "vg", lv.VG, "lv", lv.Name, "why", lv.Unsupported)
			continue
		}
		lvImage, pid, err := attachExport(ctx, st.Work, fmt.Sprintf("fuse-lv-%d", i), sock, exports.LVExportName(disk, lv.VG, lv.Name))
		if pid != 0 {
			st.LVFusePIDs = append(st.LVFusePIDs, pid)
		}
		if err != nil {
			return nil, fmt.Errorf("mount: logical volume %s/%s: %w", lv.VG, lv.Name, err)
		}
		out, err := exec.CommandContext(ctx, "losetup", "--read-only", "--find", "--show", lvImage).Output()
		if err != nil {
			return nil, fmt.Errorf("mount: loop for logical volume %s/%s: %w", lv.VG, lv.Name, virt.CmdErr(err))
		}
		dev := strings.TrimSpace(string(out))
		st.PartLoops = append(st.PartLoops, dev)
		if err := e.saveMount(st); err != nil {
			return nil, err
		}
		devs = append(devs, part{lv.VG + "-" + lv.Name, dev})
	}
	return devs, nil
}

// loopBacks reports whether loop device dev is attached to a file under
// work.
func loopBacks(dev, work string) bool {
	b, err := os.ReadFile(filepath.Join("/sys/block", filepath.Base(dev), "loop", "backing_file"))
	return err == nil && work != "" && strings.HasPrefix(strings.TrimSpace(string(b)), work+"/")
}

// part is a block device to look for a filesystem on, and its name under
// the mount directory.
type part struct{ name, dev string }

// blkType is the file system type on dev, probed on the device itself
// (-p): blkid's cache would give the type a reused loop device had before.
func blkType(ctx context.Context, dev string) string {
	out, err := exec.CommandContext(ctx, "blkid", "-p", "-o", "value", "-s", "TYPE", dev).Output()
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(out))
}

func (e *Mounter) saveMount(st *State) error {
	b, _ := json.MarshalIndent(st, "", "  ")
	tmp := e.statePath(st.Dir) + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, e.statePath(st.Dir))
}

// ErrNotMounted is returned by Umount for a directory that is no virtkeep
// mount.
var ErrNotMounted = errors.New("not a virtkeep mount")

// Umount undoes Mount for dir: filesystems, loop device, FUSE mount,
// server process, state.
func (e *Mounter) Umount(ctx context.Context, dir string) error {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	b, err := os.ReadFile(e.statePath(dir))
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("umount: %s: %w", dir, ErrNotMounted)
	}
	if err != nil {
		return err
	}
	var st State
	if err := json.Unmarshal(b, &st); err != nil {
		return fmt.Errorf("umount: state of %s is damaged: %w", dir, err)
	}
	return e.undoMount(ctx, &st)
}

// CleanupMounts undoes every mount a previous run left (daemon start).
func (e *Mounter) CleanupMounts(ctx context.Context) error {
	files, _ := filepath.Glob(filepath.Join(e.mountsDir(), "*.json"))
	var first error
	for _, f := range files {
		b, err := os.ReadFile(f)
		var st State
		if err == nil {
			err = json.Unmarshal(b, &st)
		}
		if err == nil {
			err = e.undoMount(ctx, &st)
		}
		if err != nil && first == nil {
			first = err
		}
	}
	return first
}

// mountPoint reports whether path is a mount point now: its mount ID
// differs from its parent directory's (statx STATX_MNT_ID, no parsing).
// A path that cannot be looked at, but exists, is taken for one.
func mountPoint(path string) bool {
	id := func(p string) (uint64, error) {
		var st unix.Statx_t
		err := unix.Statx(unix.AT_FDCWD, p, unix.AT_SYMLINK_NOFOLLOW, unix.STATX_MNT_ID, &st)
		return st.Mnt_id, err
	}
	a, err := id(path)
	if errors.Is(err, unix.ENOENT) {
		return false
	}
	b, perr := id(filepath.Dir(path))
	return err != nil || perr != nil || a != b
}

func (e *Mounter) undoMount(ctx context.Context, st *State) error {
	var errs []string
	for i := len(st.Mounts) - 1; i >= 0; i-- {
		m := st.Mounts[i]
		if !mountPoint(m.Path) { // undone already (a reboot, an earlier try)
			os.Remove(m.Path)
			continue
		}
		if out, err := exec.CommandContext(ctx, "umount", m.Path).CombinedOutput(); err != nil {
			errs = append(errs, fmt.Sprintf("umount %s: %v: %s", m.Path, err, bytes.TrimSpace(out)))
			continue
		}
		os.Remove(m.Path)
	}
	for _, l := range append(append([]string(nil), st.PartLoops...), st.Loop) {
		// Only a loop device that is still ours: after a reboot the name
		// may belong to somebody else's file.
		if l == "" || !loopBacks(l, st.Work) {
			continue
		}
		if out, err := exec.CommandContext(ctx, "losetup", "-d", l).CombinedOutput(); err != nil {
			errs = append(errs, fmt.Sprintf("losetup -d %s: %v: %s", l, err, bytes.TrimSpace(out)))
		}
	}
	if st.Work != "" {
		fuseDirs, _ := filepath.Glob(filepath.Join(st.Work, "fuse*"))
		for _, d := range fuseDirs {
			if !strings.HasSuffix(d, ".log") { // a dead FUSE mount cannot even be stat'ed
				_ = exec.CommandContext(ctx, "fusermount3", "-u", d).Run()
			}
		}
	}
	for _, pid := range append(append([]int{}, st.LVFusePIDs...), st.FusePID, st.ServePID) {
		// Only a process that is still ours: its command line names our
		// work directory (a recycled PID would not).
		ours := func() bool {
			cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
			return pid > 0 && err == nil && bytes.Contains(cmdline, []byte(st.Work))
		}
		if !ours() {
			continue
		}
		_ = syscall.Kill(pid, syscall.SIGTERM)
		if virt.WaitFor(ctx, 5*time.Second, func() bool { return !ours() }) != nil {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("umount %s: %s", st.Dir, strings.Join(errs, "; "))
	}
	if st.Work != "" {
		os.RemoveAll(st.Work)
	}
	os.Remove(e.statePath(st.Dir))
	return nil
}
