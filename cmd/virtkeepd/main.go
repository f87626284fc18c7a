package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/virtkeep/virtkeep/cmd/internal/config"
	"github.com/virtkeep/virtkeep/cmd/internal/mandoc"
	"github.com/virtkeep/virtkeep/hostd/daemon"
	"github.com/virtkeep/virtkeep/systemd"
)

// version is set at build time (make build).
var version = "dev"

func newRootCmd(out, errw io.Writer) *cobra.Command {
	var configPath string
	var cleanup, check, verbose bool
	root := &cobra.Command{
		Use:   "virtkeepd",
		Short: "The virtkeep backup daemon",
		Long: `virtkeepd runs beside libvirtd (under systemd: Type=notify, see
systemd/virtkeepd.service) and owns the host's backup state: the catalog
(state_dir/catalog.db), the jobs, and the mounts, NBD servers and booted
domains made through it. The virtkeep CLI talks to it on its unix socket
(socket:, default /run/virtkeep/virtkeepd.sock; root and the socket_group
only; docs/API.md).

At every start it first repairs what an interrupted run left: jobs that
were running are marked failed and their libvirt backup jobs ended, guests
left frozen are thawed, and mounts and sessions are undone. Then it
reports READY=1 and serves until SIGTERM, when it stops taking jobs,
cancels the running ones (each undoes what it started) within
shutdown_timeout, and exits. With --cleanup it only does the repairs.

It runs the policies: (docs/CLI.md) on their schedules, and each target's
garbage collection and verification on theirs. SIGHUP reloads the
configuration file; an invalid one is logged and the running one stays.
--check-config prints every error in the file, each with its key and line.`,
		Version:       version,
		SilenceUsage:  true,
		SilenceErrors: true,
		Args:          cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			explicit := cmd.Flags().Changed("config")
			cfg, err := config.Load(configPath, explicit)
			if err != nil {
				return err
			}
			if check {
				fmt.Fprintf(out, "%s: ok (%d targets, %d policies)\n", configPath, len(cfg.Targets), len(cfg.Policies))
				return nil
			}
			level := slog.LevelInfo
			if verbose {
				level = slog.LevelDebug
			}
			log := newLogger(errw, level)
			if cfg.ZeroConfig {
				log.Info("no configuration file: using a local target and qemu:///system", "config", configPath, "target", config.ZeroTarget().Path)
			}
			dc := cfg.Daemon(version, log)
			dc.Reload = func() (daemon.Config, error) {
				nc, err := config.Load(configPath, explicit)
				if err != nil {
					return daemon.Config{}, err
				}
				return nc.Daemon(version, log), nil
			}
			if cleanup {
				if err := daemon.Cleanup(cmd.Context(), dc); err != nil {
					return err
				}
				fmt.Fprintln(out, "cleanup done")
				return nil
			}
			return daemon.Run(cmd.Context(), dc)
		},
	}
	root.Flags().StringVar(&configPath, "config", config.DefaultPath, "configuration file")
	root.Flags().BoolVar(&cleanup, "cleanup", false, "only repair what an interrupted run left (jobs, frozen guests, mounts, sessions), then exit")
	root.Flags().BoolVar(&check, "check-config", false, "check the configuration file and exit")
	root.Flags().BoolVarP(&verbose, "verbose", "v", false, "log API requests and debug lines")
	root.SetVersionTemplate("virtkeepd {{.Version}}\n")
	root.AddCommand(mandoc.Command(root, "8"))
	root.SetOut(out)
	root.SetErr(errw)
	return root
}

// newLogger logs to journald with structured fields when standard error is
// the journal (under systemd), and as text otherwise.
func newLogger(errw io.Writer, level slog.Level) *slog.Logger {
	if systemd.UnderJournal() {
		if h, err := systemd.NewJournalHandler(systemd.JournalSocket, "virtkeepd", level); err == nil {
			return slog.New(h)
		}
	}
	return slog.New(slog.NewTextHandler(errw, &slog.HandlerOptions{Level: level}))
}

// run executes the daemon and returns its exit code: 0, 1 on failure, 2
// for a configuration error.
func run(ctx context.Context, args []string, out, errw io.Writer) int {
	root := newRootCmd(out, errw)
	root.SetArgs(args)
	if err := root.ExecuteContext(ctx); err != nil {
		fmt.Fprintln(errw, "virtkeepd:", err)
		if errors.Is(err, config.ErrInvalid) {
			return 2
		}
		return 1
	}
	return 0
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
