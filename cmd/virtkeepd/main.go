package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"
)

// version is set at build time (make build).
var version = "dev"

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:           "virtkeepd",
		Short:         "The virtkeep backup daemon",
		Version:       version,
		SilenceUsage:  true,
		SilenceErrors: true,
		Args:          cobra.NoArgs,
	}
	root.Flags().String("config", "/etc/virtkeep/virtkeep.yaml", "configuration file")
	root.SetVersionTemplate("virtkeepd {{.Version}}\n")
	return root
}

func main() {
	if err := newRootCmd().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "virtkeepd:", err)
		os.Exit(1)
	}
}
