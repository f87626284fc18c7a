package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
)

// version is set at build time (make build).
var version = "dev"

// app is what every command shares: flags, configuration, output.
type app struct {
	configPath string
	json       bool
	verbose    bool
	cfg        *Config
	log        *slog.Logger
	out, errw  io.Writer
	// unreachable names the targets loadPoints had to skip.
	unreachable []string
}

func (a *app) load() error {
	cfg, err := loadConfig(a.configPath)
	if err != nil {
		return err
	}
	a.cfg = cfg
	level := slog.LevelWarn
	if a.verbose {
		level = slog.LevelInfo
	}
	a.log = slog.New(slog.NewTextHandler(a.errw, &slog.HandlerOptions{Level: level}))
	return nil
}

func (a *app) printJSON(v any) error {
	enc := json.NewEncoder(a.out)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func newRootCmd(a *app) *cobra.Command {
	root := &cobra.Command{
		Use:   "virtkeep",
		Short: "Back up and restore KVM/libvirt virtual machines",
		Long: `virtkeep takes crash- or application-consistent backups of libvirt domains into
content-addressed, deduplicated, compressed and optionally encrypted
repositories, and restores disks, domains and files.

Exit codes: 0 success, 1 failure, 2 usage or configuration error, 3 no such
domain/point/disk/target, 4 consistency not reached (--require-consistency),
5 repository locked.`,
		Version:       version,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.PersistentFlags().StringVar(&a.configPath, "config", "/etc/virtkeep/virtkeep.yaml", "configuration file")
	root.PersistentFlags().BoolVar(&a.json, "json", false, "print machine-readable JSON")
	root.PersistentFlags().BoolVarP(&a.verbose, "verbose", "v", false, "log what is done")
	root.SetVersionTemplate("virtkeep {{.Version}}\n")
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageErr("%v", err) })
	root.Args = cobra.ArbitraryArgs
	root.RunE = func(cmd *cobra.Command, args []string) error {
		if len(args) > 0 {
			return usageErr("unknown command %q (see virtkeep --help)", args[0])
		}
		return cmd.Help()
	}
	root.AddCommand(newBackupCmd(a), newListCmd(a), newInfoCmd(a), newRestoreCmd(a), newExportCmd(a),
		newServeCmd(a), newMountCmd(a), newUmountCmd(a), newBootCmd(a), newVerifyCmd(a), newKeyCmd(a))
	return root
}

// run executes the CLI and returns its exit code.
func run(ctx context.Context, args []string, out, errw io.Writer) int {
	a := &app{out: out, errw: errw}
	root := newRootCmd(a)
	root.SetArgs(args)
	root.SetOut(out)
	root.SetErr(errw)
	err := root.ExecuteContext(ctx)
	if err != nil {
		fmt.Fprintln(errw, "virtkeep:", err)
	}
	return exitCode(err)
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
