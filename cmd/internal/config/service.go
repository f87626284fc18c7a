package config

import (
	"log/slog"
	"os"
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
