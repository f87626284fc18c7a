package domain

import (
	"fmt"
	"path/filepath"
	"regexp"

	"libvirt.org/go/libvirtxml"

	"github.com/virtkeep/virtkeep/target"
)

var diskNameRe = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,64}$`)

// SafeDiskName refuses disk names that could lead a path out of a
// directory, whatever a manifest holds.
func SafeDiskName(name string) error {
	if !diskNameRe.MatchString(name) || name == "." || name == ".." {
		return fmt.Errorf("disk name %q in the point is not a safe file name", name)
	}
	return nil
}

// savedDomain is a point's domain definition as a restore or boot may use
// it (safeDomain), with what it had to drop.
// Saved is the domain definition saved in point m, rebuilt by safeDomain
// with boot files from bootDirs (DefaultBootFileDirs when nil).
func Saved(m *target.Manifest, bootDirs []string) (*libvirtxml.Domain, *Filter, error) {
	src := m.DomainXMLInactive
	if src == "" {
		src = m.DomainXML
	}
	if src == "" {
		return nil, nil, fmt.Errorf("point %s holds no domain XML", m.ID)
	}
	if bootDirs == nil {
		bootDirs = DefaultBootFileDirs
	}
	dx, f, err := safeDomain(src, bootDirs)
	if err != nil {
		return nil, nil, fmt.Errorf("point %s: %w", m.ID, err)
	}
	return dx, f, nil
}

// FreshIdentity makes a saved domain definition a new domain's: its name,
// a UUID and MAC addresses libvirt generates, serial logs in dir, and no
// NVRAM file of the original's.
func FreshIdentity(dx *libvirtxml.Domain, name, dir string) {
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

// RewriteDisks applies fn to every disk of dx that the point holds, each
// rebuilt from its guest-facing parts (no source, backing chain, secrets
// or passthrough of the saved definition survive). Disks the point does
// not hold are left out; cdroms and floppies stay, empty: their media
// were host files or devices.
func RewriteDisks(dx *libvirtxml.Domain, m *target.Manifest, f *Filter, fn func(xd *libvirtxml.DomainDisk, dm target.DiskManifest) error) error {
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
		if err := SafeDiskName(dm.Name); err != nil {
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

// SetDiskFile points a disk at an image file of the given format.
func SetDiskFile(xd *libvirtxml.DomainDisk, path, format string) {
	xd.Source = &libvirtxml.DomainDiskSource{File: &libvirtxml.DomainDiskSourceFile{File: path}}
	if xd.Driver == nil {
		xd.Driver = &libvirtxml.DomainDiskDriver{Name: "qemu"}
	}
	xd.Driver.Type = format
}
