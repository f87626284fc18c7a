// Package guestagent talks to qemu-guest-agent: filesystem freeze and thaw
// around the instant a backup starts, and in-guest application hooks. Its
// cleanup paths never leave a guest frozen.
package guestagent
