package engine

import (
	"context"
	"log/slog"

	"github.com/virtkeep/virtkeep/hostd/layout"
	"github.com/virtkeep/virtkeep/nbd"
	"github.com/virtkeep/virtkeep/target"
)

// LVExportName is the NBD export name of logical volume vg/lv found on
// disk: "vda/vg/lv".
func LVExportName(disk, vg, lv string) string { return disk + "/" + vg + "/" + lv }

// PointExports returns the NBD exports of a point: each disk (or only the
// named one) under its name, and each linear LVM logical volume found on
// it as "DISK/VG/LV" (see package layout). A disk whose layout cannot be
// read is still served whole; the problem is logged (log may be nil).
func PointExports(ctx context.Context, repo *target.Repository, m *target.Manifest, disk string, log *slog.Logger) ([]nbd.Export, error) {
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
