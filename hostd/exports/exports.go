// Package exports makes a point into NBD exports: each disk under its
// name (its zero chunks reported as holes), and each linear LVM logical
// volume found on it as DISK/VG/LV. Serve, mount and boot put an NBD
// server in front of them, in their process or, with StartServer, in a
// detached one that outlives it.
package exports

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"syscall"
	"time"

	"github.com/virtkeep/virtkeep/hostd/layout"
	"github.com/virtkeep/virtkeep/hostd/virt"
	"github.com/virtkeep/virtkeep/nbd"
	"github.com/virtkeep/virtkeep/target"
)

// PointSource serves one disk of a point: an nbd.Source whose Extents
// report zero chunks as holes, so NBD clients skip them.
type PointSource struct{ *target.DiskReader }

var _ nbd.Mapper = PointSource{}

// Extents reports [off, off+length) with base:allocation flags.
func (s PointSource) Extents(ctx context.Context, off, length int64, fn func(nbd.Extent) error) error {
	return s.Allocated(ctx, off, length, func(o, n int64, zero bool) error {
		var fl uint32
		if zero {
			fl = nbd.StateHole | nbd.StateZero
		}
		return fn(nbd.Extent{Off: o, Len: n, Flags: fl})
	})
}

// LVExportName is the NBD export name of logical volume vg/lv found on
// disk: "vda/vg/lv".
func LVExportName(disk, vg, lv string) string { return disk + "/" + vg + "/" + lv }

// Point returns the NBD exports of a point: each disk (or only the
// named one) under its name, and each linear LVM logical volume found on
// it as "DISK/VG/LV" (see package layout). A disk whose layout cannot be
// read is still served whole; the problem is logged (log may be nil).
func Point(ctx context.Context, repo *target.Repository, m *target.Manifest, disk string, log *slog.Logger) ([]nbd.Export, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var out []nbd.Export
	for _, d := range m.Disks {
		if disk != "" && d.Name != disk {
			continue
		}
		r, err := repo.OpenDisk(ctx, m.ID, d.Name)
		if err != nil {
			return nil, err
		}
		src := PointSource{DiskReader: r}
		desc := m.Domain + " " + m.ID
		out = append(out, nbd.Export{Name: d.Name, Description: desc, Source: src})
		_, lvs, err := layout.Read(ctx, src)
		if err != nil {
			log.Warn("disk layout unreadable: logical volumes not served", "disk", d.Name, "err", err)
			continue
		}
		for _, lv := range lvs {
			v, err := layout.NewView(src, lv)
			if err != nil {
				log.Info("logical volume not served", "disk", d.Name, "vg", lv.VG, "lv", lv.Name, "why", lv.Unsupported)
				continue
			}
			out = append(out, nbd.Export{Name: LVExportName(d.Name, lv.VG, lv.Name), Description: desc + " " + lv.VG + "/" + lv.Name, Source: v})
		}
	}
	return out, nil
}

// StartServer starts argv+[sock] detached (it outlives its caller), its
// output going to logPath, and waits until it accepts on sock; it returns
// the server's PID.
func StartServer(ctx context.Context, argv []string, sock, logPath string) (int, error) {
	logf, err := os.Create(logPath)
	if err != nil {
		return 0, err
	}
	defer logf.Close()
	cmd := exec.Command(argv[0], append(argv[1:], sock)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	p, err := virt.StartListening(ctx, cmd, sock, 30*time.Second)
	if err != nil {
		log, _ := os.ReadFile(logPath)
		return 0, fmt.Errorf("NBD server did not start: %v: %s", err, bytes.TrimSpace(log))
	}
	return p.PID(), nil
}
