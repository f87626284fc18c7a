#!/usr/bin/env bash
# What a test run left behind: vk-* domains, mounts, loop devices, NBD and
# FUSE processes, test servers and scratch directories. make test takes a
# snapshot before the run and fails when the run added to it.
#   leftovers.sh snapshot FILE   record what exists now
#   leftovers.sh check FILE      fail (exit 1) listing what is new since
set -u
TESTENV=${VIRTKEEP_TESTENV_DIR:-/var/tmp/virtkeep-testenv}
URI=${VIRTKEEP_LIBVIRT_URI:-qemu:///system}

state() {
  virsh -c "$URI" list --all --name 2>/dev/null | grep '^vk-' | sed 's/^/domain /'
  awk '{print $5}' /proc/self/mountinfo | grep -E "^($TESTENV|/tmp/)|/mounts/m-" | sed 's/^/mount /'
  losetup -a -O NAME,BACK-FILE --noheadings 2>/dev/null | grep -E "$TESTENV|/tmp/|/mounts/m-" | sed 's/^/loop /'
  pgrep -a -f 'nbdfuse|qemu-nbd|versitygw|\.test -test\.run=\^\$|sshd -D -f /var/tmp' 2>/dev/null | grep -v -e pgrep -e leftovers.sh | sed 's/^[0-9]* /process /'
  find "$TESTENV" -mindepth 1 -maxdepth 1 2>/dev/null | sed 's/^/dir /'
  find /tmp -maxdepth 1 \( -name 'vk-restore-*' -o -name 'vk-nbd-*' \) 2>/dev/null | sed 's/^/dir /'
}

case ${1:-} in
snapshot)
  state | sort -u > "$2"
  ;;
check)
  # Children of killed servers and FUSE daemons exit a moment after the
  # tests: look again for a few seconds before calling them left behind.
  for i in $(seq 1 20); do
    new=$(state | sort -u | comm -13 "$2" -)
    [ -z "$new" ] && { echo "leftovers: none"; exit 0; }
    sleep 0.5
  done
  echo "leftovers: the tests left these behind:"
  echo "$new" | sed 's/^/  /'
  exit 1
  ;;
*)
  echo "usage: $0 snapshot|check FILE" >&2
  exit 2
  ;;
esac
