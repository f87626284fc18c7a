package main

import (
	"fmt"
	"sort"
	"text/tabwriter"

	"github.com/spf13/cobra"
)

func newListCmd(a *app) *cobra.Command {
	var targetName string
	cmd := &cobra.Command{
		Use:   "list [DOMAIN]",
		Short: "List backup points, oldest first",
		Args:  maxArgs(1, "DOMAIN"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := a.load(); err != nil {
				return err
			}
			tps, err := a.loadPoints(cmd.Context(), targetName, true)
			if err != nil {
				return err
			}
			recs := []pointRecord{}
			for _, tp := range tps {
				for _, m := range tp.points {
					if len(args) == 1 && m.Domain != args[0] && m.DomainUUID != args[0] {
						continue
					}
					recs = append(recs, record(m, tp.cfg.Name))
				}
			}
			sortRecords(recs)
			if a.json {
				return a.printJSON(recs)
			}
			tw := tabwriter.NewWriter(a.out, 2, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tDOMAIN\tTARGET\tTIME\tLEVEL\tCONSISTENCY\tSIZE\tSTORED")
			for _, r := range recs {
				var size, stored int64
				for _, d := range r.Disks {
					size += d.VirtualSize
					stored += d.BytesStored
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.ID, r.Domain, r.Target, r.Time[:19]+"Z", r.Level, r.Consistency, human(size), human(stored))
			}
			return tw.Flush()
		},
	}
	cmd.Flags().StringVar(&targetName, "target", "", "only this target")
	return cmd
}

func human(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
