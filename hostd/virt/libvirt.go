package virt

import (
	"errors"
	"fmt"
	"time"

	"libvirt.org/go/libvirt"
	"libvirt.org/go/libvirtxml"
)

// Lookup finds a domain by name or UUID.
func Lookup(conn *libvirt.Connect, name string) (*libvirt.Domain, error) {
	dom, err := conn.LookupDomainByName(name)
	if err == nil {
		return dom, nil
	}
	if d, uerr := conn.LookupDomainByUUIDString(name); uerr == nil {
		return d, nil
	}
	if errors.Is(err, libvirt.ERR_NO_DOMAIN) {
		return nil, fmt.Errorf("domain %q not found: %w", name, err)
	}
	return nil, fmt.Errorf("domain %q: %w", name, err)
}

// LookupUUID finds the domain with uuid: nil and no error when there is
// none (it is gone: nothing to do for it).
func LookupUUID(conn *libvirt.Connect, uuid string) (*libvirt.Domain, error) {
	dom, err := conn.LookupDomainByUUIDString(uuid)
	if errors.Is(err, libvirt.ERR_NO_DOMAIN) {
		return nil, nil
	}
	return dom, err
}

// DomainID returns the name and UUID of the domain called name (or with
// that UUID).
func DomainID(conn *libvirt.Connect, name string) (string, string, error) {
	dom, err := Lookup(conn, name)
	if err != nil {
		return "", "", err
	}
	defer dom.Free()
	n, err := dom.GetName()
	if err != nil {
		return "", "", err
	}
	u, err := dom.GetUUIDString()
	return n, u, err
}

// CheckpointXML is the definition of checkpoint name over dx's disks
// (disk devices only): a bitmap named after the checkpoint on the disks
// bitmap selects, none on the others. A zero created leaves the time to
// libvirt (a new checkpoint); a redefinition gives the original's.
func CheckpointXML(name string, created time.Time, dx *libvirtxml.Domain, bitmap func(dev string) bool) (string, error) {
	cx := libvirtxml.DomainCheckpoint{Name: name, Disks: &libvirtxml.DomainCheckpointDisks{}}
	if !created.IsZero() {
		cx.CreationTime = fmt.Sprint(created.Unix())
	}
	if dx.Devices != nil {
		for _, xd := range dx.Devices.Disks {
			if xd.Target == nil || (xd.Device != "" && xd.Device != "disk") {
				continue
			}
			d := libvirtxml.DomainCheckpointDisk{Name: xd.Target.Dev, Checkpoint: "no"}
			if bitmap(xd.Target.Dev) {
				d.Checkpoint, d.Bitmap = "bitmap", name
			}
			cx.Disks.Disks = append(cx.Disks.Disks, d)
		}
	}
	return cx.Marshal()
}
