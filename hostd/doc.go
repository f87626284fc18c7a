// Package hostd is the virtkeep daemon core: the job engine that runs backups
// and restores, the scheduler, the SQLite catalog of backup points, and the API
// the virtkeep CLI speaks over a unix socket. Only cmd/ imports it.
package hostd
