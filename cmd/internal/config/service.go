package config

import (
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/virtkeep/virtkeep/hostd/daemon"
	"github.com/virtkeep/virtkeep/hostd/metrics"
	"github.com/virtkeep/virtkeep/hostd/notify"
	"github.com/virtkeep/virtkeep/hostd/service"
	"github.com/virtkeep/virtkeep/target/limit"
)

// Service is the service configuration c describes.
func (c *Config) Service(version string, log *slog.Logger) service.Config {
	sc := service.Config{Version: version, StateDir: c.StateDir, LibvirtURI: c.LibvirtURI, BootFileDirs: c.BootFileDirs,
		MaxJobs: c.MaxJobs, MaxJobsPerTarget: c.MaxJobsPerTarget, Log: log, Policies: c.policies, JobRetention: c.jobRetention}
	// A test-only knob: the fault matrix shortens GC's grace period so that
	// its GC runs repack what its prunes left.
	if g, err := time.ParseDuration(os.Getenv("VIRTKEEP_TEST_GC_GRACE")); err == nil && g > 0 {
		sc.GCGrace = g
	}
	if c, ok := testClock(); ok {
		sc.Clock = c.Now
	}
	for _, t := range c.Targets {
		o := t.Open()
		o.Limit = limit.New(limit.Limits{BytesPerSecond: t.upkeep.bandwidth, Requests: t.Requests})
		sc.Targets = append(sc.Targets, service.Target{Name: t.Name, Open: o, MaxJobs: t.MaxJobs,
			GC: t.upkeep.gc, Verify: t.upkeep.verify, VerifyReadData: t.upkeep.readData, VerifySample: t.upkeep.sample})
	}
	return sc
}

// Daemon is the daemon configuration c describes.
func (c *Config) Daemon(version string, log *slog.Logger) daemon.Config {
	dc := daemon.Config{Service: c.Service(version, log), Socket: c.Socket, SocketGroup: c.SocketGroup,
		ShutdownTimeout: c.ShutdownTimeout, ReconcileInterval: c.ReconcileInterval, Log: log, Notify: c.notify(log)}
	if c, ok := testClock(); ok {
		dc.Clock = c
	}
	if c.Metrics.Listen != "" {
		dc.Metrics = &metrics.ListenConfig{Addr: c.Metrics.Listen, TLS: c.metricsTLS, Token: c.metricsToken.Reveal()}
	}
	return dc
}

func (c *Config) notify(log *slog.Logger) notify.Config {
	w, m := c.Notify.Webhook, c.Notify.Mail
	var timeout time.Duration
	if w.Timeout != "" {
		timeout, _ = time.ParseDuration(w.Timeout)
	}
	return notify.Config{Log: log,
		Webhook: notify.Webhook{URL: w.URL, On: w.On, Retries: w.Retries, Token: c.webhookToken, Timeout: timeout},
		Mail:    notify.Mail{To: m.To, From: m.From, Sendmail: m.Sendmail, On: m.On}}
}

// offsetClock is the wall clock moved by the duration written in a file,
// read at each look: a test-only knob (VIRTKEEP_TEST_CLOCK_OFFSET_FILE)
// with which the fault matrix sets a running virtkeepd's clock forward and
// back without touching the host's.
type offsetClock struct{ file string }

func testClock() (offsetClock, bool) {
	f := os.Getenv("VIRTKEEP_TEST_CLOCK_OFFSET_FILE")
	return offsetClock{f}, f != ""
}

func (c offsetClock) Now() time.Time {
	b, _ := os.ReadFile(c.file)
	d, _ := time.ParseDuration(strings.TrimSpace(string(b)))
	return time.Now().Add(d)
}

func (offsetClock) After(d time.Duration) <-chan time.Time { return time.After(d) }
