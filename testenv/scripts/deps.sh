#!/usr/bin/env bash
# Makes a Debian 12 machine ready to build and test virtkeep: packages,
# virtlogd and libvirtd (there may be no systemd), /dev/kvm usable by the
# QEMU libvirt starts. Idempotent; run as root (make deps).
set -euo pipefail

PACKAGES=(
  gcc pkg-config make git ca-certificates
  libvirt-daemon-system libvirt-clients libvirt-dev
  qemu-system-x86 qemu-utils
  libnbd-bin nbdkit fuse3
  qemu-guest-agent virtnbdbackup
  zstd e2fsprogs procps busybox-static fdisk fuse3 util-linux
  openssh-server openssh-client lvm2 systemd
  xfsprogs btrfs-progs dosfstools
  msmtp-mta dpkg-dev binutils lintian ansible
)

say() { echo "deps: $*"; }

if [ "$(id -u)" -ne 0 ]; then
  say "not root: checking only"
  SUDO=sudo
else
  SUDO=
fi

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# QEMU started by libvirt runs as libvirt-qemu; let it open /dev/kvm. Without
# /dev/kvm, testenv uses TCG (domain type 'qemu').
if [ -c /dev/kvm ]; then
  $SUDO chmod 0666 /dev/kvm
else
  say "no /dev/kvm: tests run QEMU under TCG"
fi

# No systemd as PID 1 on CI machines: start the daemons ourselves.
if ! pgrep -x virtlogd >/dev/null; then
  say "starting virtlogd"
  $SUDO virtlogd -d
fi
if ! pgrep -x libvirtd >/dev/null; then
  say "starting libvirtd"
  $SUDO libvirtd -d
fi
for _ in $(seq 1 100); do
  if virsh -c qemu:///system version >/dev/null 2>&1; then
    break
  fi
  sleep 0.1
done
virsh -c qemu:///system version >/dev/null || { say "libvirtd does not answer"; exit 1; }

install -d -m 0755 /var/tmp/virtkeep-testenv /var/lib/virtkeep 2>/dev/null || true

# A real S3 server for the S3 target's tests: Versity's S3 gateway (Apache
# 2.0) on a POSIX directory, built from the Go module proxy at a pinned
# version (Debian has no S3 server short of Ceph). Built once and cached.
VERSITYGW_VERSION=v1.8.0
S3BIN=/var/lib/virtkeep/bin/versitygw
if [ ! -x "$S3BIN" ] || [ "$(cat "$S3BIN.version" 2>/dev/null)" != "$VERSITYGW_VERSION" ]; then
  say "building versitygw $VERSITYGW_VERSION (S3 server for tests)"
  install -d -m 0755 /var/lib/virtkeep/bin
  GOBIN=/var/lib/virtkeep/bin GOFLAGS=-mod=mod go install "github.com/versity/versitygw/cmd/versitygw@$VERSITYGW_VERSION"
  echo "$VERSITYGW_VERSION" > "$S3BIN.version"
fi
# sshd's privilege separation directory (no systemd to make it).
install -d -m 0755 /run/sshd

# The tiny test guest (kernel + initramfs with qemu-ga), built once and cached.
bash "$(dirname "$0")/../guest/build.sh"
say "ready ($(virsh -c qemu:///system version | sed -n 's/^Running hypervisor: //p'))"
