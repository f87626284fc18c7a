package vm

import (
	"fmt"
	"html"
	"os"
	"path/filepath"
	"strings"
	"time"

	"libvirt.org/go/libvirt"
)

// PullExport starts a libvirt pull-mode backup job of every disk of the
// running domain, as a full backup does, and returns the NBD URI of each
// disk's export by target name. stop ends the job and drops its scratch
// files; benchmarks read the exports for the floor a backup can reach.
func (d *Domain) PullExport() (uris map[string]string, stop func(), err error) {
	dir, err := os.MkdirTemp(d.Dir, "pull-")
	if err != nil {
		return nil, nil, err
	}
	_ = os.Chmod(dir, 0o777)
	sock := filepath.Join(dir, "nbd.sock")
	var b strings.Builder
	fmt.Fprintf(&b, "<domainbackup mode='pull'><server transport='unix' socket='%s'/><disks>", html.EscapeString(sock))
	uris = map[string]string{}
	for _, disk := range d.Disks {
		fmt.Fprintf(&b, "<disk name='%s' backup='yes' type='file'><scratch file='%s'/></disk>", disk.Target, html.EscapeString(filepath.Join(dir, disk.Target+".scratch")))
		uris[disk.Target] = fmt.Sprintf("nbd+unix:///%s?socket=%s", disk.Target, sock)
	}
	b.WriteString("</disks></domainbackup>")
	if err := d.Dom.BackupBegin(b.String(), "", 0); err != nil {
		os.RemoveAll(dir)
		return nil, nil, fmt.Errorf("testenv: domain %s: backup-begin: %w", d.Name, err)
	}
	return uris, func() {
		_ = d.Dom.AbortJob()
		// The job ends after the abort returns: wait, so the next backup
		// does not find it.
		for range 100 {
			if ji, err := d.Dom.GetJobInfo(); err != nil || ji.Type == libvirt.DOMAIN_JOB_NONE {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		os.RemoveAll(dir)
	}, nil
}
