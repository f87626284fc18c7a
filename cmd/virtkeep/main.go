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
		Use:   "virtkeep",
		Short: "Back up and restore KVM/libvirt virtual machines",
		Long: `virtkeep takes crash- or application-consistent backups of libvirt domains and
plain QEMU processes into content-addressed, deduplicated, compressed and
optionally encrypted repositories, and restores disks, domains and files.`,
		Version:       version,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.PersistentFlags().String("config", "/etc/virtkeep/virtkeep.yaml", "configuration file")
	root.PersistentFlags().Bool("json", false, "print machine-readable JSON")
	root.SetVersionTemplate("virtkeep {{.Version}}\n")
	return root
}

func main() {
	if err := newRootCmd().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "virtkeep:", err)
		os.Exit(1)
	}
}
