package main

import (
	"context"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/virtkeep/virtkeep/hostd/api"
	"github.com/virtkeep/virtkeep/hostd/client"
)

// follow watches a job until it ends, with progress on a terminal. An
// interrupt (ctx) cancels the job and waits until it has undone what it
// started. It returns the final job, and an error unless it succeeded.
func (a *app) follow(ctx context.Context, j api.Job) (api.Job, error) {
	tty := a.terminal()
	wctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	go func() {
		select {
		case <-ctx.Done():
			cctx, c := context.WithTimeout(wctx, 30*time.Second)
			defer c()
			if _, err := a.svc.CancelJob(cctx, j.ID); err == nil {
				fmt.Fprintf(a.errw, "\rvirtkeep: cancelling job %s: waiting for it to undo what it started\n", j.ID)
			}
		case <-wctx.Done():
		}
	}()
	last := j
	var shown time.Time
	err := a.svc.Watch(wctx, j.ID, func(x api.Job) error {
		last = x
		if tty != nil && x.State == api.Running && x.Progress.Total > 0 && (time.Since(shown) > 200*time.Millisecond || x.Progress.Done == x.Progress.Total) {
			fmt.Fprint(tty, progressLine(x))
			shown = time.Now()
		}
		return nil
	})
	if !shown.IsZero() {
		fmt.Fprint(tty, "\r\033[K")
	}
	if err != nil {
		return last, err
	}
	return last, jobErr(last)
}

// jobErr is a job's failure as an error with its code.
func jobErr(j api.Job) error {
	if j.State == api.Succeeded {
		return nil
	}
	code := j.ErrorCode
	if code == "" {
		code = api.CodeFailed
	}
	return api.Errorf(code, "%s job %s %s: %s (virtkeep job log %s)", j.Kind, j.ID, j.State, j.Error, j.ID)
}

// printQueued prints a job the command leaves to the daemon (no --wait):
// its ID, or its record with --json. It reports whether it did; in
// process the job lives in this CLI, which must follow it.
func (a *app) printQueued(j api.Job, wait bool) (bool, error) {
	if wait || a.inproc != nil {
		return false, nil
	}
	if a.json {
		return true, a.printJSON(j)
	}
	fmt.Fprintln(a.out, j.ID)
	return true, nil
}

// submitted follows a job the service took and returns its result.
func (a *app) submitted(ctx context.Context, j api.Job, err error) (*api.JobResult, error) {
	if err != nil {
		return nil, err
	}
	j, err = a.follow(ctx, j)
	if err != nil {
		return j.Result, err
	}
	if j.Result == nil {
		j.Result = &api.JobResult{}
	}
	return j.Result, nil
}

func newJobsCmd(a *app) *cobra.Command {
	var r api.JobsRequest
	var since string
	cmd := &cobra.Command{
		Use:   "jobs [--all] [--domain NAME] [--since TIME|DURATION]",
		Short: "List jobs: queued and running ones, and those ended in the last day",
		Args:  cobra.NoArgs,
		RunE: a.withService(reads, func(cmd *cobra.Command, _ []string) error {
			if since != "" {
				t, err := parseSince(since, time.Now())
				if err != nil {
					return err
				}
				r.Since = t
			}
			js, err := a.svc.Jobs(cmd.Context(), r)
			if err != nil {
				return err
			}
			if a.json {
				return a.printJSON(js)
			}
			tw := tabwriter.NewWriter(a.out, 2, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tKIND\tDOMAIN\tTARGET\tSTATE\tPROGRESS\tCREATED\tERROR")
			for _, j := range js {
				prog := "-"
				if j.Progress.Total > 0 {
					prog = fmt.Sprintf("%.0f%%", 100*float64(j.Progress.Done)/float64(j.Progress.Total))
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", j.ID, j.Kind, dash(j.Domain), dash(j.Target), j.State, prog,
					j.Created.Format(time.RFC3339), oneLine(j.Error, 60))
			}
			return tw.Flush()
		}),
	}
	cmd.Flags().BoolVar(&r.All, "all", false, "every job the catalog keeps")
	cmd.Flags().StringVar(&r.Domain, "domain", "", "only this domain's jobs")
	cmd.Flags().StringVar(&since, "since", "", "only the jobs created after this RFC 3339 time, or this long ago (2h)")
	return cmd
}

// parseSince reads --since: an RFC 3339 time, or a duration back from now.
func parseSince(s string, now time.Time) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, nil
	}
	if d, err := time.ParseDuration(s); err == nil && d >= 0 {
		return now.Add(-d), nil
	}
	return time.Time{}, usageErr("--since %q: want an RFC 3339 time (2026-12-07T02:00:00Z) or a duration (2h)", s)
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func oneLine(s string, n int) string {
	s = strings.ReplaceAll(s, "\n", " ")
	if len(s) > n {
		return s[:n-1] + "…"
	}
	return s
}

func newJobCmd(a *app) *cobra.Command {
	cmd := &cobra.Command{Use: "job", Short: "Show, follow and cancel one job"}
	info := &cobra.Command{
		Use:   "info ID",
		Short: "Show a job: state, progress, result, error",
		Args:  exactArgs(1, "ID"),
		RunE: a.withService(reads, func(cmd *cobra.Command, args []string) error {
			j, err := a.svc.Job(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if a.json {
				return a.printJSON(j)
			}
			printJob(a, j)
			return nil
		}),
	}
	var follow bool
	logCmd := &cobra.Command{
		Use:   "log ID [--follow]",
		Short: "Print a job's log lines; --follow waits for more until it ends",
		Args:  exactArgs(1, "ID"),
		RunE: a.withService(reads, func(cmd *cobra.Command, args []string) error {
			return a.svc.Log(cmd.Context(), args[0], follow, func(l api.LogLine) error {
				if a.json {
					return a.printJSON(l)
				}
				fmt.Fprintf(a.out, "%s %-5s %s", l.Time.Format(time.RFC3339), l.Level, l.Message)
				for _, k := range sortedKeys(l.Attrs) {
					fmt.Fprintf(a.out, " %s=%q", k, l.Attrs[k])
				}
				fmt.Fprintln(a.out)
				return nil
			})
		}),
	}
	logCmd.Flags().BoolVarP(&follow, "follow", "f", false, "wait for more lines until the job ends")
	cancel := &cobra.Command{
		Use:   "cancel ID",
		Short: "Cancel a job; it undoes what it started (thaw, libvirt job, checkpoint, scratch)",
		Args:  exactArgs(1, "ID"),
		RunE: a.withService(writes, func(cmd *cobra.Command, args []string) error {
			j, err := a.svc.CancelJob(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if a.json {
				return a.printJSON(j)
			}
			fmt.Fprintf(a.out, "job %s: cancel requested (%s)\n", j.ID, j.State)
			return nil
		}),
	}
	cmd.AddCommand(info, logCmd, cancel)
	return cmd
}

func printJob(a *app, j api.Job) {
	fmt.Fprintf(a.out, "Job:       %s\nKind:      %s\nDomain:    %s\nTarget:    %s\nState:     %s\nCreated:   %s\n",
		j.ID, j.Kind, dash(j.Domain), dash(j.Target), j.State, j.Created.Format(time.RFC3339))
	if !j.Started.IsZero() {
		fmt.Fprintf(a.out, "Started:   %s\n", j.Started.Format(time.RFC3339))
	}
	if !j.Ended.IsZero() {
		fmt.Fprintf(a.out, "Ended:     %s (%s)\n", j.Ended.Format(time.RFC3339), j.Ended.Sub(j.Started).Round(time.Millisecond))
	}
	if p := j.Progress; p.Total > 0 {
		fmt.Fprintf(a.out, "Progress:  %s of %s, %s/s\n", human(p.Done), human(p.Total), human(int64(p.Rate)))
	}
	if r := j.Result; r != nil && r.Point != nil {
		fmt.Fprintf(a.out, "Point:     %s\n", r.Point.ID)
	}
	if j.Error != "" {
		fmt.Fprintf(a.out, "Error:     %s (%s)\n", j.Error, j.ErrorCode)
	}
}

func newCatalogCmd(a *app) *cobra.Command {
	cmd := &cobra.Command{Use: "catalog", Short: "The host's catalog of points (a cache of the targets)"}
	var targetName string
	rebuild := &cobra.Command{
		Use:   "rebuild [--target NAME]",
		Short: "Recreate the catalog's points from the targets' repositories",
		Args:  cobra.NoArgs,
		RunE: a.withService(writes, func(cmd *cobra.Command, _ []string) error {
			j, err := a.svc.RebuildCatalog(cmd.Context(), api.RebuildRequest{Target: targetName})
			res, err := a.submitted(cmd.Context(), j, err)
			if err != nil {
				return err
			}
			if a.json {
				return a.printJSON(res.Points)
			}
			for _, t := range sortedKeys(res.Points) {
				fmt.Fprintf(a.out, "target %s: %d points\n", t, res.Points[t])
			}
			return nil
		}),
	}
	rebuild.Flags().StringVar(&targetName, "target", "", "only this target")
	cmd.AddCommand(rebuild)
	return cmd
}

func newVersionCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the client's version, and the daemon's when it runs",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			out := map[string]any{"client": version}
			if err := a.load(); err == nil && !a.local {
				if c, err := client.Dial(cmd.Context(), a.cfg.Socket); err == nil {
					if v, err := c.Version(cmd.Context()); err == nil {
						out["daemon"] = v
					} else {
						out["daemon_error"] = err.Error()
					}
				}
			}
			if a.json {
				return a.printJSON(out)
			}
			fmt.Fprintf(a.out, "virtkeep %s\n", version)
			if v, ok := out["daemon"].(api.VersionInfo); ok {
				fmt.Fprintf(a.out, "virtkeepd %s (API %s, pid %d)\n", v.Version, v.API, v.PID)
			} else if e, ok := out["daemon_error"]; ok {
				fmt.Fprintf(a.out, "virtkeepd: %s\n", e)
			} else {
				fmt.Fprintln(a.out, "virtkeepd: not running")
			}
			return nil
		},
	}
}
