package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/virtkeep/virtkeep/hostd/engine"
	"github.com/virtkeep/virtkeep/target"
)

// progress returns a terminal progress printer, or nil when standard error
// is no terminal or output is JSON.
func (a *app) progress() func(engine.Progress) {
	if a.json {
		return nil
	}
	if f, ok := a.errw.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		return progressPrinter(f)
	}
	return nil
}

func (a *app) endProgress(p func(engine.Progress)) {
	if p != nil {
		fmt.Fprint(a.errw, "\r\033[K")
	}
}

func newVerifyCmd(a *app) *cobra.Command {
	var targetName string
	var all, readData bool
	cmd := &cobra.Command{
		Use:   "verify (POINT | --all) [--read-data]",
		Short: "Check points: structure, and with --read-data every chunk's hash",
		Args:  maxArgs(1, "POINT"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := a.load(); err != nil {
				return err
			}
			if all == (len(args) == 1) {
				return usageErr("verify needs a POINT or --all")
			}
			ctx := cmd.Context()
			if !all {
				m, tp, err := a.resolvePoint(ctx, args[0], targetName)
				if err != nil {
					return err
				}
				for _, d := range m.Disks {
					r, err := tp.repo.OpenDisk(ctx, m.ID, d.Name)
					if err != nil {
						return fmt.Errorf("point %s: %w", m.ID, err)
					}
					if readData {
						buf := make([]byte, 8<<20)
						for off := int64(0); off < r.Size(); off += int64(len(buf)) {
							n := min(int64(len(buf)), r.Size()-off)
							if err := r.ReadAt(ctx, buf[:n], off); err != nil {
								return fmt.Errorf("point %s: %w", m.ID, err)
							}
						}
					} else if err := r.Allocated(ctx, 0, r.Size(), func(int64, int64, bool) error { return nil }); err != nil {
						return fmt.Errorf("point %s: %w", m.ID, err)
					}
				}
				fmt.Fprintf(a.out, "point %s: ok\n", m.ID)
				return nil
			}
			tps, err := a.loadPoints(ctx, targetName, false)
			if err != nil {
				return err
			}
			bad := false
			reports := map[string]*target.CheckReport{}
			for _, tp := range tps {
				rep, err := tp.repo.Check(ctx, target.CheckOptions{ReadData: readData, Quarantine: readData})
				if err != nil {
					return fmt.Errorf("target %s: %w", tp.cfg.Name, err)
				}
				reports[tp.cfg.Name] = rep
				bad = bad || !rep.OK()
				if !a.json {
					fmt.Fprintf(a.out, "target %s: %s\n", tp.cfg.Name, rep)
				}
			}
			if a.json {
				if err := a.printJSON(reports); err != nil {
					return err
				}
			}
			if bad {
				return fmt.Errorf("damage found (see above)")
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&targetName, "target", "", "only this target")
	f.BoolVar(&all, "all", false, "every point of every target")
	f.BoolVar(&readData, "read-data", false, "read and re-hash every chunk")
	return cmd
}
