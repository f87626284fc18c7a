package backup

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"libvirt.org/go/libvirt"

	"github.com/virtkeep/virtkeep/hostd/chain"
	"github.com/virtkeep/virtkeep/hostd/virt"
	"github.com/virtkeep/virtkeep/nbd"
)

// offline backs up a shut-off domain: each disk is exported read-only by
// qemu-nbd, with the base checkpoint's bitmap for incrementals; a new
// persistent bitmap is added first for the next backup.
func (b *run) offline(ctx context.Context) error {
	b.namedBitmaps = true
	b.consistency = ConsistencyCrash
	b.newCheckpoint = chain.NewCheckpointName(b.req.Target.Name, time.Now())
	infos := map[string]*virt.ImageInfo{}
	var disks []chain.Disk
	for _, d := range b.disks {
		info, err := virt.ReadImageInfo(ctx, d.Path, d.Format)
		if err != nil {
			return fmt.Errorf("disk %s: %w", d.Target, err)
		}
		infos[d.Target] = info
		disks = append(disks, chain.Disk{Name: d.Target, Format: d.Format, Size: info.VirtualSize, Bitmaps: imageBitmaps(info), Where: d.Path})
	}
	b.plan = chain.NewPlan(b.req.Target.Name, b.level, b.base, disks)
	b.logFull()
	// Repairs: our bitmaps and checkpoint metadata no chain needs.
	keep := b.chain.Keep(b.plan)
	prefix := chain.Prefix(b.req.Target.Name)
	for _, d := range b.disks {
		for _, bm := range infos[d.Target].FormatSpecific.Data.Bitmaps {
			if strings.HasPrefix(bm.Name, prefix) && (!keep[bm.Name] || slices.Contains(bm.Flags, "in-use")) {
				if err := virt.QemuImg(ctx, "bitmap", "--remove", d.Path, bm.Name); err != nil {
					return fmt.Errorf("disk %s: %w", d.Target, err)
				}
				b.res.Repairs = append(b.res.Repairs, fmt.Sprintf("removed bitmap %s from disk %s", bm.Name, d.Target))
			}
		}
	}
	b.dropMetadata(func(n string) bool { return !keep[n] || b.plan.Broken(n) }, "not needed by this target's chain")

	dir, err := b.e.State.NewScratch()
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	var added []virt.Disk
	ok := false
	defer func() {
		if ok {
			return
		}
		cctx, cancel := b.e.cleanupCtx(ctx)
		defer cancel()
		for _, d := range added {
			if err := virt.QemuImg(cctx, "bitmap", "--remove", d.Path, b.newCheckpoint); err != nil {
				b.log.Warn("removing the new bitmap after a failure failed", "disk", d.Target, "err", err)
			}
		}
	}()
	for _, d := range b.disks {
		if d.Format != "qcow2" {
			continue
		}
		if err := virt.QemuImg(ctx, "bitmap", "--add", d.Path, b.newCheckpoint); err != nil {
			return fmt.Errorf("disk %s: %w", d.Target, err)
		}
		added = append(added, d)
	}
	dial := func(ctx context.Context, d virt.Disk, contexts []string) (*nbd.Pool, error) {
		sock := filepath.Join(dir, d.Target+".sock")
		args := []string{"-r", "-f", d.Format, "-x", d.Target, "-k", sock, "-e", "4", "--persistent"}
		if cp := b.plan.Incr[d.Target]; cp != "" {
			args = append(args, "--bitmap="+cp)
		}
		proc, err := virt.StartListening(ctx, exec.Command("qemu-nbd", append(args, d.Path)...), sock, 30*time.Second)
		if err != nil {
			return nil, err
		}
		stop := proc.Kill
		pool, err := nbd.DialPool(ctx, 2, "unix", sock, nbd.Options{Export: d.Target, MetaContexts: contexts})
		if err != nil {
			stop()
			return nil, err
		}
		b.onClose(pool, stop)
		return pool, nil
	}
	if _, err := b.copyDisks(ctx, dial); err != nil {
		return err
	}
	ok = true
	b.retireOffline(ctx)
	return nil
}

// imageBitmaps are an image's persistent bitmaps as the chain sees them.
func imageBitmaps(info *virt.ImageInfo) []chain.Bitmap {
	var out []chain.Bitmap
	for _, bm := range info.FormatSpecific.Data.Bitmaps {
		out = append(out, chain.Bitmap{Name: bm.Name, Recording: slices.Contains(bm.Flags, "auto"), Inconsistent: slices.Contains(bm.Flags, "in-use")})
	}
	return out
}

// onClose stops qemu-nbd once the copy closes its pool.
func (b *run) onClose(p *nbd.Pool, stop func()) {
	p.OnClose(stop)
}

// dropMetadata deletes the libvirt metadata of this target's checkpoints
// that drop selects (a shut-off domain's bitmaps are handled on the images).
func (b *run) dropMetadata(drop func(string) bool, why string) {
	prefix := chain.Prefix(b.req.Target.Name)
	cps, err := b.dom.ListAllCheckpoints(0)
	if err != nil {
		return
	}
	for i := range cps {
		c := &cps[i]
		n, _ := c.GetName()
		if strings.HasPrefix(n, prefix) && n != b.newCheckpoint && drop(n) {
			if err := c.Delete(libvirt.DOMAIN_CHECKPOINT_DELETE_METADATA_ONLY); err == nil {
				b.res.Repairs = append(b.res.Repairs, fmt.Sprintf("deleted checkpoint metadata %s: %s", n, why))
			}
		}
		c.Free()
	}
}

// retireOffline removes superseded bitmaps from the images and records the
// new checkpoint in libvirt, so a later online backup can use it.
func (b *run) retireOffline(ctx context.Context) {
	keep := b.chain.Survivors(b.newCheckpoint, b.level)
	prefix := chain.Prefix(b.req.Target.Name)
	for _, d := range b.disks {
		if d.Format != "qcow2" {
			continue
		}
		info, err := virt.ReadImageInfo(ctx, d.Path, d.Format)
		if err != nil {
			continue
		}
		for _, bm := range info.FormatSpecific.Data.Bitmaps {
			if strings.HasPrefix(bm.Name, prefix) && !keep[bm.Name] {
				if err := virt.QemuImg(ctx, "bitmap", "--remove", d.Path, bm.Name); err != nil {
					b.log.Warn("removing a superseded bitmap failed", "disk", d.Target, "err", err)
				}
			}
		}
	}
	b.dropMetadata(func(n string) bool { return !keep[n] }, "superseded")
	xml, err := virt.CheckpointXML(b.newCheckpoint, time.Now(), b.dx, func(dev string) bool {
		return slices.ContainsFunc(b.disks, func(d virt.Disk) bool { return d.Target == dev && d.Format == "qcow2" })
	})
	if err != nil {
		b.log.Info("could not record the checkpoint in libvirt; the next online backup redefines it", "err", err)
		return
	}
	if c, err := b.dom.CreateCheckpointXML(xml, libvirt.DOMAIN_CHECKPOINT_CREATE_REDEFINE); err != nil {
		b.log.Info("could not record the checkpoint in libvirt; the next online backup redefines it", "err", err)
	} else {
		c.Free()
	}
}
