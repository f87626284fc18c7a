package main

import (
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/virtkeep/virtkeep/hostd/api"
)

func newBackupCmd(a *app) *cobra.Command {
	var r api.BackupRequest
	var freeze time.Duration
	var wait bool
	cmd := &cobra.Command{
		Use:   "backup DOMAIN [--wait]",
		Short: "Back up a domain: prints the job's ID, or with --wait the new point's ID",
		Long: `Backup queues a backup job and prints its ID at once (follow it with
virtkeep job log ID --follow); with --wait it follows the job, showing
progress on a terminal, and prints the new point's ID. Run in process
(no daemon, or --local) it always waits: the job lives in this process.
An interrupt while waiting cancels the job, which undoes what it started.`,
		Args: exactArgs(1, "DOMAIN"),
		RunE: a.withService(writes, func(cmd *cobra.Command, args []string) error {
			r.Domain = args[0]
			r.FreezeTimeoutMS = freeze.Milliseconds()
			j, err := a.svc.Backup(cmd.Context(), r)
			if err != nil {
				return err
			}
			if queued, err := a.printQueued(j, wait); queued {
				return err
			}
			res, err := a.submitted(cmd.Context(), j, nil)
			if err != nil {
				return err
			}
			for _, d := range sortedKeys(res.FullReasons) {
				a.log.Warn("disk read in full", "disk", d, "reason", res.FullReasons[d])
			}
			if res.Point == nil {
				return fmt.Errorf("backup job %s succeeded without a point", j.ID)
			}
			if a.json {
				return a.printJSON(res.Point)
			}
			fmt.Fprintln(a.out, res.Point.ID)
			return nil
		}),
	}
	f := cmd.Flags()
	f.StringVar(&r.Level, "level", "auto", "full, inc, diff or auto (full when there is no usable chain)")
	f.StringVar(&r.Target, "target", "", "target to back up into (default: the first configured)")
	f.StringVar(&r.Consistency, "consistency", "crash", "crash, fs (freeze filesystems through the guest agent) or app")
	f.BoolVar(&r.RequireConsistency, "require-consistency", false, "fail instead of falling back to crash consistency")
	f.DurationVar(&freeze, "freeze-timeout", 10*time.Second, "longest a guest stays frozen: for the freeze, then again to start the backup job (then it is thawed and the backup fails)")
	f.StringSliceVar(&r.Disks, "disk", nil, "back up only this disk (repeatable)")
	f.StringSliceVar(&r.Exclude, "exclude-disk", nil, "leave this disk out (repeatable)")
	f.BoolVar(&wait, "wait", false, "follow the job and print the new point's ID")
	return cmd
}

func newListCmd(a *app) *cobra.Command {
	var r api.ListRequest
	cmd := &cobra.Command{
		Use:   "list [DOMAIN]",
		Short: "List backup points, oldest first (from the catalog)",
		Args:  maxArgs(1, "DOMAIN"),
		RunE: a.withService(reads, func(cmd *cobra.Command, args []string) error {
			if len(args) == 1 {
				r.Domain = args[0]
			}
			ps, err := a.svc.Points(cmd.Context(), r)
			if err != nil {
				return err
			}
			if a.json {
				return a.printJSON(ps)
			}
			tw := tabwriter.NewWriter(a.out, 2, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tDOMAIN\tTARGET\tTIME\tLEVEL\tCONSISTENCY\tSIZE\tSTORED")
			for _, p := range ps {
				var size, stored int64
				for _, d := range p.Disks {
					size += d.VirtualSize
					stored += d.BytesStored
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", p.ID, p.Domain, p.Target, p.Time.Format(time.RFC3339), p.Level, p.Consistency, human(size), human(stored))
			}
			return tw.Flush()
		}),
	}
	cmd.Flags().StringVar(&r.Target, "target", "", "only this target")
	return cmd
}

func newInfoCmd(a *app) *cobra.Command {
	var r api.PointRequest
	cmd := &cobra.Command{
		Use:   "info POINT",
		Short: "Show one point (ID, DOMAIN@latest or DOMAIN@<RFC 3339 time>)",
		Args:  exactArgs(1, "POINT"),
		RunE: a.withService(reads, func(cmd *cobra.Command, args []string) error {
			r.Point = args[0]
			p, err := a.svc.Point(cmd.Context(), r)
			if err != nil {
				return err
			}
			if a.json {
				return a.printJSON(p)
			}
			fmt.Fprintf(a.out, "Point:        %s\nDomain:       %s (%s)\nTarget:       %s\nTime:         %s\nLevel:        %s\nConsistency:  %s (frozen %d ms)\nCheckpoint:   %s\nParent:       %s\n",
				p.ID, p.Domain, p.DomainUUID, p.Target, p.Time.Format(time.RFC3339Nano), p.Level, p.Consistency, p.FreezeMS, p.Checkpoint, p.Parent)
			for _, d := range p.Disks {
				fmt.Fprintf(a.out, "Disk %-6s  %s, %s, read %s, stored %s\n", d.Name+":", d.Format, human(d.VirtualSize), human(d.BytesRead), human(d.BytesStored))
			}
			return nil
		}),
	}
	cmd.Flags().StringVar(&r.Target, "target", "", "only this target")
	return cmd
}

func newVerifyCmd(a *app) *cobra.Command {
	var r api.VerifyRequest
	cmd := &cobra.Command{
		Use:   "verify (POINT | --all) [--read-data [--sample N]]",
		Short: "Check points: structure, and with --read-data every chunk's hash",
		Args:  maxArgs(1, "POINT"),
		RunE: a.withService(writes, func(cmd *cobra.Command, args []string) error {
			if r.All == (len(args) == 1) {
				return usageErr("verify needs a POINT or --all")
			}
			if len(args) == 1 {
				r.Point = args[0]
			}
			j, err := a.svc.Verify(cmd.Context(), r)
			res, err := a.submitted(cmd.Context(), j, err)
			if res != nil && r.All {
				if a.json {
					if perr := a.printJSON(res.Checks); perr != nil {
						return perr
					}
				} else {
					for _, t := range sortedKeys(res.Checks) {
						fmt.Fprintf(a.out, "target %s: %s\n", t, res.Checks[t].Summary)
					}
				}
			}
			if err != nil {
				return err
			}
			if !r.All && res.Point != nil {
				fmt.Fprintf(a.out, "point %s: ok\n", res.Point.ID)
			}
			return nil
		}),
	}
	f := cmd.Flags()
	f.StringVar(&r.Target, "target", "", "only this target")
	f.BoolVar(&r.All, "all", false, "every point of every target")
	f.BoolVar(&r.ReadData, "read-data", false, "read and re-hash every chunk")
	f.IntVar(&r.Sample, "sample", 0, "with --all --read-data: read one part in N of the chunks, another each day")
	return cmd
}
