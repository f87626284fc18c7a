// Command virtkeep is the virtkeep command-line interface: flags, output
// and exit codes over api.Service — virtkeepd's, through its unix socket,
// when it runs, and otherwise the same service in this process under the
// host lock. It imports no libvirt, NBD or repository package.
package main
