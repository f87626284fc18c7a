// Command virtkeep is the virtkeep command-line interface: a virsh-style
// front end for backing up, listing, restoring and verifying KVM/libvirt
// virtual machines.
package main
