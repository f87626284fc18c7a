package testenv

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// WriteImage creates the disk image at path in the given format ("qcow2" or
// "raw") holding c's generated content. Holes stay sparse (unallocated in
// qcow2), zero segments are allocated zeros (zero clusters in qcow2).
func WriteImage(ctx context.Context, c *Content, path, format string) error {
	switch format {
	case "raw":
		return writeRaw(c, path, true)
	case "qcow2":
	default:
		return fmt.Errorf("testenv: disk format %q: want qcow2 or raw", format)
	}
	tmp := path + ".raw-tmp"
	defer os.Remove(tmp)
	if err := writeRaw(c, tmp, false); err != nil {
		return err
	}
	if out, err := exec.CommandContext(ctx, "qemu-img", "convert", "-f", "raw", "-O", "qcow2", tmp, path).CombinedOutput(); err != nil {
		return fmt.Errorf("testenv: qemu-img convert to %s: %w: %s", path, err, out)
	}
	var script bytes.Buffer
	for _, s := range c.Segments() {
		if s.Kind == KindZero {
			fmt.Fprintf(&script, "write -z %d %d\n", s.Off, s.Len)
		}
	}
	if script.Len() == 0 {
		return nil
	}
	cmd := exec.CommandContext(ctx, "qemu-io", "-f", "qcow2", path)
	cmd.Stdin = &script
	if out, err := cmd.CombinedOutput(); err != nil || bytes.Contains(out, []byte("failed")) {
		return fmt.Errorf("testenv: qemu-io zero writes into %s: %v: %s", path, err, out)
	}
	return nil
}

// writeRaw writes c into a sparse raw file; zero segments are written as
// zero bytes only when withZeros is set.
func writeRaw(c *Content, path string, withZeros bool) (err error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return fmt.Errorf("testenv: create image: %w", err)
	}
	defer func() {
		if cerr := f.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("testenv: close %s: %w", path, cerr)
		}
	}()
	if err := f.Truncate(c.Size()); err != nil {
		return fmt.Errorf("testenv: size %s: %w", path, err)
	}
	buf := make([]byte, 1<<20)
	for _, s := range c.Segments() {
		if s.Kind == KindHole || (s.Kind == KindZero && !withZeros) {
			continue
		}
		for off := s.Off; off < s.Off+s.Len; {
			n := min(int64(len(buf)), s.Off+s.Len-off)
			c.readBase(c.segs, buf[:n], off)
			if _, err := f.WriteAt(buf[:n], off); err != nil {
				return fmt.Errorf("testenv: write %s: %w", path, err)
			}
			off += n
		}
	}
	return f.Sync()
}

// ImageSHA256 computes the hex SHA-256 of the guest-visible content of the
// image at path from the outside, reading it through qemu-nbd with locking
// off so it works while QEMU has the image open. Writes made by a running QEMU
// must have been flushed (Domain.Write flushes).
func ImageSHA256(ctx context.Context, path, format string) (string, error) {
	if _, err := os.Stat(path); err != nil {
		return "", fmt.Errorf("testenv: image: %w", err)
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", err
	}
	if strings.ContainsAny(abs, ",") {
		return "", fmt.Errorf("testenv: image path %q: commas are not supported", abs)
	}
	opts := fmt.Sprintf("driver=%s,file.driver=file,file.filename=%s,file.locking=off", format, abs)
	cmd := exec.CommandContext(ctx, "nbdcopy", "--", "[", "qemu-nbd", "-r", "--image-opts", opts, "]", "-")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return "", err
	}
	if err := cmd.Start(); err != nil {
		return "", fmt.Errorf("testenv: nbdcopy: %w", err)
	}
	h := sha256.New()
	_, cerr := io.CopyBuffer(h, out, make([]byte, 1<<20))
	if err := cmd.Wait(); err != nil {
		return "", fmt.Errorf("testenv: read %s through qemu-nbd: %w: %s", path, err, stderr.Bytes())
	}
	if cerr != nil {
		return "", fmt.Errorf("testenv: read %s: %w", path, cerr)
	}
	return fmt.Sprintf("%x", h.Sum(nil)), nil
}

// FilesImage makes a qcow2 image at path holding an ext4 filesystem of
// size bytes with a copy of the host's directory src (real files, for
// benchmarks of compression), built by mkfs.ext4 -d without mounting.
func FilesImage(ctx context.Context, src, path string, size int64) error {
	raw := path + ".raw"
	defer os.Remove(raw)
	if err := os.WriteFile(raw, nil, 0o644); err != nil {
		return err
	}
	if err := os.Truncate(raw, size); err != nil {
		return err
	}
	for _, c := range [][]string{
		{"mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", "-d", src, raw},
		{"qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, path},
	} {
		if out, err := exec.CommandContext(ctx, c[0], c[1:]...).CombinedOutput(); err != nil {
			return fmt.Errorf("testenv: %s: %v %s", c[0], err, out)
		}
	}
	return nil
}
