package main

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"

	"github.com/spf13/cobra"
	"libvirt.org/go/libvirt"

	"github.com/virtkeep/virtkeep/hostd/engine"
)

func (a *app) engine() (*engine.Engine, func(), error) {
	conn, err := libvirt.NewConnect(a.cfg.LibvirtURI)
	if err != nil {
		return nil, nil, fmt.Errorf("libvirt %s: %w", a.cfg.LibvirtURI, err)
	}
	e := &engine.Engine{Conn: conn, StateDir: a.cfg.StateDir, Log: a.log, BootFileDirs: a.cfg.bootFileDirs()}
	// The engine makes state_dir (0711) and checks that root owns it.
	if _, err := e.RunDir(); err != nil {
		conn.Close()
		return nil, nil, err
	}
	return e, func() { conn.Close() }, nil
}

// serveArgv is how engine.Mount and engine.Boot start this binary as the
// NBD server of a point (the socket path follows).
func (a *app) serveArgv(point string, disk string) ([]string, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cfg, err := filepath.Abs(a.configPath)
	if err != nil {
		return nil, err
	}
	argv := []string{exe, "--config", cfg, "serve", point}
	if disk != "" {
		argv = append(argv, "--disk", disk)
	}
	return append(argv, "--socket"), nil
}

func newRestoreCmd(a *app) *cobra.Command {
	var targetName, to, as, format string
	var disks []string
	var force, verify, inPlace, strict bool
	cmd := &cobra.Command{
		Use:   "restore POINT (--to DIR | --as NEWNAME [--to DIR] | --in-place --force)",
		Short: "Restore disks to DIR/<disk>.<format>, or a whole domain under a new name",
		Args:  exactArgs(1, "POINT"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := a.load(); err != nil {
				return err
			}
			if format != "" && format != "raw" && format != "qcow2" {
				return usageErr("--format %q: want qcow2 or raw", format)
			}
			if to == "" && as == "" && !inPlace {
				return usageErr("restore needs --to DIR, --as NEWNAME or --in-place")
			}
			ctx := cmd.Context()
			m, tp, err := a.resolvePoint(ctx, args[0], targetName)
			if err != nil {
				return err
			}
			progress := a.progress()
			if inPlace {
				e, done, err := a.engine()
				if err != nil {
					return err
				}
				defer done()
				_, err = e.RestoreDomain(ctx, tp.repo, m.ID, engine.DomainRestore{Name: m.Domain, InPlace: true, Force: force, Verify: verify, Progress: progress})
				a.endProgress(progress)
				if err != nil {
					return err
				}
				fmt.Fprintf(a.out, "restored %s in place from %s\n", m.Domain, m.ID)
				return nil
			}
			if as != "" {
				if len(disks) > 0 {
					return usageErr("--as restores every disk: drop --disk")
				}
				if to == "" {
					to = filepath.Join(a.cfg.StateDir, "images", as)
				}
				e, done, err := a.engine()
				if err != nil {
					return err
				}
				defer done()
				uuid, err := e.RestoreDomain(ctx, tp.repo, m.ID, engine.DomainRestore{Name: as, Dir: to, Format: format, Verify: verify, Progress: progress, Strict: strict})
				a.endProgress(progress)
				if err != nil {
					return err
				}
				if a.json {
					return a.printJSON(map[string]string{"domain": as, "uuid": uuid, "dir": to, "point": m.ID})
				}
				fmt.Fprintf(a.out, "defined domain %s (%s), disks in %s\n", as, uuid, to)
				return nil
			}
			if err := os.MkdirAll(to, 0o755); err != nil {
				return err
			}
			for _, n := range disks {
				if _, err := m.Disk(n); err != nil {
					return notFoundErr("%v", err)
				}
			}
			// Disks are restored two at a time.
			var written []string
			type job struct{ disk, dst, format string }
			var jobs []job
			for _, d := range m.Disks {
				if len(disks) > 0 && !slices.Contains(disks, d.Name) {
					continue
				}
				f := format
				if f == "" {
					f = d.Format
				}
				dst, err := engine.RestorePath(to, d.Name, f)
				if err != nil {
					return err
				}
				jobs = append(jobs, job{d.Name, dst, f})
				written = append(written, dst)
			}
			errs := make(chan error, len(jobs))
			sem := make(chan struct{}, 2)
			for _, j := range jobs {
				go func() {
					sem <- struct{}{}
					defer func() { <-sem }()
					errs <- engine.RestoreDisk(ctx, tp.repo, m.ID, j.disk, j.dst, engine.RestoreOptions{Format: j.format, Force: force, Verify: verify, Progress: progress})
				}()
			}
			var first error
			for range jobs {
				if err := <-errs; err != nil && first == nil {
					first = err
				}
			}
			a.endProgress(progress)
			if first != nil {
				return first
			}
			if a.json {
				return a.printJSON(written)
			}
			for _, w := range written {
				fmt.Fprintln(a.out, w)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&targetName, "target", "", "only look in this target")
	f.StringVar(&to, "to", "", "directory for the restored disks")
	f.StringVar(&as, "as", "", "define a new domain with this name")
	f.StringVar(&format, "format", "", "qcow2 or raw (default: each disk's own)")
	f.StringSliceVar(&disks, "disk", nil, "only this disk (repeatable)")
	f.BoolVar(&force, "force", false, "overwrite existing files")
	f.BoolVar(&verify, "verify", false, "re-read what was written and compare it with the point")
	f.BoolVar(&inPlace, "in-place", false, "write the point back over its shut-off domain's disks (needs --force)")
	f.BoolVar(&strict, "strict", false, "with --as: refuse a saved definition with parts a restore drops (host devices, passthrough, ...)")
	return cmd
}

func newExportCmd(a *app) *cobra.Command {
	var targetName, disk, format, out string
	var force bool
	cmd := &cobra.Command{
		Use:   "export POINT --disk NAME --format qcow2|raw -o FILE",
		Short: "Write one disk of a point to a file (or, with --force, a block device)",
		Args:  exactArgs(1, "POINT"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := a.load(); err != nil {
				return err
			}
			if disk == "" || out == "" || (format != "raw" && format != "qcow2") {
				return usageErr("export needs --disk NAME, --format qcow2|raw and -o FILE")
			}
			m, tp, err := a.resolvePoint(cmd.Context(), args[0], targetName)
			if err != nil {
				return err
			}
			p := a.progress()
			err = engine.RestoreDisk(cmd.Context(), tp.repo, m.ID, disk, out, engine.RestoreOptions{Format: format, Force: force, Progress: p})
			a.endProgress(p)
			if err != nil {
				return err
			}
			fmt.Fprintln(a.out, out)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&targetName, "target", "", "only look in this target")
	f.StringVar(&disk, "disk", "", "disk to export")
	f.StringVar(&format, "format", "", "qcow2 or raw")
	f.StringVarP(&out, "output", "o", "", "file to write")
	f.BoolVar(&force, "force", false, "overwrite an existing file, or write to a block device")
	return cmd
}
