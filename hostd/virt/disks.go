package virt

import (
	"fmt"
	"slices"

	"libvirt.org/go/libvirtxml"
)

// Disk is one disk of a domain as a backup sees it.
type Disk struct {
	Target string // vda
	Path   string // file or block device
	Format string // qcow2, raw
	Alias  string // QEMU device id (running domains)
	Kind   string // file, block
}

// Skipped is a disk a backup leaves out, and why.
type Skipped struct {
	Disk   string `json:"disk"`
	Reason string `json:"reason"`
	// Unprotected is set for a disk that holds the guest's data and is
	// left out only because virtkeep cannot read it (a network disk): the
	// operator must hear of it. Excluded, empty or read-only drives are not.
	Unprotected bool `json:"unprotected,omitempty"`
}

// SelectDisks returns the disks to back up from a domain's XML: device
// disks of type file or block; cdrom, floppy, lun, read-only and shareable
// disks are skipped, network disks with a reason the caller logs as a
// warning. include (when not empty) and exclude filter by target name.
func SelectDisks(dx *libvirtxml.Domain, include, exclude []string) ([]Disk, []Skipped, error) {
	var out []Disk
	var skipped []Skipped
	if dx.Devices == nil {
		return nil, nil, fmt.Errorf("domain %s has no devices", dx.Name)
	}
	seen := map[string]bool{}
	for _, d := range dx.Devices.Disks {
		if d.Target == nil {
			continue
		}
		name := d.Target.Dev
		seen[name] = true
		skip := func(reason string) { skipped = append(skipped, Skipped{Disk: name, Reason: reason}) }
		switch {
		case len(include) > 0 && !slices.Contains(include, name):
			skip("not included")
			continue
		case slices.Contains(exclude, name):
			skip("excluded")
			continue
		case d.Device != "" && d.Device != "disk":
			skip(d.Device + " device")
			continue
		case d.ReadOnly != nil:
			skip("read-only")
			continue
		case d.Shareable != nil:
			skip("shareable")
			continue
		case d.Source == nil:
			skip("no source (empty drive)")
			continue
		case d.Source.Network != nil:
			skipped = append(skipped, Skipped{Disk: name, Reason: "network disk: not supported yet, it is not backed up", Unprotected: true})
			continue
		}
		di := Disk{Target: name, Format: "raw"}
		if d.Driver != nil && d.Driver.Type != "" {
			di.Format = d.Driver.Type
		}
		switch {
		case d.Source.File != nil:
			di.Path, di.Kind = d.Source.File.File, "file"
		case d.Source.Block != nil:
			di.Path, di.Kind = d.Source.Block.Dev, "block"
		default:
			skip("unsupported source type")
			continue
		}
		if di.Format != "qcow2" && di.Format != "raw" {
			skip("format " + di.Format + " not supported")
			continue
		}
		if d.Alias != nil {
			di.Alias = d.Alias.Name
		}
		out = append(out, di)
	}
	for _, n := range append(append([]string(nil), include...), exclude...) {
		if !seen[n] {
			return nil, nil, fmt.Errorf("domain %s has no disk %q", dx.Name, n)
		}
	}
	if len(out) == 0 {
		return nil, skipped, fmt.Errorf("domain %s: no disk to back up (skipped: %v)", dx.Name, skipped)
	}
	return out, skipped, nil
}
