package vm

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/virtkeep/virtkeep/hostd/virt"
	"github.com/virtkeep/virtkeep/testenv"
)

// DiskSpec describes a disk to create.
type DiskSpec struct {
	Target string       // guest target name; default vda, vdb, ... by position
	Format string       // "qcow2" (default) or "raw"
	Size   int64        // virtual size in bytes; default 64 MiB
	Seed   uint64       // content seed; default derived from the position
	Fill   testenv.Fill // content mix; default testenv.DefaultFill
	// Image, if set, is an image file (of Format) copied as the disk
	// instead of generated content: the Disk has no Content then, so
	// nothing can be written to it through the test helpers.
	Image string
}

// Disk is a disk of a test domain or QEMU process.
type Disk struct {
	Target  string           // guest target name (vda)
	Path    string           // image file
	Format  string           // qcow2 or raw
	Content *testenv.Content // what the disk must hold now (nil: copied from an Image)
	qdev    string           // QEMU device id, set while running
	size    int64
}

// Size is the disk's virtual size.
func (d *Disk) Size() int64 { return d.size }

// ExpectedSHA256 is the SHA-256 of what the disk must hold now.
func (d *Disk) ExpectedSHA256() string { return d.Content.SHA256() }

// ActualSHA256 reads the image from the outside and hashes it.
func (d *Disk) ActualSHA256(ctx context.Context) (string, error) {
	return testenv.ImageSHA256(ctx, d.Path, d.Format)
}

func createDisks(ctx context.Context, dir string, specs []DiskSpec) ([]*Disk, error) {
	disks := make([]*Disk, 0, len(specs))
	seen := map[string]bool{}
	for i, s := range specs {
		if s.Target == "" {
			s.Target = "vd" + string(rune('a'+i))
		}
		if seen[s.Target] {
			return nil, fmt.Errorf("testenv: disk target %q given twice", s.Target)
		}
		seen[s.Target] = true
		if s.Format == "" {
			s.Format = "qcow2"
		}
		if s.Size == 0 {
			s.Size = 64 << 20
		}
		if s.Seed == 0 {
			s.Seed = uint64(i) + 1
		}
		path := filepath.Join(dir, s.Target+"."+s.Format)
		if s.Image != "" {
			if out, err := exec.CommandContext(ctx, "cp", "--sparse=always", s.Image, path).CombinedOutput(); err != nil {
				return nil, fmt.Errorf("testenv: disk %s: copy %s: %v %s", s.Target, s.Image, err, out)
			}
			info, err := virt.ReadImageInfo(ctx, path, s.Format)
			if err != nil {
				return nil, fmt.Errorf("testenv: disk %s: %w", s.Target, err)
			}
			disks = append(disks, &Disk{Target: s.Target, Path: path, Format: s.Format, size: info.VirtualSize})
			continue
		}
		c, err := testenv.NewContent(s.Size, s.Seed, s.Fill)
		if err != nil {
			return nil, fmt.Errorf("testenv: disk %s: %w", s.Target, err)
		}
		if err := testenv.WriteImage(ctx, c, path, s.Format); err != nil {
			return nil, fmt.Errorf("testenv: disk %s: %w", s.Target, err)
		}
		disks = append(disks, &Disk{Target: s.Target, Path: path, Format: s.Format, Content: c, size: c.Size()})
	}
	return disks, nil
}

func findDisk(disks []*Disk, target string) (*Disk, error) {
	names := make([]string, 0, len(disks))
	for _, d := range disks {
		if d.Target == target {
			return d, nil
		}
		names = append(names, d.Target)
	}
	return nil, fmt.Errorf("testenv: no disk %q (disks: %s)", target, strings.Join(names, ", "))
}

// hmpFunc runs an HMP command line in a QEMU and returns its output.
type hmpFunc func(ctx context.Context, line string) (string, error)

// writeDisk writes into a running disk through HMP qemu-io, the way a guest
// write reaches the block layer, flushes it so readers from outside see it,
// and records it in the disk's model.
func writeDisk(ctx context.Context, hmp hmpFunc, d *Disk, w testenv.Write) error {
	if d.qdev == "" {
		return fmt.Errorf("testenv: disk %s: not attached to a running QEMU", d.Target)
	}
	if w.Off < 0 || w.Len <= 0 || w.Off+w.Len > d.Size() {
		return fmt.Errorf("testenv: disk %s: write [%d, +%d) outside the disk of %d bytes", d.Target, w.Off, w.Len, d.Size())
	}
	op := fmt.Sprintf("write -P %d %d %d", w.Pattern, w.Off, w.Len)
	if w.Zero {
		w.Pattern = 0
		op = fmt.Sprintf("write -z %d %d", w.Off, w.Len)
	}
	for _, cmd := range []string{op, "flush"} {
		out, err := hmp(ctx, fmt.Sprintf("qemu-io -d %s/virtio-backend %q", d.qdev, cmd))
		if err != nil {
			return fmt.Errorf("testenv: disk %s: qemu-io %s: %w", d.Target, cmd, err)
		}
		if strings.Contains(out, "failed") || strings.Contains(out, "rror") || strings.Contains(out, "not found") {
			return fmt.Errorf("testenv: disk %s: qemu-io %s: %s", d.Target, cmd, strings.TrimSpace(out))
		}
	}
	return d.Content.Record(w)
}
