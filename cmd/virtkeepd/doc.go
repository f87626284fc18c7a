// Command virtkeepd is the virtkeep daemon: it runs beside libvirtd under
// systemd, schedules and runs backup jobs, and serves the virtkeep CLI over a
// unix socket.
package main
