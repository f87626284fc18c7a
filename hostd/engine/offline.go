package engine

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"html"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"libvirt.org/go/libvirt"

	"github.com/virtkeep/virtkeep/nbd"
	"github.com/virtkeep/virtkeep/qmp"
)

// imageInfo is what qemu-img says of an image.
type imageInfo struct {
	VirtualSize    int64 `json:"virtual-size"`
	FormatSpecific struct {
		Data struct {
			Bitmaps []struct {
				Name  string   `json:"name"`
				Flags []string `json:"flags"`
			} `json:"bitmaps"`
		} `json:"data"`
	} `json:"format-specific"`
}

func readImageInfo(ctx context.Context, path, format string) (*imageInfo, error) {
	out, err := exec.CommandContext(ctx, "qemu-img", "info", "-U", "-f", format, "--output=json", path).Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return nil, fmt.Errorf("qemu-img info %s: %v: %s", path, err, bytes.TrimSpace(ee.Stderr))
		}
		return nil, fmt.Errorf("qemu-img info %s: %w", path, err)
	}
	var info imageInfo
	if err := json.Unmarshal(out, &info); err != nil {
		return nil, fmt.Errorf("qemu-img info %s: %w", path, err)
	}
	return &info, nil
}

func qemuImg(ctx context.Context, args ...string) error {
	out, err := exec.CommandContext(ctx, "qemu-img", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("qemu-img %s: %v: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// offline backs up a shut-off domain: each disk is exported read-only by
// qemu-nbd, with the base checkpoint's bitmap for incrementals; a new
// persistent bitmap is added first for the next backup.
func (b *run) offline(ctx context.Context) error {
	b.namedBitmaps = true
	b.consistency = ConsistencyCrash
	b.newCheckpoint = newCheckpointName(b.req.Target.Name, time.Now())
	b.incr, b.fullReason = map[string]string{}, map[string]string{}
	infos := map[string]*imageInfo{}
	for _, d := range b.disks {
		info, err := readImageInfo(ctx, d.Path, d.Format)
		if err != nil {
			return fmt.Errorf("disk %s: %w", d.Target, err)
		}
		infos[d.Target] = info
		if b.level == LevelFull {
			continue
		}
		cp, reason := b.baseCheckpoint(d, info.VirtualSize)
		if reason == "" {
			var bms []qmp.DirtyBitmap
			for _, bm := range info.FormatSpecific.Data.Bitmaps {
				bms = append(bms, qmp.DirtyBitmap{Name: bm.Name, Recording: contains(bm.Flags, "auto"), Inconsistent: contains(bm.Flags, "in-use")})
			}
			reason = bitmapReason(cp, d.Path, bms)
		}
		if reason != "" {
			b.fullReason[d.Target] = reason
			b.log.Warn("disk read in full", "disk", d.Target, "reason", reason)
			continue
		}
		b.incr[d.Target] = cp
	}
	// Repairs: our bitmaps and checkpoint metadata no chain needs.
	keep := b.keepSet()
	prefix := checkpointPrefix(b.req.Target.Name)
	for _, d := range b.disks {
		for _, bm := range infos[d.Target].FormatSpecific.Data.Bitmaps {
			if strings.HasPrefix(bm.Name, prefix) && (!keep[bm.Name] || contains(bm.Flags, "in-use")) {
				if err := qemuImg(ctx, "bitmap", "--remove", d.Path, bm.Name); err != nil {
					return fmt.Errorf("disk %s: %w", d.Target, err)
				}
				b.res.Repairs = append(b.res.Repairs, fmt.Sprintf("removed bitmap %s from disk %s", bm.Name, d.Target))
			}
		}
	}
	b.dropMetadata(func(n string) bool { return !keep[n] || b.brokenCheckpoint(n) }, "not needed by this target's chain")

	dir, err := b.runDir()
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	var added []diskInfo
	ok := false
	defer func() {
		if ok {
			return
		}
		cctx, cancel := b.e.cleanupCtx(ctx)
		defer cancel()
		for _, d := range added {
			if err := qemuImg(cctx, "bitmap", "--remove", d.Path, b.newCheckpoint); err != nil {
				b.log.Warn("removing the new bitmap after a failure failed", "disk", d.Target, "err", err)
			}
		}
	}()
	for _, d := range b.disks {
		if d.Format != "qcow2" {
			continue
		}
		if err := qemuImg(ctx, "bitmap", "--add", d.Path, b.newCheckpoint); err != nil {
			return fmt.Errorf("disk %s: %w", d.Target, err)
		}
		added = append(added, d)
	}
	dial := func(ctx context.Context, d diskInfo, contexts []string) (*nbd.Pool, error) {
		sock := filepath.Join(dir, d.Target+".sock")
		args := []string{"-r", "-f", d.Format, "-x", d.Target, "-k", sock, "-e", "4", "--persistent"}
		if cp := b.incr[d.Target]; cp != "" {
			args = append(args, "--bitmap="+cp)
		}
		cmd := exec.Command("qemu-nbd", append(args, d.Path)...)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			return nil, fmt.Errorf("qemu-nbd: %w", err)
		}
		exited := make(chan struct{})
		go func() { _ = cmd.Wait(); close(exited) }()
		stop := func() { _ = cmd.Process.Kill(); <-exited }
		for start := time.Now(); ; {
			if c, err := net.Dial("unix", sock); err == nil {
				c.Close()
				break
			}
			select {
			case <-exited:
				return nil, fmt.Errorf("qemu-nbd exited: %s", bytes.TrimSpace(out.Bytes()))
			case <-ctx.Done():
				stop()
				return nil, ctx.Err()
			case <-time.After(20 * time.Millisecond):
			}
			if time.Since(start) > 30*time.Second {
				stop()
				return nil, errors.New("qemu-nbd did not start listening in 30 s")
			}
		}
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

// onClose stops qemu-nbd once the copy closes its pool.
func (b *run) onClose(p *nbd.Pool, stop func()) {
	p.OnClose(stop)
}

// dropMetadata deletes the libvirt metadata of this target's checkpoints
// that drop selects (a shut-off domain's bitmaps are handled on the images).
func (b *run) dropMetadata(drop func(string) bool, why string) {
	prefix := checkpointPrefix(b.req.Target.Name)
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
	keep := b.survivors()
	prefix := checkpointPrefix(b.req.Target.Name)
	for _, d := range b.disks {
		if d.Format != "qcow2" {
			continue
		}
		info, err := readImageInfo(ctx, d.Path, d.Format)
		if err != nil {
			continue
		}
		for _, bm := range info.FormatSpecific.Data.Bitmaps {
			if strings.HasPrefix(bm.Name, prefix) && !keep[bm.Name] {
				if err := qemuImg(ctx, "bitmap", "--remove", d.Path, bm.Name); err != nil {
					b.log.Warn("removing a superseded bitmap failed", "disk", d.Target, "err", err)
				}
			}
		}
	}
	b.dropMetadata(func(n string) bool { return !keep[n] }, "superseded")
	var disks strings.Builder
	for _, xd := range b.dx.Devices.Disks {
		if xd.Target == nil || (xd.Device != "" && xd.Device != "disk") {
			continue
		}
		mode := "no"
		for _, d := range b.disks {
			if d.Target == xd.Target.Dev && d.Format == "qcow2" {
				mode = "bitmap"
			}
		}
		fmt.Fprintf(&disks, "<disk name='%s' checkpoint='%s'/>", html.EscapeString(xd.Target.Dev), mode)
	}
	xml := fmt.Sprintf("<domaincheckpoint><name>%s</name><creationTime>%d</creationTime><disks>%s</disks></domaincheckpoint>",
		html.EscapeString(b.newCheckpoint), time.Now().Unix(), disks.String())
	if c, err := b.dom.CreateCheckpointXML(xml, libvirt.DOMAIN_CHECKPOINT_CREATE_REDEFINE); err != nil {
		b.log.Info("could not record the checkpoint in libvirt; the next online backup redefines it", "err", err)
	} else {
		c.Free()
	}
}

func contains(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}
