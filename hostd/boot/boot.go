// Package boot starts a new domain at once from a point (instant
// recovery): its disks are qcow2 overlays over the point served by NBD,
// reads come from the backup and writes go to the overlays; Migrate then
// moves the disks to local files while the domain runs.
package boot

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"libvirt.org/go/libvirt"
	"libvirt.org/go/libvirtxml"

	"github.com/virtkeep/virtkeep/hostd/domain"
	"github.com/virtkeep/virtkeep/hostd/exports"
	"github.com/virtkeep/virtkeep/hostd/statedir"
	"github.com/virtkeep/virtkeep/hostd/virt"
	"github.com/virtkeep/virtkeep/target"
)

// Booter boots domains from points over one libvirt connection.
type Booter struct {
	Conn *libvirt.Connect
	// State, when set, holds the NBD socket (state_dir/run/boot-*): a
	// unix socket path must fit in 108 bytes, which Dir may not.
	State statedir.Dir
	Log   *slog.Logger
	// BootFileDirs are where a booted domain may take firmware, kernels
	// and initrds from (default domain.DefaultBootFileDirs).
	BootFileDirs []string
}

func (e *Booter) log() *slog.Logger {
	if e.Log != nil {
		return e.Log
	}
	return slog.New(slog.DiscardHandler)
}

// Request asks for a point to run at once as a new domain (instant
// recovery): its disks are qcow2 overlays whose backing file is the point,
// served over NBD; reads come from the backup, writes go to the overlays.
type Request struct {
	Point string
	Name  string // the new domain; it must not exist
	Dir   string // overlays and runtime files (QEMU must reach it)
	// Serve is the argv of a process that serves every disk of the point
	// (export names = disk names) read-only over NBD on the unix socket
	// given as its last argument, until killed (virtkeep serve).
	Serve []string
	// Start, instead of Serve, serves the point in the caller's process
	// (the daemon); it returns once the server accepts on the socket.
	Start func(ctx context.Context, socket string) error
	// Strict refuses a saved definition with parts the boot would drop.
	Strict bool
}

// Booted is a domain running from a backup.
type Booted struct {
	UUID     string
	Socket   string
	ServePID int
	Overlays map[string]string // disk -> overlay file
}

// Boot defines and starts the domain. Its disks depend on the NBD server
// until Migrate moves them to local files.
func (e *Booter) Boot(ctx context.Context, repo *target.Repository, r Request) (_ *Booted, err error) {
	if len(r.Serve) == 0 && r.Start == nil {
		return nil, errors.New("boot: no NBD server")
	}
	if d, err := e.Conn.LookupDomainByName(r.Name); err == nil {
		d.Free()
		return nil, fmt.Errorf("boot: a domain named %q exists already", r.Name)
	}
	m, err := repo.Point(ctx, r.Point)
	if err != nil {
		return nil, err
	}
	dx, filter, err := domain.Saved(m, e.BootFileDirs)
	if err != nil {
		return nil, fmt.Errorf("boot: %w", err)
	}
	// Overlays are created here as root: nobody else may plant a link.
	if err := statedir.MkdirTrusted(r.Dir); err != nil {
		return nil, fmt.Errorf("boot: %w", err)
	}
	// The NBD socket serves the decrypted point: its directory is open to
	// QEMU's group only.
	run, err := e.socketDir(r.Dir)
	if err != nil {
		return nil, err
	}
	if err := statedir.ShareWithQEMU(run, 0o750); err != nil {
		return nil, err
	}
	b := &Booted{Socket: filepath.Join(run, "nbd.sock"), Overlays: map[string]string{}}
	defer func() {
		if err != nil {
			for _, p := range b.Overlays {
				os.Remove(p)
			}
			if b.ServePID > 0 {
				_ = syscall.Kill(b.ServePID, syscall.SIGTERM)
			}
		}
	}()
	if r.Start != nil {
		err = r.Start(ctx, b.Socket)
	} else {
		b.ServePID, err = exports.StartServer(ctx, r.Serve, b.Socket, filepath.Join(run, "serve.log"))
	}
	if err != nil {
		return nil, fmt.Errorf("boot: %w", err)
	}
	// QEMU runs as libvirt-qemu: it must be able to connect, and nobody else.
	if err := statedir.ShareWithQEMU(b.Socket, 0o660); err != nil {
		return nil, fmt.Errorf("boot: %w", err)
	}
	err = domain.RewriteDisks(dx, m, filter, func(xd *libvirtxml.DomainDisk, dm target.DiskManifest) error {
		overlay := filepath.Join(r.Dir, dm.Name+".overlay.qcow2")
		backing := fmt.Sprintf("nbd+unix:///%s?socket=%s", dm.Name, b.Socket)
		if out, err := exec.CommandContext(ctx, "qemu-img", "create", "-q", "-f", "qcow2", "-b", backing, "-F", "raw", overlay, fmt.Sprint(dm.VirtualSize)).CombinedOutput(); err != nil {
			return fmt.Errorf("boot: overlay for %s: %v: %s", dm.Name, err, bytes.TrimSpace(out))
		}
		b.Overlays[dm.Name] = overlay
		// The guest's writes land here; libvirt gives it to QEMU at start.
		if err := os.Chmod(overlay, 0o600); err != nil {
			return err
		}
		domain.SetDiskFile(xd, overlay, "qcow2")
		xd.BackingStore = &libvirtxml.DomainDiskBackingStore{
			Format: &libvirtxml.DomainDiskFormat{Type: "raw"},
			Source: &libvirtxml.DomainDiskSource{Network: &libvirtxml.DomainDiskSourceNetwork{
				Protocol: "nbd", Name: dm.Name,
				Hosts: []libvirtxml.DomainDiskSourceHost{{Transport: "unix", Socket: b.Socket}}}},
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if err := filter.Report(e.log(), m.ID, r.Strict); err != nil {
		return nil, fmt.Errorf("boot: %w", err)
	}
	domain.FreshIdentity(dx, r.Name, r.Dir)
	xml, err := dx.Marshal()
	if err != nil {
		return nil, err
	}
	dom, err := e.Conn.DomainCreateXML(xml, 0)
	if err != nil {
		return nil, fmt.Errorf("boot: start %s: %w", r.Name, err)
	}
	defer dom.Free()
	b.UUID, _ = dom.GetUUIDString()
	return b, nil
}

// socketDir makes the directory of the boot's NBD socket.
func (e *Booter) socketDir(dir string) (string, error) {
	if e.State == "" {
		run := filepath.Join(dir, "run")
		return run, os.MkdirAll(run, 0o700)
	}
	base, err := e.State.Run()
	if err != nil {
		return "", err
	}
	return os.MkdirTemp(base, "boot-")
}

// Migrate moves a booted domain's disks from the backup to local qcow2
// files while it runs (a block copy per disk, then a pivot), after which
// the domain no longer needs the NBD server, which it stops.
func (e *Booter) Migrate(ctx context.Context, b *Booted, dir string) error {
	dom, err := e.Conn.LookupDomainByUUIDString(b.UUID)
	if err != nil {
		return err
	}
	defer dom.Free()
	for disk := range b.Overlays {
		if err := domain.SafeDiskName(disk); err != nil {
			return err
		}
		dst := filepath.Join(dir, disk+".qcow2")
		xml := fmt.Sprintf("<disk type='file'><driver type='qcow2'/><source file='%s'/></disk>", dst)
		if err := dom.BlockCopy(disk, xml, &libvirt.DomainBlockCopyParameters{}, libvirt.DOMAIN_BLOCK_COPY_TRANSIENT_JOB); err != nil {
			return fmt.Errorf("migrate %s: %w", disk, err)
		}
		if err := virt.WaitFor(ctx, 10*time.Minute, func() bool {
			info, err := dom.GetBlockJobInfo(disk, 0)
			return err == nil && info.End > 0 && info.Cur == info.End
		}); err != nil {
			_ = dom.BlockJobAbort(disk, 0)
			return fmt.Errorf("migrate %s: copy did not converge: %w", disk, err)
		}
		if err := dom.BlockJobAbort(disk, libvirt.DOMAIN_BLOCK_JOB_ABORT_PIVOT); err != nil {
			return fmt.Errorf("migrate %s: pivot: %w", disk, err)
		}
		if err := virt.WaitFor(ctx, time.Minute, func() bool {
			_, err := dom.GetBlockJobInfo(disk, 0)
			info, _ := dom.GetBlockJobInfo(disk, 0)
			return err == nil && info.Type == 0
		}); err != nil {
			return fmt.Errorf("migrate %s: pivot did not finish", disk)
		}
	}
	if b.ServePID > 0 {
		_ = syscall.Kill(b.ServePID, syscall.SIGTERM)
	}
	for _, o := range b.Overlays {
		os.Remove(o)
	}
	return nil
}

// DestroyBooted stops a domain Boot started (it is transient: it is gone
// then); a domain that no longer exists needs nothing.
func (e *Booter) DestroyBooted(ctx context.Context, uuid string) error {
	dom, err := virt.LookupUUID(e.Conn, uuid)
	if dom == nil {
		return err
	}
	defer dom.Free()
	if err := dom.Destroy(); err != nil && !errors.Is(err, libvirt.ERR_NO_DOMAIN) && !errors.Is(err, libvirt.ERR_OPERATION_INVALID) {
		return fmt.Errorf("destroy booted domain %s: %w", uuid, err)
	}
	return nil
}
