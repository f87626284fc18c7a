package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/viper"
	"libvirt.org/go/libvirt"

	"github.com/virtkeep/virtkeep/hostd/engine"
	"github.com/virtkeep/virtkeep/systemd"
)

// version is set at build time (make build).
var version = "dev"

// daemonConfig is the part of the configuration file the daemon reads so far.
type daemonConfig struct {
	StateDir   string `mapstructure:"state_dir"`
	LibvirtURI string `mapstructure:"libvirt_uri"`
}

func loadConfig(path string) (*daemonConfig, error) {
	v := viper.New()
	v.SetConfigFile(path)
	v.SetConfigType("yaml")
	v.SetDefault("state_dir", "/var/lib/virtkeep")
	v.SetDefault("libvirt_uri", "qemu:///system")
	if err := v.ReadInConfig(); err != nil {
		return nil, fmt.Errorf("config file %s: %w", path, err)
	}
	var c daemonConfig
	if err := v.Unmarshal(&c); err != nil {
		return nil, fmt.Errorf("config file %s: %w", path, err)
	}
	if c.StateDir == "" {
		return nil, fmt.Errorf("config file %s: state_dir is empty", path)
	}
	return &c, nil
}

func newRootCmd(out, errw io.Writer) *cobra.Command {
	var configPath string
	var cleanup bool
	root := &cobra.Command{
		Use:   "virtkeepd",
		Short: "The virtkeep backup daemon",
		Long: `virtkeepd runs beside libvirtd (under systemd: Type=notify, see
systemd/virtkeepd.service). At every start it first repairs what an
interrupted run left behind: it thaws guests left frozen and undoes every
file-level mount recorded in state_dir (mounts do not survive a daemon
restart or a reboot), then reports READY=1 and stays up, answering the
watchdog, until SIGTERM. With --cleanup it only does the repairs and exits.
The job engine, scheduler and API are not in this version yet: backups,
restores and mounts run in the virtkeep CLI's process.`,
		Version:       version,
		SilenceUsage:  true,
		SilenceErrors: true,
		Args:          cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := loadConfig(configPath)
			if err != nil {
				return err
			}
			conn, err := libvirt.NewConnect(cfg.LibvirtURI)
			if err != nil {
				return fmt.Errorf("libvirt %s: %w", cfg.LibvirtURI, err)
			}
			defer conn.Close()
			log := slog.New(slog.NewTextHandler(errw, nil))
			e := &engine.Engine{Conn: conn, StateDir: cfg.StateDir, Log: log}
			if cleanup {
				if err := recoverAll(cmd.Context(), e); err != nil {
					return err
				}
				fmt.Fprintln(out, "cleanup done")
				return nil
			}
			return serve(cmd.Context(), e, log)
		},
	}
	root.Flags().StringVar(&configPath, "config", "/etc/virtkeep/virtkeep.yaml", "configuration file")
	root.Flags().BoolVar(&cleanup, "cleanup", false, "only repair what an interrupted run left (frozen guests, mounts), then exit")
	root.SetVersionTemplate("virtkeepd {{.Version}}\n")
	root.SetOut(out)
	root.SetErr(errw)
	return root
}

// recoverAll thaws guests an interrupted run left frozen and undoes the
// file-level mounts recorded in the state directory. Both are tried; the
// first error is returned.
func recoverAll(ctx context.Context, e *engine.Engine) error {
	err1 := e.RecoverFrozen(ctx)
	err2 := e.CleanupMounts(ctx)
	if err1 != nil {
		return fmt.Errorf("thaw guests left frozen: %w", err1)
	}
	if err2 != nil {
		return fmt.Errorf("undo mounts left behind: %w", err2)
	}
	return nil
}

// serve is the daemon's life: recovery, READY=1, watchdog, then wait for
// SIGTERM/SIGINT (ctx).
func serve(ctx context.Context, e *engine.Engine, log *slog.Logger) error {
	n := systemd.Notifier{}
	_ = n.Status("recovering what an interrupted run left")
	if err := recoverAll(ctx, e); err != nil {
		// Keep running: the daemon is how the rest gets repaired; the
		// operator sees the error in the journal and in the status.
		log.Error("start-up recovery incomplete", "err", err)
		_ = n.Status("start-up recovery incomplete: " + err.Error())
	} else {
		_ = n.Status("ready")
	}
	if err := n.Ready(); err != nil {
		return err
	}
	log.Info("virtkeepd ready", "version", version, "state_dir", e.StateDir)
	wctx, stop := context.WithCancel(ctx)
	defer stop()
	go func() {
		if err := n.Watchdog(wctx, nil); err != nil {
			log.Error("watchdog", "err", err)
		}
	}()
	go watchFrozen(wctx, e, log, time.Second)
	<-ctx.Done()
	_ = n.Stopping()
	log.Info("virtkeepd stopping")
	return nil
}

// watchFrozen thaws, every interval, the guests whose freezer died (a CLI
// killed while a guest was frozen): the freeze journal names them and
// their owner's PID. The same error is logged once, not every second.
func watchFrozen(ctx context.Context, e *engine.Engine, log *slog.Logger, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	last := ""
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		err := e.RecoverFrozen(ctx)
		if msg := fmt.Sprint(err); err != nil && msg != last {
			log.Error("thawing guests left frozen", "err", err)
			last = msg
		} else if err == nil {
			last = ""
		}
	}
}

func run(ctx context.Context, args []string, out, errw io.Writer) int {
	root := newRootCmd(out, errw)
	root.SetArgs(args)
	if err := root.ExecuteContext(ctx); err != nil {
		fmt.Fprintln(errw, "virtkeepd:", err)
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
