// Package systemd holds the virtkeepd unit files and the sd_notify glue
// (readiness, watchdog, status) used when the daemon runs under systemd.
package systemd
