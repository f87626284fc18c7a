// Package daemon is virtkeepd's life: it takes the host lock (waiting for
// a CLI that holds it), repairs what an interrupted run left (jobs, libvirt
// backup jobs, frozen guests, mounts, sessions), serves the API on the
// unix socket, runs the policies and each target's GC and verification on
// their schedules, serves /metrics and sends notifications when asked,
// thaws guests whose freezer died, reconciles the catalog with the
// targets, tells systemd how it is, reloads the configuration on SIGHUP
// (keeping the running one when the new one is invalid), and on SIGTERM
// cancels the running jobs within a deadline and exits.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/virtkeep/virtkeep/hostd/api"
	"github.com/virtkeep/virtkeep/hostd/apiserver"
	"github.com/virtkeep/virtkeep/hostd/metrics"
	"github.com/virtkeep/virtkeep/hostd/notify"
	"github.com/virtkeep/virtkeep/hostd/schedule"
	"github.com/virtkeep/virtkeep/hostd/service"
	"github.com/virtkeep/virtkeep/systemd"
)

// Config is what the daemon runs with.
type Config struct {
	Service     service.Config
	Socket      string
	SocketGroup string // may use the socket besides root ("" or missing: root only)
	// ShutdownTimeout bounds the wait for cancelled jobs at SIGTERM.
	ShutdownTimeout time.Duration
	// ReconcileInterval is how often the catalog is compared with each
	// target.
	ReconcileInterval time.Duration
	// ThawInterval is how often the freeze journal is looked at (1 s).
	ThawInterval time.Duration
	Log          *slog.Logger
	// Clock drives the scheduler (default the wall clock).
	Clock schedule.Clock
	// Metrics, when set, serves Prometheus /metrics there.
	Metrics *metrics.ListenConfig
	// Notify says whom to tell about jobs that ended.
	Notify notify.Config
	// Reload reads the configuration again at SIGHUP (nil: no reload).
	Reload func() (Config, error)
}

// ErrJobsLeft is returned when jobs were still running at the shutdown
// deadline.
var ErrJobsLeft = errors.New("jobs still running at the shutdown deadline")

// Cleanup does the start-up repairs alone (virtkeepd --cleanup).
func Cleanup(ctx context.Context, cfg Config) error {
	sc := cfg.Service
	sc.Mode, sc.Lock, sc.Log = "daemon", service.LockOrFail, cfg.Log
	svc, err := service.New(ctx, sc)
	if err != nil {
		return err
	}
	defer svc.Close()
	return svc.Recover(ctx)
}

// Run runs the daemon until ctx is done (SIGTERM).
func Run(ctx context.Context, cfg Config) error {
	log := cfg.Log
	n := systemd.Notifier{}
	_ = n.Status("waiting for the host lock")
	var notifier atomic.Pointer[notify.Notifier]
	var m *metrics.Metrics
	if cfg.Metrics != nil {
		m = metrics.New()
	}
	sc := cfg.Service
	sc.Mode, sc.Lock, sc.Log = "daemon", service.LockWait, log
	sc.Ended = func(j api.Job) {
		if m != nil {
			m.Observe(j)
		}
		notifier.Load().Ended(j)
	}
	svc, err := service.New(ctx, sc)
	if err != nil {
		return err
	}
	defer svc.Close()
	notifier.Store(newNotifier(cfg.Notify, svc))
	defer func() { notifier.Load().Wait() }()
	_ = n.Status("recovering what an interrupted run left")
	if err := svc.Recover(ctx); err != nil {
		// Keep running: the daemon is how the rest gets repaired; the
		// operator sees the error in the journal and in the status.
		log.Error("start-up recovery incomplete", "err", err)
	}
	gid := socketGroup(cfg.SocketGroup, log)
	if err := os.MkdirAll(filepath.Dir(cfg.Socket), 0o755); err != nil {
		return fmt.Errorf("socket directory: %w", err)
	}
	ln, err := apiserver.Listen(cfg.Socket, gid)
	if err != nil {
		return fmt.Errorf("API socket %s: %w", cfg.Socket, err)
	}
	defer os.Remove(cfg.Socket)
	srv := &apiserver.Server{Service: svc, Log: log, GID: gid}
	served := make(chan error, 1)
	go func() { served <- fmt.Errorf("API server: %w", srv.Serve(ln)) }()
	wctx, stop := context.WithCancel(ctx)
	defer stop()
	if m != nil {
		m.Watch(svc)
		mc := *cfg.Metrics
		mc.Log, mc.GID = log, gid
		go func() {
			if err := m.Serve(wctx, mc); err != nil {
				served <- fmt.Errorf("metrics listener %s: %w", mc.Addr, err)
			}
		}()
		log.Info("serving metrics", "addr", mc.Addr, "tls", mc.TLS != nil)
	}
	sched, err := startScheduler(wctx, svc, cfg, log)
	if err != nil {
		return err
	}

	if err := n.Ready(); err != nil {
		return err
	}
	log.Info("virtkeepd ready", "version", sc.Version, "state_dir", sc.StateDir, "socket", cfg.Socket)
	var beat atomic.Int64
	beat.Store(time.Now().UnixNano())
	go func() {
		alive := func() bool { return time.Since(time.Unix(0, beat.Load())) < 30*time.Second }
		if err := n.Watchdog(wctx, alive); err != nil {
			log.Error("watchdog", "err", err)
		}
	}()
	go watchFrozen(wctx, svc, log, orDefault(cfg.ThawInterval, time.Second))
	go every(wctx, 2*time.Second, func() { _ = svc.CheckLibvirt() })
	go every(wctx, orDefault(cfg.ReconcileInterval, 10*time.Minute), func() { svc.ReconcileAll(wctx) })
	svc.ExpireJobs(wctx)
	go every(wctx, time.Hour, func() { svc.ExpireJobs(wctx) })
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	status := ""
	tick := time.NewTicker(2 * time.Second)
	defer tick.Stop()
	for running := true; running; {
		select {
		case <-ctx.Done():
			running = false
		case err := <-served:
			return err
		case <-hup:
			reload(wctx, svc, sched, cfg, &notifier, log)
		case <-tick.C:
			// The watchdog is fed only while the job engine and the
			// catalog answer: a daemon stuck in either is restarted.
			if err := svc.Healthy(wctx); err != nil {
				log.Error("not healthy: the watchdog is not fed", "err", err)
			} else {
				beat.Store(time.Now().UnixNano())
			}
			s := describe(svc.Running())
			if !svc.LibvirtUp() {
				s = "libvirt unreachable, reconnecting; " + s
			}
			if s != status {
				status = s
				_ = n.Status(s)
			}
		}
	}
	stop()
	return shutdown(svc, srv, cfg, n, log)
}

// startScheduler runs the policies', GC's and verification's schedules.
func startScheduler(ctx context.Context, svc *service.Service, cfg Config, log *slog.Logger) (*schedule.Scheduler, error) {
	clock := cfg.Clock
	if clock == nil {
		clock = schedule.Real{}
	}
	last, err := svc.LastRuns(ctx)
	if err != nil {
		return nil, err
	}
	sched := NewScheduler(svc, clock, log)
	sched.Set(Entries(svc, last))
	go sched.Run(ctx)
	return sched, nil
}

// reload applies a new configuration's policies, upkeep schedules and
// notifications; an invalid one changes nothing.
func reload(ctx context.Context, svc *service.Service, sched *schedule.Scheduler, cfg Config, notifier *atomic.Pointer[notify.Notifier], log *slog.Logger) {
	if cfg.Reload == nil {
		log.Warn("SIGHUP: reloading is not configured")
		return
	}
	nc, err := cfg.Reload()
	if err != nil {
		log.Error("configuration not reloaded: the running one stays", "err", err)
		return
	}
	svc.SetPolicies(nc.Service.Policies)
	if changed := svc.SetUpkeep(nc.Service.Targets); len(changed) > 0 {
		log.Warn("targets added or removed: a restart of virtkeepd applies them", "targets", strings.Join(changed, ", "))
	}
	notifier.Store(newNotifier(nc.Notify, svc))
	last, err := svc.LastRuns(ctx)
	if err != nil {
		log.Error("configuration reloaded, schedules not: catalog unreadable", "err", err)
		return
	}
	sched.Set(Entries(svc, last))
	log.Info("configuration reloaded", "policies", len(nc.Service.Policies))
}

// newNotifier is c's notifier, with the jobs' last log lines from svc.
func newNotifier(c notify.Config, svc *service.Service) *notify.Notifier {
	if c.Webhook.URL == "" && len(c.Mail.To) == 0 {
		return nil
	}
	c.Tail = func(ctx context.Context, job string) []api.LogLine {
		var lines []api.LogLine
		_ = svc.Log(ctx, job, false, func(l api.LogLine) error {
			lines = append(lines, l)
			if len(lines) > 20 {
				lines = lines[1:]
			}
			return nil
		})
		return lines
	}
	if c.Host == "" {
		c.Host, _ = os.Hostname()
	}
	return notify.New(c)
}

// shutdown: no new jobs, cancel the running ones within the deadline,
// then stop the API.
func shutdown(svc *service.Service, srv *apiserver.Server, cfg Config, n systemd.Notifier, log *slog.Logger) error {
	_ = n.Stopping()
	running := svc.Running()
	_ = n.Status("stopping: cancelling " + describe(running))
	log.Info("virtkeepd stopping", "jobs", len(running))
	sctx, cancel := context.WithTimeout(context.Background(), orDefault(cfg.ShutdownTimeout, 90*time.Second))
	defer cancel()
	left := svc.Shutdown(sctx)
	hctx, hcancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer hcancel()
	_ = srv.Shutdown(hctx)
	// Mounts, servers and booted domains read from this process.
	ectx, ecancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer ecancel()
	if err := svc.EndHeld(ectx); err != nil {
		log.Error("ending sessions", "err", err)
	}
	if len(left) > 0 {
		return fmt.Errorf("%s: %w", describe(left), ErrJobsLeft)
	}
	log.Info("virtkeepd stopped")
	return nil
}

// describe is a STATUS= line for the jobs.
func describe(js []api.Job) string {
	if len(js) == 0 {
		return "ready: no jobs running"
	}
	var parts []string
	for _, j := range js {
		s := j.Kind + " " + j.Domain
		if j.Progress.Total > 0 {
			s += fmt.Sprintf(" %d%%", 100*j.Progress.Done/j.Progress.Total)
		}
		parts = append(parts, strings.TrimSpace(s)+" ("+string(j.State)+")")
	}
	return fmt.Sprintf("%d jobs: %s", len(js), strings.Join(parts, ", "))
}

// socketGroup is the GID of the group that may use the socket, or -1.
func socketGroup(name string, log *slog.Logger) int {
	if name == "" {
		return -1
	}
	g, err := user.LookupGroup(name)
	if err != nil {
		log.Warn("socket group missing: only root may use the API", "group", name, "err", err)
		return -1
	}
	gid, _ := strconv.Atoi(g.Gid)
	return gid
}

// watchFrozen thaws, every interval, the guests whose freezer died (a CLI
// killed while a guest was frozen). The same error is logged once, not
// every second.
func watchFrozen(ctx context.Context, svc *service.Service, log *slog.Logger, interval time.Duration) {
	last := ""
	every(ctx, interval, func() {
		err := svc.ThawOrphans(ctx)
		if msg := fmt.Sprint(err); err != nil && msg != last {
			log.Error("thawing guests left frozen", "err", err)
			last = msg
		} else if err == nil {
			last = ""
		}
	})
}

func every(ctx context.Context, d time.Duration, fn func()) {
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			fn()
		}
	}
}

func orDefault(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}
