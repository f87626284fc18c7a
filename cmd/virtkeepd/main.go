package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
	"github.com/spf13/viper"
	"libvirt.org/go/libvirt"

	"github.com/virtkeep/virtkeep/hostd/engine"
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
		Long: `virtkeepd runs beside libvirtd. With --cleanup it only repairs what an
interrupted run left behind (guests left frozen, file-level mounts) and exits; the job engine,
scheduler and API are not in this version yet.`,
		Version:       version,
		SilenceUsage:  true,
		SilenceErrors: true,
		Args:          cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if !cleanup {
				return cmd.Help()
			}
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
			if err := e.RecoverFrozen(cmd.Context()); err != nil {
				return err
			}
			if err := e.CleanupMounts(cmd.Context()); err != nil {
				return err
			}
			fmt.Fprintln(out, "cleanup done")
			return nil
		},
	}
	root.Flags().StringVar(&configPath, "config", "/etc/virtkeep/virtkeep.yaml", "configuration file")
	root.Flags().BoolVar(&cleanup, "cleanup", false, "thaw guests an interrupted run left frozen, then exit")
	root.SetVersionTemplate("virtkeepd {{.Version}}\n")
	root.SetOut(out)
	root.SetErr(errw)
	return root
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
