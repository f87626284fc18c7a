// Command virtkeepd is the virtkeep daemon: it runs beside libvirtd under
// systemd, owns the host's backup state (catalog, jobs, sessions), repairs
// what an interrupted run left at start, and serves the virtkeep CLI over
// a unix socket (hostd/daemon).
package main
