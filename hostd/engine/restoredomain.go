package engine

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"libvirt.org/go/libvirt"

	"libvirt.org/go/libvirtxml"

	"github.com/virtkeep/virtkeep/target"
)

// DomainRestore asks for a point to come back as a new libvirt domain.
type DomainRestore struct {
	Name     string // the new domain's name; it must not exist (see InPlace)
	Dir      string // where the disks go (DIR/<disk>.<format>)
	Format   string // raw or qcow2 (default: each disk's own)
	Verify   bool
	Progress func(Progress)
	// Strict refuses a saved definition with parts the restore would
	// drop (host devices, passthrough, qemu:commandline, ...) instead of
	// dropping them with a warning.
	Strict bool
	// InPlace restores onto the disks of the existing domain Name, which
	// must be shut off; it needs Force. The domain's definition is kept; its
	// virtkeep checkpoints go (the restored images have no bitmaps).
	InPlace, Force bool
}

// restoreInPlace writes a point back over the disks of its (shut off)
// domain.
func (e *Engine) restoreInPlace(ctx context.Context, repo *target.Repository, m *target.Manifest, r DomainRestore) (string, error) {
	if !r.Force {
		return "", fmt.Errorf("restore in place overwrites the disks of %s: it needs --force", r.Name)
	}
	dom, err := e.Conn.LookupDomainByName(r.Name)
	if err != nil {
		return "", fmt.Errorf("restore in place: %w", err)
	}
	defer dom.Free()
	if active, _ := dom.IsActive(); active {
		return "", fmt.Errorf("restore in place: domain %s is running: shut it off first", r.Name)
	}
	uuid, _ := dom.GetUUIDString()
	if uuid != m.DomainUUID {
		return "", fmt.Errorf("restore in place: point %s is of domain %s (%s), not %s", m.ID, m.Domain, m.DomainUUID, r.Name)
	}
	xml, err := dom.GetXMLDesc(libvirt.DOMAIN_XML_INACTIVE)
	if err != nil {
		return "", err
	}
	var dx libvirtxml.Domain
	if err := dx.Unmarshal(xml); err != nil {
		return "", err
	}
	disks, _, err := selectDisks(&dx, nil, nil)
	if err != nil {
		return "", err
	}
	for _, dm := range m.Disks {
		var cur *diskInfo
		for i := range disks {
			if disks[i].Target == dm.Name {
				cur = &disks[i]
			}
		}
		if cur == nil {
			return "", fmt.Errorf("restore in place: domain %s has no disk %s now", r.Name, dm.Name)
		}
		if err := RestoreDisk(ctx, repo, m.ID, dm.Name, cur.Path, RestoreOptions{Format: cur.Format, Force: true, Verify: r.Verify, Progress: r.Progress}); err != nil {
			return "", err
		}
	}
	cps, _ := dom.ListAllCheckpoints(0)
	for i := range cps {
		if n, _ := cps[i].GetName(); strings.HasPrefix(n, "virtkeep.") {
			_ = cps[i].Delete(libvirt.DOMAIN_CHECKPOINT_DELETE_METADATA_ONLY)
		}
		cps[i].Free()
	}
	e.log().Info("restored in place", "domain", r.Name, "point", m.ID)
	return uuid, nil
}

// RestoreDomain restores every disk of a point and defines a new domain
// from the saved XML: new name and UUID, new MAC addresses, disks pointing
// at the restored files, firmware variables restored, no checkpoints. It
// never touches the original domain. On failure it removes what it made.
func (e *Engine) RestoreDomain(ctx context.Context, repo *target.Repository, point string, r DomainRestore) (uuid string, err error) {
	if r.Name == "" {
		return "", errors.New("restore: no name for the new domain")
	}
	if r.InPlace {
		m, err := repo.Point(ctx, point)
		if err != nil {
			return "", err
		}
		return e.restoreInPlace(ctx, repo, m, r)
	}
	if d, err := e.Conn.LookupDomainByName(r.Name); err == nil {
		d.Free()
		return "", fmt.Errorf("restore: a domain named %q exists already", r.Name)
	}
	m, err := repo.Point(ctx, point)
	if err != nil {
		return "", err
	}
	dx, filter, err := e.savedDomain(m)
	if err != nil {
		return "", fmt.Errorf("restore: %w", err)
	}
	if err := os.MkdirAll(r.Dir, 0o755); err != nil {
		return "", fmt.Errorf("restore: %w", err)
	}
	var made []string
	defer func() {
		if err != nil {
			for _, p := range made {
				os.Remove(p)
			}
		}
	}()
	err = rewriteDisks(dx, m, filter, func(xd *libvirtxml.DomainDisk, dm target.DiskManifest) error {
		format := r.Format
		if format == "" {
			format = dm.Format
		}
		path, err := RestorePath(r.Dir, dm.Name, format)
		if err != nil {
			return err
		}
		if err := RestoreDisk(ctx, repo, m.ID, dm.Name, path, RestoreOptions{Format: format, Verify: r.Verify, Progress: r.Progress}); err != nil {
			return err
		}
		made = append(made, path)
		setDiskFile(xd, path, format)
		return nil
	})
	if err != nil {
		return "", err
	}
	if err := filter.report(e.log(), m.ID, r.Strict); err != nil {
		return "", fmt.Errorf("restore: %w", err)
	}
	freshIdentity(dx, r.Name, r.Dir)
	if dx.OS != nil && dx.OS.NVRam != nil {
		if id, ok := m.Blobs["nvram"]; ok {
			data, err := repo.Blob(ctx, id)
			if err != nil {
				return "", fmt.Errorf("restore: NVRAM: %w", err)
			}
			p := filepath.Join(r.Dir, r.Name+"_VARS.fd")
			if err := os.WriteFile(p, data, 0o600); err != nil {
				return "", err
			}
			made = append(made, p)
			dx.OS.NVRam.NVRam = p
		}
	}
	xml, err := dx.Marshal()
	if err != nil {
		return "", err
	}
	dom, err := e.Conn.DomainDefineXML(xml)
	if err != nil {
		return "", fmt.Errorf("restore: define %s: %w", r.Name, err)
	}
	defer dom.Free()
	uuid, _ = dom.GetUUIDString()
	e.log().Info("restored domain defined", "domain", r.Name, "from", m.ID)
	return uuid, nil
}

// savedDomain is a point's domain definition as a restore or boot may use
// it (safeDomain), with what it had to drop.
func (e *Engine) savedDomain(m *target.Manifest) (*libvirtxml.Domain, *domainFilter, error) {
	src := m.DomainXMLInactive
	if src == "" {
		src = m.DomainXML
	}
	if src == "" {
		return nil, nil, fmt.Errorf("point %s holds no domain XML", m.ID)
	}
	dirs := e.BootFileDirs
	if dirs == nil {
		dirs = DefaultBootFileDirs
	}
	dx, f, err := safeDomain(src, dirs)
	if err != nil {
		return nil, nil, fmt.Errorf("point %s: %w", m.ID, err)
	}
	return dx, f, nil
}

// freshIdentity makes a saved domain definition a new domain's: its name,
// a UUID and MAC addresses libvirt generates, serial logs in dir, and no
// NVRAM file of the original's.
func freshIdentity(dx *libvirtxml.Domain, name, dir string) {
	dx.Name, dx.UUID, dx.ID = name, "", nil
	for i := range dx.Devices.Interfaces {
		dx.Devices.Interfaces[i].MAC = nil
	}
	for i := range dx.Devices.Serials {
		if s := dx.Devices.Serials[i].Source; s != nil && s.File != nil {
			s.File.Path = filepath.Join(dir, name+".serial.log")
		}
	}
	if dx.OS != nil && dx.OS.NVRam != nil {
		dx.OS.NVRam.NVRam = ""
	}
}

// rewriteDisks applies fn to every disk of dx that the point holds, each
// rebuilt from its guest-facing parts (no source, backing chain, secrets
// or passthrough of the saved definition survive). Disks the point does
// not hold are left out; cdroms and floppies stay, empty: their media
// were host files or devices.
func rewriteDisks(dx *libvirtxml.Domain, m *target.Manifest, f *domainFilter, fn func(xd *libvirtxml.DomainDisk, dm target.DiskManifest) error) error {
	inPoint := map[string]target.DiskManifest{}
	for _, d := range m.Disks {
		inPoint[d.Name] = d
	}
	var disks []libvirtxml.DomainDisk
	for _, xd := range dx.Devices.Disks {
		if xd.Target == nil {
			f.drop("dropped a <disk> without a target")
			continue
		}
		dev := xd.Target.Dev
		target := &libvirtxml.DomainDiskTarget{Dev: dev, Bus: xd.Target.Bus}
		dm, ok := inPoint[dev]
		switch {
		case !ok && (xd.Device == "cdrom" || xd.Device == "floppy"):
			if xd.Source != nil {
				f.drop("dropped the media of %s %s: a host %s (%s)", xd.Device, dev, setField(xd.Source), diskSourcePath(xd.Source))
			}
			disks = append(disks, libvirtxml.DomainDisk{Device: xd.Device, Driver: &libvirtxml.DomainDiskDriver{Name: "qemu", Type: "raw"},
				Target: target, ReadOnly: &libvirtxml.DomainDiskReadOnly{}, Boot: xd.Boot, Address: xd.Address})
			continue
		case !ok:
			f.change("disk %s is not in the point: left out", dev)
			continue
		}
		if err := safeDiskName(dm.Name); err != nil {
			return err
		}
		nd := libvirtxml.DomainDisk{Device: "disk", Target: target, Boot: xd.Boot, Address: xd.Address, Serial: xd.Serial, WWN: xd.WWN,
			Vendor: xd.Vendor, Product: xd.Product, BlockIO: xd.BlockIO, Geometry: xd.Geometry, IOTune: xd.IOTune, Model: xd.Model}
		if xd.Driver != nil {
			drv := *xd.Driver
			drv.Name = "qemu"
			nd.Driver = &drv
		}
		if xd.Device != "" && xd.Device != "disk" {
			f.drop("disk %s: device %q restored as an ordinary disk", dev, xd.Device)
		}
		if err := fn(&nd, dm); err != nil {
			return err
		}
		disks = append(disks, nd)
	}
	dx.Devices.Disks = disks
	return nil
}

// diskSourcePath is the host path a disk source names, if any.
func diskSourcePath(s *libvirtxml.DomainDiskSource) string {
	switch {
	case s.File != nil:
		return s.File.File
	case s.Block != nil:
		return s.Block.Dev
	case s.Dir != nil:
		return s.Dir.Dir
	}
	return ""
}

// setDiskFile points a disk at an image file of the given format.
func setDiskFile(xd *libvirtxml.DomainDisk, path, format string) {
	xd.Source = &libvirtxml.DomainDiskSource{File: &libvirtxml.DomainDiskSourceFile{File: path}}
	if xd.Driver == nil {
		xd.Driver = &libvirtxml.DomainDiskDriver{Name: "qemu"}
	}
	xd.Driver.Type = format
}
