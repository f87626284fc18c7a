// Package restore writes points back: a disk to a file (raw or qcow2,
// sparse) or a block device, every disk and a new domain defined from the
// saved definition (rebuilt by package domain), or a shut-off domain's own
// disks in place; optionally verified by reading back. It never leaves a
// half-written file under the destination's name.
package restore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
	"libvirt.org/go/libvirt"

	"github.com/virtkeep/virtkeep/hostd/domain"
	"github.com/virtkeep/virtkeep/hostd/exports"
	"github.com/virtkeep/virtkeep/hostd/virt"
	"github.com/virtkeep/virtkeep/nbd"
	"github.com/virtkeep/virtkeep/target"
)

// Options tune RestoreDisk.
type Options struct {
	Format string // raw or qcow2 (default: the disk's format in the point)
	// Force allows replacing an existing file or writing to a device.
	Force bool
	// Verify re-reads what was written and compares it with the point.
	Verify   bool
	Progress Progress
}

// ErrExists is returned when a restore would overwrite something without
// Force.
var ErrExists = errors.New("destination exists")

// Progress is told how far a disk's restore is: bytes done of total.
type Progress func(disk string, done, total int64)

// Restorer restores whole domains over one libvirt connection.
type Restorer struct {
	Conn *libvirt.Connect
	Log  *slog.Logger
	// BootFileDirs are where a restored domain may take firmware, kernels
	// and initrds from (default domain.DefaultBootFileDirs).
	BootFileDirs []string
}

func (e *Restorer) log() *slog.Logger {
	if e.Log != nil {
		return e.Log
	}
	return slog.New(slog.DiscardHandler)
}

// Path is where Disk puts a disk: DIR/<disk>.<format>.
func Path(dir, disk, format string) (string, error) {
	if err := domain.SafeDiskName(disk); err != nil {
		return "", err
	}
	return filepath.Join(dir, disk+"."+format), nil
}

// Disk writes disk of a point to dst (a file, or a block device when
// dst is one and Force is set). Files come out sparse: zero chunks are not
// written. A failed restore removes the file it created.
func Disk(ctx context.Context, repo *target.Repository, point, disk, dst string, o Options) (err error) {
	d, err := repo.OpenDisk(ctx, point, disk)
	if err != nil {
		return err
	}
	dm, _ := d.Manifest().Disk(disk)
	format := o.Format
	if format == "" {
		format = dm.Format
	}
	if format != "raw" && format != "qcow2" {
		return fmt.Errorf("restore %s: format %q: want raw or qcow2", disk, format)
	}
	var qopts []string
	if format == "qcow2" {
		if qopts, err = qcow2Options(dm.FormatDetails); err != nil {
			return fmt.Errorf("restore %s: point %s: %w", disk, point, err)
		}
	}
	dest, err := openDestination(dst, format, o.Force)
	if err != nil {
		return fmt.Errorf("restore %s to %s: %w", disk, dst, err)
	}
	defer func() {
		if err != nil {
			dest.discard()
		}
	}()
	progress := func(done int64) {
		if o.Progress != nil {
			o.Progress(disk, done, d.Size())
		}
	}
	if format == "raw" {
		err = restoreRaw(ctx, d, dest, progress)
	} else {
		err = restoreQcow2(ctx, d, dest.path, qopts, progress)
	}
	if err != nil {
		return fmt.Errorf("restore %s: %w", disk, err)
	}
	if o.Verify {
		if err = verifyRestore(ctx, d, dest.path, format); err != nil {
			return fmt.Errorf("restore %s: verify: %w", disk, err)
		}
	}
	if err = dest.commit(); err != nil {
		return fmt.Errorf("restore %s to %s: %w", disk, dst, err)
	}
	return nil
}

// dataRuns lists the runs of the point's disk that hold data.
func dataRuns(ctx context.Context, d *target.DiskReader) ([]nbd.Extent, error) {
	var runs []nbd.Extent
	err := d.Allocated(ctx, 0, d.Size(), func(off, n int64, zero bool) error {
		if !zero {
			runs = append(runs, nbd.Extent{Off: off, Len: n})
		}
		return nil
	})
	return runs, err
}

// copyRuns reads the data runs from d several pieces at a time and hands
// them to write in order.
func copyRuns(ctx context.Context, d *target.DiskReader, runs []nbd.Extent, write func(off int64, b []byte) error, progress func(int64)) error {
	return nbd.Fetch(ctx, diskReader{d}, runs, nbd.FetchOptions{PieceSize: 4 << 20, InFlight: 4}, func(off int64, b []byte) error {
		if err := write(off, b); err != nil {
			return err
		}
		progress(off + int64(len(b)))
		return nil
	})
}

// skipZeroes wraps a writer into a fresh (all-zero) image so that it
// leaves out 64 KiB blocks of zeroes: chunks often end in a hole of the
// guest's disk, and writing it would allocate it.
func skipZeroes(write func(off int64, b []byte) error) func(off int64, b []byte) error {
	const blk = 64 << 10
	return func(off int64, b []byte) error {
		start := -1
		for i := 0; i < len(b); i += blk {
			end := min(i+blk, len(b))
			if target.IsZero(b[i:end]) {
				if start >= 0 {
					if err := write(off+int64(start), b[start:i]); err != nil {
						return err
					}
					start = -1
				}
				continue
			}
			if start < 0 {
				start = i
			}
		}
		if start >= 0 {
			return write(off+int64(start), b[start:])
		}
		return nil
	}
}

// diskReader adapts a DiskReader to nbd.Reader.
type diskReader struct{ d *target.DiskReader }

func (r diskReader) Read(ctx context.Context, p []byte, off int64) error {
	return r.d.ReadAt(ctx, p, off)
}

func restoreRaw(ctx context.Context, d *target.DiskReader, dest *destination, progress func(int64)) error {
	f, isDev := dest.f, dest.device
	if isDev {
		// A device holds old data: zero it where the point is zero.
		size, err := f.Seek(0, 2)
		if err != nil {
			return err
		}
		if size < d.Size() {
			return fmt.Errorf("device %s has %d bytes, the disk needs %d", dest.final, size, d.Size())
		}
		err = d.Allocated(ctx, 0, d.Size(), func(off, n int64, zero bool) error {
			if !zero {
				return nil
			}
			if unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_ZERO_RANGE|unix.FALLOC_FL_KEEP_SIZE, off, n) == nil {
				return nil
			}
			z := make([]byte, min(n, 1<<20))
			for at := off; at < off+n; at += int64(len(z)) {
				if _, err := f.WriteAt(z[:min(int64(len(z)), off+n-at)], at); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
	} else if err := f.Truncate(d.Size()); err != nil {
		return err
	}
	runs, err := dataRuns(ctx, d)
	if err != nil {
		return err
	}
	write := func(off int64, b []byte) error { _, err := f.WriteAt(b, off); return err }
	if !isDev {
		write = skipZeroes(write) // the file is sparse already
	}
	if err := copyRuns(ctx, d, runs, write, progress); err != nil {
		return err
	}
	return f.Sync()
}

// restoreQcow2 creates the qcow2 with the point's saved details through
// qemu-img convert, reading the point from an in-process NBD server: it
// skips the holes the server reports, writes with 8 requests in flight,
// out of order, and never writes zero blocks.
func restoreQcow2(ctx context.Context, d *target.DiskReader, dst string, opts []string, progress func(int64)) error {
	dir, err := os.MkdirTemp("", fmt.Sprintf("%s%d-", tempPrefix, os.Getpid()))
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "s")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		return err
	}
	src := &firstError{PointSource: exports.PointSource{DiskReader: d}}
	srv := &nbd.Server{Exports: []nbd.Export{{Name: "disk", Source: src}}}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	defer func() { srv.Close(); <-served }()
	args := []string{"convert", "-p", "-f", "raw", "-O", "qcow2", "-m", "8", "-W"}
	if len(opts) > 0 {
		args = append(args, "-o", strings.Join(opts, ","))
	}
	args = append(args, "nbd+unix:///disk?socket="+sock, dst)
	cmd := exec.CommandContext(ctx, "qemu-img", args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("qemu-img convert: %w", err)
	}
	// -p prints "(12.34/100%)" updates separated by carriage returns.
	buf := make([]byte, 4096)
	for {
		n, rerr := out.Read(buf)
		for _, f := range strings.FieldsFunc(string(buf[:n]), func(r rune) bool { return r == '\r' || r == '\n' }) {
			var pct float64
			if _, err := fmt.Sscanf(strings.TrimSpace(f), "(%f/100%%)", &pct); err == nil {
				progress(int64(pct / 100 * float64(d.Size())))
			}
		}
		if rerr != nil {
			break
		}
	}
	if err := cmd.Wait(); err != nil {
		if rerr := src.err(); rerr != nil {
			return rerr // the real cause (a damaged chunk, say), not qemu-img's EIO
		}
		return fmt.Errorf("qemu-img convert: %v: %s", err, bytes.TrimSpace(stderr.Bytes()))
	}
	f, err := os.OpenFile(dst, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

// ErrFormatDetails is wrapped by errors for a point's qcow2 details that
// are not on the allow-list: they come from the repository, which an
// attacker may have written, and reach qemu-img's command line.
var ErrFormatDetails = errors.New("format details not allowed")

// qcow2Options turns a point's saved qcow2 details into qemu-img create
// options. Every option and value is allow-listed: a value such as
// "1.1,data_file=/etc/x" would otherwise make qemu-img (as root) create or
// truncate any file.
func qcow2Options(details map[string]any) ([]string, error) {
	bad := func(field string, v any) error {
		return fmt.Errorf("format_details.%s = %#v: %w", field, v, ErrFormatDetails)
	}
	var opts []string
	for _, k := range slices.Sorted(maps.Keys(details)) {
		v := details[k]
		switch k {
		case "cluster_size":
			n, ok := v.(float64)
			// qcow2 clusters are a power of two from 512 B to 2 MiB.
			if !ok || n != float64(int64(n)) || n < 512 || n > 2<<20 || int64(n)&(int64(n)-1) != 0 {
				return nil, bad(k, v)
			}
			opts = append(opts, fmt.Sprintf("cluster_size=%d", int64(n)))
		case "compat":
			s, ok := v.(string)
			if !ok || (s != "" && s != "0.10" && s != "1.1" && s != "v2" && s != "v3") {
				return nil, bad(k, v)
			}
			if s != "" {
				opts = append(opts, "compat="+s)
			}
		case "compression_type":
			s, ok := v.(string)
			if !ok || (s != "" && s != "zlib" && s != "zstd") {
				return nil, bad(k, v)
			}
			if s != "" {
				opts = append(opts, "compression_type="+s)
			}
		case "lazy_refcounts", "extended_l2":
			on, ok := v.(bool)
			if !ok {
				return nil, bad(k, v)
			}
			if on {
				opts = append(opts, k+"=on")
			}
		default:
			return nil, bad(k, v)
		}
	}
	return opts, nil
}

// firstError is an exports.PointSource that remembers the first read error.
type firstError struct {
	exports.PointSource
	mu    sync.Mutex
	first error
}

func (s *firstError) ReadAt(ctx context.Context, p []byte, off int64) error {
	err := s.PointSource.ReadAt(ctx, p, off)
	if err != nil {
		s.mu.Lock()
		if s.first == nil {
			s.first = err
		}
		s.mu.Unlock()
	}
	return err
}

func (s *firstError) err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.first
}

// qemuNBD serves an image read-only with qemu-nbd on a private socket and
// returns a client; stop disconnects and waits for qemu-nbd to exit (it
// exits when its only client leaves).
func qemuNBD(ctx context.Context, image, format string) (*nbd.Client, func() error, error) {
	dir, err := os.MkdirTemp("", "vk-nbd-")
	if err != nil {
		return nil, nil, err
	}
	sock := filepath.Join(dir, "s")
	proc, err := virt.StartListening(ctx, exec.Command("qemu-nbd", "-r", "-f", format, "-k", sock, image), sock, 30*time.Second)
	if err != nil {
		os.RemoveAll(dir)
		return nil, nil, err
	}
	fail := func(err error) (*nbd.Client, func() error, error) {
		proc.Kill()
		os.RemoveAll(dir)
		return nil, nil, err
	}
	c, err := nbd.Dial(ctx, "unix", sock, nbd.Options{})
	if err != nil {
		return fail(err)
	}
	var once sync.Once
	var stopErr error
	stop := func() error {
		once.Do(func() {
			c.Close()
			stopErr = proc.Wait(30 * time.Second)
			os.RemoveAll(dir)
		})
		return stopErr
	}
	return c, stop, nil
}

// verifyRestore re-reads the restored image and compares it with the point.
func verifyRestore(ctx context.Context, d *target.DiskReader, dst, format string) error {
	var read func(p []byte, off int64) error
	if format == "raw" {
		f, err := os.Open(dst)
		if err != nil {
			return err
		}
		defer f.Close()
		read = func(p []byte, off int64) error { _, err := f.ReadAt(p, off); return err }
	} else {
		c, stop, err := qemuNBD(ctx, dst, "qcow2")
		if err != nil {
			return err
		}
		defer stop()
		if c.Size() != d.Size() {
			return fmt.Errorf("restored image has %d bytes, the point %d", c.Size(), d.Size())
		}
		read = func(p []byte, off int64) error { return c.Read(ctx, p, off) }
	}
	want, got := make([]byte, 4<<20), make([]byte, 4<<20)
	for off := int64(0); off < d.Size(); off += int64(len(want)) {
		n := min(int64(len(want)), d.Size()-off)
		if err := d.ReadAt(ctx, want[:n], off); err != nil {
			return err
		}
		if err := read(got[:n], off); err != nil {
			return err
		}
		if !bytes.Equal(want[:n], got[:n]) {
			return fmt.Errorf("restored data differs from the point near offset %d", off)
		}
	}
	return nil
}
