package main

import (
	"fmt"

	"github.com/spf13/cobra"
)

func newInfoCmd(a *app) *cobra.Command {
	var targetName string
	cmd := &cobra.Command{
		Use:   "info POINT",
		Short: "Show one point (ID, DOMAIN@latest or DOMAIN@<RFC 3339 time>)",
		Args:  exactArgs(1, "POINT"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := a.load(); err != nil {
				return err
			}
			m, tp, err := a.resolvePoint(cmd.Context(), args[0], targetName)
			if err != nil {
				return err
			}
			r := record(m, tp.cfg.Name)
			if a.json {
				return a.printJSON(r)
			}
			fmt.Fprintf(a.out, "Point:        %s\nDomain:       %s (%s)\nTarget:       %s\nTime:         %s\nLevel:        %s\nConsistency:  %s (frozen %d ms)\nCheckpoint:   %s\nParent:       %s\n",
				r.ID, r.Domain, r.DomainUUID, r.Target, r.Time, r.Level, r.Consistency, r.FreezeMS, r.Checkpoint, r.Parent)
			for _, d := range r.Disks {
				fmt.Fprintf(a.out, "Disk %-6s  %s, %s, read %s, stored %s\n", d.Name+":", d.Format, human(d.VirtualSize), human(d.BytesRead), human(d.BytesStored))
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&targetName, "target", "", "only this target")
	return cmd
}
