package config

import (
	"log/slog"

	"github.com/virtkeep/virtkeep/hostd/daemon"
	"github.com/virtkeep/virtkeep/hostd/service"
)

// Service is the service configuration c describes.
func (c *Config) Service(version string, log *slog.Logger) service.Config {
	sc := service.Config{Version: version, StateDir: c.StateDir, LibvirtURI: c.LibvirtURI, BootFileDirs: c.BootFileDirs,
		MaxJobs: c.MaxJobs, MaxJobsPerTarget: c.MaxJobsPerTarget, Log: log}
	for _, t := range c.Targets {
		sc.Targets = append(sc.Targets, service.Target{Name: t.Name, Open: t.Open()})
	}
	return sc
}

// Daemon is the daemon configuration c describes.
func (c *Config) Daemon(version string, log *slog.Logger) daemon.Config {
	return daemon.Config{Service: c.Service(version, log), Socket: c.Socket, SocketGroup: c.SocketGroup,
		ShutdownTimeout: c.ShutdownTimeout, ReconcileInterval: c.ReconcileInterval, Log: log}
}
