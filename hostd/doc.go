// Package hostd holds the daemon's packages and no code of its own: the
// service interface and its wire types (api), its implementation (service),
// the job engine (jobs), the SQLite catalog (catalog), the API server and
// client on the unix socket (apiserver, client), virtkeepd's life (daemon),
// and the operations (backup, chain, restore, domain, exports, mount, boot,
// recovery, virt, statedir, layout). deps_test.go holds the import rules.
package hostd
