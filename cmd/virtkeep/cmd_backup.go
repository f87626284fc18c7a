package main

import (
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/virtkeep/virtkeep/hostd/engine"
)

func newBackupCmd(a *app) *cobra.Command {
	var req engine.BackupRequest
	var targetName string
	var wait bool
	cmd := &cobra.Command{
		Use:   "backup DOMAIN",
		Short: "Back up a domain; prints the new point's ID",
		Args:  exactArgs(1, "DOMAIN"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := a.load(); err != nil {
				return err
			}
			ctx := cmd.Context()
			tc, err := a.cfg.target(targetName)
			if err != nil {
				return err
			}
			repo, err := a.openTarget(ctx, tc, true)
			if err != nil {
				return err
			}
			defer repo.Close()
			eng, done, err := a.engine()
			if err != nil {
				return err
			}
			defer done()
			req.Domain = args[0]
			req.Target = engine.Target{Name: tc.Name, Repo: repo}
			req.Progress = a.progress()
			res, err := eng.Backup(ctx, req)
			a.endProgress(req.Progress)
			if err != nil {
				return err
			}
			for _, d := range res.Disks {
				if d.FullReason != "" && res.Manifest.Level != "full" {
					a.log.Warn("disk read in full", "disk", d.Disk, "reason", d.FullReason)
				}
			}
			if a.json {
				return a.printJSON(record(res.Manifest, tc.Name))
			}
			fmt.Fprintln(a.out, res.Manifest.ID)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&req.Level, "level", "auto", "full, inc, diff or auto (full when there is no usable chain)")
	f.StringVar(&targetName, "target", "", "target to back up into (default: the first configured)")
	f.StringVar(&req.Consistency, "consistency", "crash", "crash, fs (freeze filesystems through the guest agent) or app")
	f.BoolVar(&req.RequireConsistency, "require-consistency", false, "fail instead of falling back to crash consistency")
	f.DurationVar(&req.FreezeTimeout, "freeze-timeout", 10*time.Second, "longest a guest stays frozen: for the freeze, then again to start the backup job (then it is thawed and the backup fails)")
	f.StringSliceVar(&req.Disks, "disk", nil, "back up only this disk (repeatable)")
	f.StringSliceVar(&req.Exclude, "exclude-disk", nil, "leave this disk out (repeatable)")
	f.BoolVar(&wait, "wait", true, "wait for the backup to finish (it always does until the daemon runs jobs)")
	return cmd
}

// progressPrinter shows per-disk progress on one terminal line.
func progressPrinter(w *os.File) func(engine.Progress) {
	var mu sync.Mutex
	state := map[string]engine.Progress{}
	var last time.Time
	return func(p engine.Progress) {
		mu.Lock()
		defer mu.Unlock()
		state[p.Disk] = p
		if time.Since(last) < 200*time.Millisecond && p.Done != p.Total {
			return
		}
		last = time.Now()
		line := "\r\033[K"
		for _, d := range sortedKeys(state) {
			s := state[d]
			line += fmt.Sprintf("%s %3.0f%% of %s  ", d, 100*float64(s.Done)/float64(max(s.Total, 1)), human(s.Total))
		}
		fmt.Fprint(w, line)
	}
}
