package restore

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"libvirt.org/go/libvirt"

	"libvirt.org/go/libvirtxml"

	"github.com/virtkeep/virtkeep/hostd/domain"
	"github.com/virtkeep/virtkeep/hostd/statedir"
	"github.com/virtkeep/virtkeep/hostd/virt"
	"github.com/virtkeep/virtkeep/target"
)

// DomainRequest asks for a point to come back as a new libvirt domain.
type DomainRequest struct {
	Name     string // the new domain's name; it must not exist (see InPlace)
	Dir      string // where the disks go (DIR/<disk>.<format>)
	Format   string // raw or qcow2 (default: each disk's own)
	Verify   bool
	Progress Progress
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
func (e *Restorer) inPlace(ctx context.Context, repo *target.Repository, m *target.Manifest, r DomainRequest) (string, error) {
	if !r.Force {
		return "", fmt.Errorf("restore in place overwrites the disks of %s: %w", r.Name, ErrExists)
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
	disks, _, err := virt.SelectDisks(&dx, nil, nil)
	if err != nil {
		return "", err
	}
	for _, dm := range m.Disks {
		var cur *virt.Disk
		for i := range disks {
			if disks[i].Target == dm.Name {
				cur = &disks[i]
			}
		}
		if cur == nil {
			return "", fmt.Errorf("restore in place: domain %s has no disk %s now", r.Name, dm.Name)
		}
		if err := Disk(ctx, repo, m.ID, dm.Name, cur.Path, Options{Format: cur.Format, Force: true, Verify: r.Verify, Progress: r.Progress}); err != nil {
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
func (e *Restorer) Domain(ctx context.Context, repo *target.Repository, point string, r DomainRequest) (uuid string, err error) {
	if r.Name == "" {
		return "", errors.New("restore: no name for the new domain")
	}
	if r.InPlace {
		m, err := repo.Point(ctx, point)
		if err != nil {
			return "", err
		}
		return e.inPlace(ctx, repo, m, r)
	}
	if d, err := e.Conn.LookupDomainByName(r.Name); err == nil {
		d.Free()
		return "", fmt.Errorf("restore: a domain named %q exists already", r.Name)
	}
	m, err := repo.Point(ctx, point)
	if err != nil {
		return "", err
	}
	dx, filter, err := domain.Saved(m, e.BootFileDirs)
	if err != nil {
		return "", fmt.Errorf("restore: %w", err)
	}
	if err := statedir.MkdirTrusted(r.Dir); err != nil {
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
	err = domain.RewriteDisks(dx, m, filter, func(xd *libvirtxml.DomainDisk, dm target.DiskManifest) error {
		format := r.Format
		if format == "" {
			format = dm.Format
		}
		path, err := Path(r.Dir, dm.Name, format)
		if err != nil {
			return err
		}
		if err := Disk(ctx, repo, m.ID, dm.Name, path, Options{Format: format, Verify: r.Verify, Progress: r.Progress}); err != nil {
			return err
		}
		made = append(made, path)
		domain.SetDiskFile(xd, path, format)
		return nil
	})
	if err != nil {
		return "", err
	}
	if err := filter.Report(e.log(), m.ID, r.Strict); err != nil {
		return "", fmt.Errorf("restore: %w", err)
	}
	domain.FreshIdentity(dx, r.Name, r.Dir)
	if dx.OS != nil && dx.OS.NVRam != nil {
		if id, ok := m.Blobs["nvram"]; ok {
			data, err := repo.Blob(ctx, id)
			if err != nil {
				return "", fmt.Errorf("restore: NVRAM: %w", err)
			}
			p := filepath.Join(r.Dir, r.Name+"_VARS.fd")
			if err := statedir.CreateFile(p, data, 0o600); err != nil {
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
