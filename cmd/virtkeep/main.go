package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/pprof"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/virtkeep/virtkeep/cmd/internal/config"
	"github.com/virtkeep/virtkeep/cmd/internal/mandoc"
	"github.com/virtkeep/virtkeep/hostd/api"
	"github.com/virtkeep/virtkeep/hostd/client"
	"github.com/virtkeep/virtkeep/hostd/service"
)

// version is set at build time (make build).
var version = "dev"

// app is what every command shares: flags, configuration, the service,
// output.
type app struct {
	configPath string
	explicit   bool // --config given
	json       bool
	verbose    bool
	local      bool
	cpuProfile string // hidden --cpu-profile: where a CPU profile goes
	cfg        *config.Config
	log        *slog.Logger
	out, errw  io.Writer
	svc        api.Service
	// inproc is the service when it runs in this process.
	inproc *service.Service
}

// need says what a command needs of the service.
type need int

const (
	// writes: jobs, mounts, boots; in process it needs the host lock.
	writes need = iota
	// reads: list, info, job info; in process without the host lock it
	// answers from the catalog as it is.
	reads
)

func (a *app) load() error {
	cfg, err := config.Load(a.configPath, a.explicit)
	if err != nil {
		return err
	}
	a.cfg = cfg
	level := slog.LevelWarn
	if a.verbose {
		level = slog.LevelInfo
	}
	a.log = slog.New(slog.NewTextHandler(a.errw, &slog.HandlerOptions{Level: level}))
	if cfg.ZeroConfig {
		fmt.Fprintf(a.errw, "virtkeep: no %s: using a local target at %s and %s\n", a.configPath, config.ZeroTarget().Path, cfg.LibvirtURI)
	}
	return nil
}

// connect loads the configuration and reaches the service: virtkeepd when
// it answers on its socket (unless --local), else in this process under
// the host lock.
func (a *app) connect(ctx context.Context, n need) error {
	if err := a.load(); err != nil {
		return err
	}
	if !a.local {
		c, err := client.Dial(ctx, a.cfg.Socket)
		if err == nil {
			a.svc = c
			return nil
		}
	}
	sc := a.cfg.Service(version, a.log)
	sc.Mode, sc.Lock, sc.Passphrase = "local", service.LockOrFail, terminalPassphrase
	if n == reads {
		sc.Lock = service.LockIfFree
	}
	sc.ServeArgv = a.serveArgv
	s, err := service.New(ctx, sc)
	if errors.Is(err, service.ErrHostBusy) {
		return &cliError{exitBusy, fmt.Errorf("%v: virtkeepd runs this host's backups; drop --local to go through it, or stop it first", err)}
	}
	if err != nil {
		return err
	}
	a.svc, a.inproc = s, s
	return nil
}

// close ends an in-process service. Its NBD servers (serve) end with it.
func (a *app) close() {
	if a.inproc != nil {
		a.inproc.Close()
	}
}

// serveArgv is how a mount or boot made in process starts this binary as
// its NBD server (the socket path follows): the server outlives this
// process.
func (a *app) serveArgv(point, target, disk string) []string {
	exe, err := os.Executable()
	if err != nil {
		exe = os.Args[0]
	}
	argv := []string{exe}
	if !a.cfg.ZeroConfig {
		argv = append(argv, "--config", a.cfg.Path)
	}
	argv = append(argv, "--local", "serve", point, "--target", target)
	if disk != "" {
		argv = append(argv, "--disk", disk)
	}
	return append(argv, "--socket")
}

func (a *app) printJSON(v any) error {
	enc := json.NewEncoder(a.out)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// withService wraps a command's body: it connects, runs, and closes.
func (a *app) withService(n need, run func(cmd *cobra.Command, args []string) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		if err := a.connect(cmd.Context(), n); err != nil {
			return err
		}
		defer a.close()
		return run(cmd, args)
	}
}

func newRootCmd(a *app) *cobra.Command {
	root := &cobra.Command{
		Use:   "virtkeep",
		Short: "Back up and restore KVM/libvirt virtual machines",
		Long: `virtkeep takes crash- or application-consistent backups of libvirt domains into
content-addressed, deduplicated, compressed and optionally encrypted
repositories, and restores disks, domains and files.

It goes through virtkeepd when the daemon runs (its socket is in the
configuration), and otherwise runs the same service in its own process
(--local forces that; it is refused while the daemon runs).

Exit codes: 0 success, 1 failure, 2 usage or configuration error, 3 no such
domain/point/disk/target/job/session, 4 consistency not reached
(--require-consistency), 5 repository locked, 6 busy (the domain has a job,
or the daemon holds the host).`,
		Version:       version,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	pf := root.PersistentFlags()
	pf.StringVar(&a.configPath, "config", config.DefaultPath, "configuration file")
	pf.BoolVar(&a.json, "json", false, "print machine-readable JSON")
	pf.BoolVarP(&a.verbose, "verbose", "v", false, "log what is done")
	pf.BoolVar(&a.local, "local", false, "run in this process, not through virtkeepd")
	pf.StringVar(&a.cpuProfile, "cpu-profile", "", "write a CPU profile of the command to this file")
	_ = pf.MarkHidden("cpu-profile")
	root.PersistentPreRunE = func(cmd *cobra.Command, _ []string) error {
		a.explicit = cmd.Flags().Changed("config")
		return a.startProfile()
	}
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
		newServeCmd(a), newMountCmd(a), newUmountCmd(a), newBootCmd(a), newVerifyCmd(a), newKeyCmd(a),
		newJobsCmd(a), newJobCmd(a), newSessionsCmd(a), newCatalogCmd(a), newVersionCmd(a),
		newPoliciesCmd(a), newRunCmd(a), newPruneCmd(a), newProtectCmd(a, false), newProtectCmd(a, true), newCopyCmd(a), newGCCmd(a))
	root.AddCommand(mandoc.Command(root, "1"))
	return root
}

// startProfile starts the CPU profile --cpu-profile asks for.
func (a *app) startProfile() error {
	if a.cpuProfile == "" {
		return nil
	}
	f, err := os.OpenFile(a.cpuProfile, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return usageErr("--cpu-profile: %v", err)
	}
	return pprof.StartCPUProfile(f)
}

// run executes the CLI and returns its exit code.
func run(ctx context.Context, args []string, out, errw io.Writer) int {
	a := &app{out: out, errw: errw}
	root := newRootCmd(a)
	root.SetArgs(args)
	root.SetOut(out)
	root.SetErr(errw)
	err := root.ExecuteContext(ctx)
	pprof.StopCPUProfile()
	if err != nil {
		fmt.Fprintln(errw, "virtkeep:", withAdvice(err))
	}
	return exitCode(err)
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
