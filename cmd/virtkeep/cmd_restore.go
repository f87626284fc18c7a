package main

import (
	"fmt"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/virtkeep/virtkeep/hostd/api"
)

// abs makes a path flag absolute: the daemon does not share our working
// directory.
func abs(p *string) error {
	if *p == "" {
		return nil
	}
	a, err := filepath.Abs(*p)
	if err != nil {
		return usageErr("%s: %v", *p, err)
	}
	*p = a
	return nil
}

func newRestoreCmd(a *app) *cobra.Command {
	var r api.RestoreRequest
	cmd := &cobra.Command{
		Use:   "restore POINT (--to DIR | --as NEWNAME [--to DIR] | --in-place --force)",
		Short: "Restore disks to DIR/<disk>.<format>, or a whole domain under a new name",
		Args:  exactArgs(1, "POINT"),
		RunE: a.withService(writes, func(cmd *cobra.Command, args []string) error {
			if r.Format != "" && r.Format != "raw" && r.Format != "qcow2" {
				return usageErr("--format %q: want qcow2 or raw", r.Format)
			}
			if r.To == "" && r.As == "" && !r.InPlace {
				return usageErr("restore needs --to DIR, --as NEWNAME or --in-place")
			}
			if r.As != "" && len(r.Disks) > 0 {
				return usageErr("--as restores every disk: drop --disk")
			}
			if err := abs(&r.To); err != nil {
				return err
			}
			r.Point = args[0]
			j, err := a.svc.Restore(cmd.Context(), r)
			res, err := a.submitted(cmd.Context(), j, err)
			if err != nil {
				return err
			}
			switch {
			case r.InPlace:
				fmt.Fprintf(a.out, "restored %s in place from %s\n", res.Domain, res.Point.ID)
				return nil
			case r.As != "":
				if a.json {
					return a.printJSON(map[string]string{"domain": res.Domain, "uuid": res.UUID, "dir": res.Dir, "job": j.ID})
				}
				fmt.Fprintf(a.out, "defined domain %s (%s), disks in %s\n", res.Domain, res.UUID, res.Dir)
				return nil
			}
			if a.json {
				return a.printJSON(res.Files)
			}
			for _, f := range res.Files {
				fmt.Fprintln(a.out, f)
			}
			return nil
		}),
	}
	f := cmd.Flags()
	f.StringVar(&r.Target, "target", "", "only look in this target")
	f.StringVar(&r.To, "to", "", "directory for the restored disks")
	f.StringVar(&r.As, "as", "", "define a new domain with this name")
	f.StringVar(&r.Format, "format", "", "qcow2 or raw (default: each disk's own)")
	f.StringSliceVar(&r.Disks, "disk", nil, "only this disk (repeatable)")
	f.BoolVar(&r.Force, "force", false, "overwrite existing files")
	f.BoolVar(&r.Verify, "verify", false, "re-read what was written and compare it with the point")
	f.BoolVar(&r.InPlace, "in-place", false, "write the point back over its shut-off domain's disks (needs --force)")
	f.BoolVar(&r.Strict, "strict", false, "with --as: refuse a saved definition with parts a restore drops (host devices, passthrough, ...)")
	return cmd
}

func newExportCmd(a *app) *cobra.Command {
	var r api.ExportRequest
	cmd := &cobra.Command{
		Use:   "export POINT --disk NAME --format qcow2|raw -o FILE",
		Short: "Write one disk of a point to a file (or, with --force, a block device)",
		Args:  exactArgs(1, "POINT"),
		RunE: a.withService(writes, func(cmd *cobra.Command, args []string) error {
			if r.Disk == "" || r.Output == "" || (r.Format != "raw" && r.Format != "qcow2") {
				return usageErr("export needs --disk NAME, --format qcow2|raw and -o FILE")
			}
			if err := abs(&r.Output); err != nil {
				return err
			}
			r.Point = args[0]
			j, err := a.svc.Export(cmd.Context(), r)
			if _, err := a.submitted(cmd.Context(), j, err); err != nil {
				return err
			}
			fmt.Fprintln(a.out, r.Output)
			return nil
		}),
	}
	f := cmd.Flags()
	f.StringVar(&r.Target, "target", "", "only look in this target")
	f.StringVar(&r.Disk, "disk", "", "disk to export")
	f.StringVar(&r.Format, "format", "", "qcow2 or raw")
	f.StringVarP(&r.Output, "output", "o", "", "file to write")
	f.BoolVar(&r.Force, "force", false, "overwrite an existing file, or write to a block device")
	return cmd
}
