// Package nbd is a Network Block Device protocol client and server, written
// to the NBD protocol specification (fixed newstyle handshake, structured
// replies, block status with meta contexts). It never imports libvirt or QMP.
package nbd
