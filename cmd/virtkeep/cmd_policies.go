package main

import (
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/virtkeep/virtkeep/hostd/api"
)

func newPoliciesCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "policies",
		Short: "List the policies: their domains, next run and last result",
		Args:  cobra.NoArgs,
		RunE: a.withService(reads, func(cmd *cobra.Command, _ []string) error {
			ps, err := a.svc.Policies(cmd.Context())
			if err != nil {
				return err
			}
			if a.json {
				return a.printJSON(ps)
			}
			tw := tabwriter.NewWriter(a.out, 2, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "POLICY\tDOMAINS\tSCHEDULE\tLEVEL\tTARGETS\tNEXT\tLAST")
			for _, p := range ps {
				targets := strings.Join(p.Targets, ",")
				if len(p.CopyTo) > 0 {
					targets += " -> " + strings.Join(p.CopyTo, ",")
				}
				level := p.Level
				if p.Full != "never" {
					level += ", full " + p.Full
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", p.Name, orNone(strings.Join(p.Domains, ",")), strings.Join(p.Schedules, "; "),
					level, targets, when(p.Next), lastRun(p.Last))
			}
			if err := tw.Flush(); err != nil {
				return err
			}
			for _, p := range ps {
				for _, pr := range p.Problems {
					fmt.Fprintf(a.out, "policy %s: %s\n", p.Name, pr)
				}
			}
			return nil
		}),
	}
}

func orNone(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func when(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.Local().Format("2006-01-02 15:04")
}

func lastRun(j *api.Job) string {
	if j == nil {
		return "never"
	}
	s := string(j.State)
	if !j.Ended.IsZero() {
		s += " " + when(j.Ended)
	}
	return s
}

func newRunCmd(a *app) *cobra.Command {
	var r api.RunRequest
	var wait bool
	cmd := &cobra.Command{
		Use:   "run POLICY [DOMAIN] [--wait]",
		Short: "Run a policy now: back up its domains (or one), copy, prune",
		Long: `Run starts a policy's run now, as its schedule would: each of its domains
(or only DOMAIN) is backed up into its targets at the level its plan
gives, the points are copied to its copy_to targets, and its targets are
pruned per its retention. It prints the run's job ID; with --wait it
follows the run and prints each domain's outcome.`,
		Args: rangeArgs(1, 2, "POLICY [DOMAIN]"),
		RunE: a.withService(writes, func(cmd *cobra.Command, args []string) error {
			r.Policy = args[0]
			if len(args) == 2 {
				r.Domain = args[1]
			}
			j, err := a.svc.RunPolicy(cmd.Context(), r)
			if err != nil {
				return err
			}
			if queued, err := a.printQueued(j, wait); queued {
				return err
			}
			res, err := a.submitted(cmd.Context(), j, nil)
			if res != nil && res.Run != nil {
				if a.json {
					if perr := a.printJSON(res.Run); perr != nil {
						return perr
					}
				} else {
					for _, d := range sortedKeys(res.Run.Domains) {
						fmt.Fprintf(a.out, "%s: %s\n", d, res.Run.Domains[d])
					}
				}
			}
			return err
		}),
	}
	cmd.Flags().BoolVar(&wait, "wait", false, "follow the run and print each domain's outcome")
	return cmd
}

func newPruneCmd(a *app) *cobra.Command {
	var r api.PruneRequest
	cmd := &cobra.Command{
		Use:   "prune [--target NAME] [--domain NAME] [--host NAME]... [--dry-run]",
		Short: "Remove the points no retention rule keeps (--dry-run: say which would go, and why the rest stay)",
		Long: `Prune applies each domain's policy's retention for each target: a point is
kept when any rule keeps it (last, hourly, daily, weekly, monthly, yearly,
within), when it is protected, or when the domain's next backup builds on
it (chain base). Domains no policy has retention for keep every point.
Points are grouped by domain UUID, so two hosts' VMs of one name are two
domains. A host prunes only the points it wrote: --host names other hosts
whose points to prune as well (--host '*': every host's).
--dry-run removes nothing and prints every decision with its reasons.
The space is reclaimed by the target's next GC (virtkeep gc).`,
		Args: cobra.NoArgs,
		RunE: a.withService(writes, func(cmd *cobra.Command, _ []string) error {
			j, err := a.svc.Prune(cmd.Context(), r)
			res, err := a.submitted(cmd.Context(), j, err)
			if res == nil {
				return err
			}
			if a.json {
				if perr := a.printJSON(res.Decisions); perr != nil {
					return perr
				}
				return err
			}
			tw := tabwriter.NewWriter(a.out, 2, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "TARGET\tPOINT\tDOMAIN\tTIME\tDECISION\tWHY")
			for _, d := range res.Decisions {
				what := "keep"
				switch {
				case !d.Keep && r.DryRun:
					what = "would remove"
				case !d.Keep:
					what = "removed"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", d.Target, d.Point, d.Domain, d.Time.Format(time.RFC3339), what, strings.Join(d.Reasons, ", "))
			}
			if ferr := tw.Flush(); ferr != nil {
				return ferr
			}
			return err
		}),
	}
	f := cmd.Flags()
	f.StringVar(&r.Target, "target", "", "only this target")
	f.StringVar(&r.Domain, "domain", "", "only this domain")
	f.StringArrayVar(&r.Hosts, "host", nil, "prune the points these hosts wrote too ('*': every host's); default: only this host's")
	f.BoolVar(&r.DryRun, "dry-run", false, "remove nothing: print what would go and why the rest stays")
	return cmd
}

func newProtectCmd(a *app, off bool) *cobra.Command {
	var r api.ProtectRequest
	use, short := "protect POINT", "Protect a point: prune never removes it"
	if off {
		use, short = "unprotect POINT", "Let prune remove a point again"
	}
	cmd := &cobra.Command{
		Use:   use,
		Short: short,
		Args:  exactArgs(1, "POINT"),
		RunE: a.withService(writes, func(cmd *cobra.Command, args []string) error {
			r.Point, r.Off = args[0], off
			return a.svc.Protect(cmd.Context(), r)
		}),
	}
	cmd.Flags().StringVar(&r.Target, "target", "", "the point's target")
	return cmd
}

func newCopyCmd(a *app) *cobra.Command {
	var r api.CopyRequest
	cmd := &cobra.Command{
		Use:   "copy POINT... --to TARGET [--from TARGET]",
		Short: "Copy points to another target, keeping their identity (only what it lacks moves)",
		Long: `Copy copies points into another target: the copy keeps the point's ID,
time, domain and chain, so it restores and lists like the original.
Only the chunks the destination lacks are stored; a copy between
repositories with different keys is re-encrypted. An interrupted copy
moves only the rest when it runs again. The copy is checked in the
destination before the job succeeds.`,
		Args: minArgs(1, "POINT..."),
		RunE: a.withService(writes, func(cmd *cobra.Command, args []string) error {
			r.Points = args
			j, err := a.svc.Copy(cmd.Context(), r)
			res, err := a.submitted(cmd.Context(), j, err)
			if err != nil {
				return err
			}
			if a.json {
				return a.printJSON(res.Copies)
			}
			for _, c := range res.Copies {
				if c.Existed {
					fmt.Fprintf(a.out, "%s: in %s already\n", c.Point, c.To)
					continue
				}
				fmt.Fprintf(a.out, "%s: copied to %s, %d of %d chunks stored (%s)\n", c.Point, c.To, c.ChunksNew, c.Chunks, human(c.BytesStored))
			}
			return nil
		}),
	}
	f := cmd.Flags()
	f.StringVar(&r.To, "to", "", "destination target")
	f.StringVar(&r.From, "from", "", "source target (default: where the point is found)")
	return cmd
}

func newGCCmd(a *app) *cobra.Command {
	var r api.GCRequest
	cmd := &cobra.Command{
		Use:   "gc [--target NAME] [--dry-run]",
		Short: "Reclaim the space of objects no point uses (pruned points' data)",
		Args:  cobra.NoArgs,
		RunE: a.withService(writes, func(cmd *cobra.Command, _ []string) error {
			j, err := a.svc.GC(cmd.Context(), r)
			res, err := a.submitted(cmd.Context(), j, err)
			if err != nil {
				return err
			}
			if a.json {
				return a.printJSON(res.GC)
			}
			for _, t := range sortedKeys(res.GC) {
				g := res.GC[t]
				fmt.Fprintf(a.out, "target %s: %d objects, %s freed (%d packs repacked); %s kept\n", t, g.Deleted, human(g.BytesFreed), g.Repacked, human(g.BytesKept))
			}
			return nil
		}),
	}
	cmd.Flags().StringVar(&r.Target, "target", "", "only this target")
	cmd.Flags().BoolVar(&r.DryRun, "dry-run", false, "remove nothing: say what would go")
	return cmd
}
