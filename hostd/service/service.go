// Package service implements api.Service once, for the daemon and for the
// CLI running in its own process: request validation, point resolution
// from the catalog (reconciled with the targets), jobs for backups,
// restores, exports, verifies, catalog rebuilds, copies, prunes, GC and
// policy runs (which domains a policy has, the level its plan gives, its
// copies and retention), and sessions for mounts, NBD servers and booted
// domains. It holds the host lock, so libvirt checkpoints and the catalog
// never have two writers.
package service

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"libvirt.org/go/libvirt"

	"github.com/virtkeep/virtkeep/hostd/api"
	"github.com/virtkeep/virtkeep/hostd/backup"
	"github.com/virtkeep/virtkeep/hostd/catalog"
	"github.com/virtkeep/virtkeep/hostd/domain"
	"github.com/virtkeep/virtkeep/hostd/jobs"
	"github.com/virtkeep/virtkeep/hostd/mount"
	"github.com/virtkeep/virtkeep/hostd/policy"
	"github.com/virtkeep/virtkeep/hostd/recovery"
	"github.com/virtkeep/virtkeep/hostd/restore"
	"github.com/virtkeep/virtkeep/hostd/schedule"
	"github.com/virtkeep/virtkeep/hostd/statedir"
	"github.com/virtkeep/virtkeep/target"
	"github.com/virtkeep/virtkeep/target/all"
)

// Target is a configured target.
type Target struct {
	Name string
	Open all.Config
	// MaxJobs overrides Config.MaxJobsPerTarget for this target.
	MaxJobs int
	// GC and Verify are the target's upkeep schedules (the daemon runs
	// them); nil: never. VerifyReadData is none, all or sample (a part of
	// VerifySample parts, another each day).
	GC, Verify     *schedule.Cron
	VerifyReadData string
	VerifySample   int
}

// Config is what the service runs with (cmd/internal/config makes it).
type Config struct {
	Mode       string // "daemon" or "local"
	Version    string
	StateDir   string
	LibvirtURI string
	Targets    []Target // the first is the default
	// BootFileDirs are added to domain.DefaultBootFileDirs.
	BootFileDirs     []string
	MaxJobs          int
	MaxJobsPerTarget int
	// GCGrace overrides GC's grace period (zero: the default, 24 h). Only
	// tests shorten it (VIRTKEEP_TEST_GC_GRACE): with writers on other
	// hosts, anything under the time a backup takes is unsafe.
	GCGrace time.Duration
	// JobRetention is how long ended jobs and their logs stay in the
	// catalog (default DefaultJobRetention).
	JobRetention time.Duration
	// RetryBackoff is the wait before retrying a job after a transient
	// error (default 5 s).
	RetryBackoff time.Duration
	Log          *slog.Logger
	// Passphrase, when set, asks for the passphrase of a key file that
	// has none configured (the CLI, on a terminal).
	Passphrase func(target, keyFile string) ([]byte, error)
	// ServeArgv, when set, makes mounts and boots start this command (the
	// CLI's own serve, with --socket to follow) as their NBD server, so
	// that they outlive the process; unset, the server runs in this
	// process (the daemon), which holds it.
	ServeArgv func(point, target, disk string) []string
	// Lock says how to take the host lock.
	Lock LockMode
	// Policies are the configured policies.
	Policies []*policy.Policy
	// Clock is the time of policies, levels, retention, new points and
	// jobs (default time.Now; tests run weeks on a fake).
	Clock func() time.Time
	// Ended, if set, is told of every job that ended (notifications,
	// metrics); it must not block.
	Ended func(api.Job)
}

// Service implements api.Service.
type Service struct {
	cfg  Config
	log  *slog.Logger
	conn *libvirt.Connect
	// libvirtErr is why libvirt could not be reached at the last check
	// (CheckLibvirt); nil when it answered. Guarded by mu.
	libvirtErr error
	// state is state_dir; bootDirs where restored and booted domains may
	// take firmware from.
	state    statedir.Dir
	bootDirs []string
	cat      *catalog.DB
	jobs     *jobs.Manager
	lock     *hostLock
	// readOnly is set when the host lock is held elsewhere and Lock was
	// LockIfFree: answers come from the catalog as it is, nothing is
	// changed.
	readOnly atomic.Bool

	// ctx lives as long as the service: sessions' servers run on it.
	ctx    context.Context
	cancel context.CancelFunc

	// interrupted are the jobs an earlier process left unfinished.
	interrupted []api.Job
	// restoreDirs are where interrupted restores and exports wrote.
	restoreDirs []string

	polMu sync.RWMutex
	pols  []*policy.Policy

	mu       sync.Mutex
	sessions map[string]*liveSession
	passes   map[string][]byte
}

var _ api.Service = (*Service)(nil)

// New opens libvirt and the catalog and takes the host lock.
func New(ctx context.Context, cfg Config) (*Service, error) {
	if len(cfg.Targets) == 0 {
		return nil, api.Errorf(api.CodeBadRequest, "no targets configured")
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Clock == nil {
		cfg.Clock = time.Now
	}
	s := &Service{cfg: cfg, log: cfg.Log, sessions: map[string]*liveSession{}, passes: map[string][]byte{}, pols: cfg.Policies}
	s.state = statedir.Dir(cfg.StateDir)
	s.bootDirs = append(append([]string(nil), domain.DefaultBootFileDirs...), cfg.BootFileDirs...)
	// state_dir is made 0711 and must be root's.
	if _, err := s.state.Run(); err != nil {
		return nil, err
	}
	lock, err := takeHostLock(ctx, cfg.StateDir, cfg.Lock, cfg.Log)
	switch {
	case errors.Is(err, ErrHostBusy) && cfg.Lock == LockIfFree:
		s.readOnly.Store(true)
	case err != nil:
		return nil, err
	}
	s.lock = lock
	openCatalog := catalog.OpenOrReplace
	if s.readOnly.Load() {
		openCatalog = catalog.Open // the catalog is the lock holder's
	}
	s.cat, err = openCatalog(ctx, filepath.Join(cfg.StateDir, "catalog.db"))
	if err == nil && s.cat.Replaced != "" {
		s.log.Error(s.cat.Replaced)
	}
	if err != nil {
		s.lock.release()
		return nil, err
	}
	if !s.readOnly.Load() {
		names := make([]string, len(cfg.Targets))
		for i, t := range cfg.Targets {
			names[i] = t.Name
		}
		if err := s.cat.KeepTargets(ctx, names); err != nil {
			s.Close()
			return nil, err
		}
		if s.interrupted, err = s.failInterrupted(ctx); err != nil {
			s.Close()
			return nil, err
		}
	}
	limits := map[string]int{}
	for _, t := range cfg.Targets {
		limits[t.Name] = t.MaxJobs
	}
	s.jobs = jobs.New(jobs.Config{Store: s.cat, Log: cfg.Log, MaxJobs: cfg.MaxJobs, MaxPerTarget: cfg.MaxJobsPerTarget, Backoff: cfg.RetryBackoff,
		TargetLimits: limits, Ended: cfg.Ended, Now: cfg.Clock})
	s.ctx, s.cancel = context.WithCancel(context.WithoutCancel(ctx))
	return s, nil
}

// libvirt connects on first use (list and info need no libvirt), and
// again once the connection is found dead: libvirtd restarts on every
// upgrade of libvirt, and a daemon that kept the dead connection would
// fail every backup until restarted itself. The dead connection is not
// closed: a job may still hold it (its calls fail, and it is retried).
func (s *Service) libvirt() (*libvirt.Connect, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conn != nil {
		if alive, err := s.conn.IsAlive(); err == nil && alive {
			return s.conn, nil
		}
		s.log.Warn("the connection to libvirt is lost: connecting again", "uri", s.cfg.LibvirtURI)
		s.conn = nil
	}
	c, err := libvirt.NewConnect(s.cfg.LibvirtURI)
	if err != nil {
		return nil, api.WithCode(api.CodeUnavailable, fmt.Errorf("libvirt %s: %w", s.cfg.LibvirtURI, err))
	}
	s.conn = c
	return s.conn, nil
}

// CheckLibvirt asks libvirt for its version (a round trip that finds a
// dead connection), connecting again if it is dead; the daemon calls it
// every few seconds, so a restart of libvirtd is noticed and mended before
// the next job needs libvirt. It logs each change of state once.
func (s *Service) CheckLibvirt() error {
	c, err := s.libvirt()
	if err == nil {
		if _, err = c.GetLibVersion(); err != nil {
			if c, err = s.libvirt(); err == nil { // found dead just now
				_, err = c.GetLibVersion()
			}
		}
	}
	s.mu.Lock()
	was := s.libvirtErr
	s.libvirtErr = err
	s.mu.Unlock()
	switch {
	case err != nil && was == nil:
		s.log.Error("libvirt cannot be reached: jobs that need it fail and are retried; connecting again every few seconds", "uri", s.cfg.LibvirtURI, "err", err)
	case err == nil && was != nil:
		s.log.Info("libvirt reached again", "uri", s.cfg.LibvirtURI)
	}
	return err
}

// LibvirtUp reports whether libvirt answered at the last check.
func (s *Service) LibvirtUp() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.libvirtErr == nil
}

// host is what start-up recovery repairs.
func (s *Service) host() (recovery.Host, error) {
	c, err := s.libvirt()
	return recovery.Host{Conn: c, State: s.state, Log: s.log}, err
}

// Shutdown stops taking jobs and cancels the running ones, waiting for
// them until ctx is done; it returns those still running then.
func (s *Service) Shutdown(ctx context.Context) []api.Job { return s.jobs.Shutdown(ctx) }

// Running returns the queued and running jobs.
func (s *Service) Running() []api.Job { return s.jobs.Live() }

// Close ends what this process holds: its jobs (cancelled, and waited for
// up to 10 s while they undo what they started; the daemon gives them its
// shutdown_timeout first, with Shutdown), its sessions' servers, the
// catalog, libvirt, the host lock.
func (s *Service) Close() error {
	if s.jobs != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		s.jobs.Shutdown(ctx)
		cancel()
	}
	if s.cancel != nil {
		s.cancel()
	}
	s.mu.Lock()
	for _, l := range s.sessions {
		l.stop()
	}
	s.mu.Unlock()
	if s.cat != nil {
		s.cat.Close()
	}
	if s.conn != nil {
		s.conn.Close()
	}
	s.lock.release()
	return nil
}

// ReleaseHostLock lets the host lock go and turns the service read only:
// a CLI that now only serves a point (serve) must not hold up the daemon
// or other commands for as long as it runs.
func (s *Service) ReleaseHostLock() {
	s.readOnly.Store(true)
	s.lock.release()
}

// Version says who answers.
func (s *Service) Version(context.Context) (api.VersionInfo, error) {
	return api.VersionInfo{Version: s.cfg.Version, API: api.Version, Mode: s.cfg.Mode, PID: os.Getpid()}, nil
}

func (s *Service) target(name string) (Target, error) {
	if name == "" {
		return s.targetList()[0], nil
	}
	var names []string
	for _, t := range s.targetList() {
		if t.Name == name {
			return t, nil
		}
		names = append(names, t.Name)
	}
	return Target{}, api.Errorf(api.CodeNotFound, "no target %q (configured: %s)", name, strings.Join(names, ", "))
}

// open opens t's repository; with create an empty location gets one.
func (s *Service) open(ctx context.Context, t Target, create bool) (*target.Repository, error) {
	c, err := s.withPassphrase(t)
	if err != nil {
		return nil, err
	}
	r, err := all.Open(ctx, c, create, s.log)
	if err != nil && !errors.Is(err, target.ErrNotRepository) && !errors.Is(err, target.ErrPassphraseNeeded) && !errors.Is(err, target.ErrLocked) {
		return nil, targetError(err)
	}
	return r, err
}

// targetError gives an error of a repository its code where it has none:
// configuration (a key file, a setting) and integrity (damage, a missing
// object) are not transient; anything else (a server that is down, a
// connection that broke) may pass, and is retried.
func targetError(err error) error {
	switch {
	case target.IsConfig(err):
		return api.WithCode(api.CodeBadRequest, err)
	case target.IsIntegrity(err), errors.Is(err, target.ErrNoPoint):
		return api.WithCode(api.CodeFailed, err)
	}
	return api.WithCode(api.CodeUnavailable, err)
}

// cacheDir is where repositories keep copies of their metadata:
// state_dir/cache, private to root; "" (no cache, every manifest read from
// the target) when it cannot be made.
func (s *Service) cacheDir() string {
	dir, err := s.state.Sub("cache")
	if err != nil {
		s.log.Warn("no metadata cache: manifests and pack indexes are read from the targets", "err", err)
		return ""
	}
	return dir
}

// withPassphrase is t's open configuration with the passphrase its key
// file needs, asked for once per process when none is configured.
func (s *Service) withPassphrase(t Target) (all.Config, error) {
	c := t.Open
	c.Now = s.cfg.Clock
	c.CacheDir = s.cacheDir()
	if c.KeyFile == "" || len(c.Passphrase) > 0 {
		return c, nil
	}
	s.mu.Lock()
	p, ok := s.passes[t.Name]
	s.mu.Unlock()
	if ok {
		c.Passphrase = p
		return c, nil
	}
	// A missing key file is created with the repository; other errors
	// surface when the target is opened.
	if _, err := target.ReadKeyFile(c.KeyFile, nil); !errors.Is(err, target.ErrPassphraseNeeded) {
		return c, nil
	}
	if s.cfg.Passphrase == nil {
		return c, api.Errorf(api.CodeBadRequest, "target %s: key file %s needs a passphrase: set passphrase_file", t.Name, c.KeyFile)
	}
	p, err := s.cfg.Passphrase(t.Name, c.KeyFile)
	if err != nil {
		return c, api.Errorf(api.CodeBadRequest, "target %s: key file %s needs a passphrase: set passphrase_file or run on a terminal (%v)", t.Name, c.KeyFile, err)
	}
	s.mu.Lock()
	s.passes[t.Name] = p
	s.mu.Unlock()
	c.Passphrase = p
	return c, nil
}

// codeOf classifies an error of an operation.
func codeOf(err error) api.Code {
	var ae *api.Error
	switch {
	case errors.As(err, &ae):
		return ae.Code
	case errors.Is(err, context.Canceled):
		return api.CodeCancelled
	case errors.Is(err, backup.ErrConsistency):
		return api.CodeConsistency
	case errors.Is(err, target.ErrLocked):
		return api.CodeLocked
	case errors.Is(err, restore.ErrExists):
		return api.CodeExists
	case libvirtLost(err):
		return api.CodeUnavailable
	case errors.Is(err, libvirt.ERR_NO_DOMAIN), errors.Is(err, target.ErrNoPoint), errors.Is(err, catalog.ErrNotFound), errors.Is(err, jobs.ErrNotLive),
		errors.Is(err, mount.ErrNotMounted):
		return api.CodeNotFound
	case errors.Is(err, jobs.ErrBusy), errors.Is(err, ErrHostBusy), errors.Is(err, target.ErrHeld):
		return api.CodeBusy
	case errors.Is(err, jobs.ErrShutdown):
		return api.CodeShutdown
	case errors.Is(err, restore.ErrDestination), errors.Is(err, target.ErrPassphraseNeeded), target.IsConfig(err):
		return api.CodeBadRequest
	}
	return api.CodeFailed
}

// libvirtLost reports whether err says the connection to libvirt broke
// (an RPC error: libvirtd restarted or stopped): a retry on a new
// connection may pass.
func libvirtLost(err error) bool {
	var le libvirt.Error
	return errors.As(err, &le) && (le.Domain == libvirt.FROM_RPC || le.Code == libvirt.ERR_NO_CONNECT)
}

// coded gives err its code (see codeOf).
func coded(err error) error { return api.WithCode(codeOf(err), err) }

var (
	nameRe    = regexp.MustCompile(`^[A-Za-z0-9_.+-]{1,64}$`)
	uuidRe    = regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)
	diskRe    = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,64}$`)
	jobIDRe   = regexp.MustCompile(`^[0-9]{8}T[0-9]{6}Z-[0-9a-f]{8}$`)
	pointIDRe = jobIDRe
)

// checkDomainName refuses what no libvirt domain is called.
func checkDomainName(what, n string) error {
	if !nameRe.MatchString(n) && !uuidRe.MatchString(n) {
		return api.Errorf(api.CodeBadRequest, "%s %q: want a domain name (letters, digits, _ . + -) or UUID", what, n)
	}
	return nil
}

func checkDisks(names []string) error {
	for _, d := range names {
		if !diskRe.MatchString(d) {
			return api.Errorf(api.CodeBadRequest, "disk %q: want a disk name such as vda", d)
		}
	}
	return nil
}

func checkAbs(what, p string) error {
	if !filepath.IsAbs(p) || strings.ContainsRune(p, 0) {
		return api.Errorf(api.CodeBadRequest, "%s %q: want an absolute path", what, p)
	}
	return nil
}

func (s *Service) writable() error {
	if s.readOnly.Load() {
		return api.Errorf(api.CodeBusy, "%v", s.lockHolder())
	}
	return nil
}
