// Package sftp is the repository backend on a directory of an SSH server,
// reached with the SFTP protocol (OpenSSH's sftp-server or internal-sftp).
//
// The SSH client is in-process (golang.org/x/crypto/ssh): it authenticates
// with a private key file and verifies the server against a known_hosts
// file, never trusting an unknown host key. Objects are files laid out as
// in the local backend. A put writes a temporary file next to its object,
// fsyncs it when the server offers fsync@openssh.com, and renames it into
// place with posix-rename@openssh.com, so readers see an object whole or
// not at all and a completed put survives a crash of the server. Several
// SSH connections carry requests side by side; a lost connection is dialled
// again on the next request.
package sftp
