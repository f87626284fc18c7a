#!/usr/bin/env bash
# Builds the tiny test guest testenv boots: Debian's cloud kernel and an
# initramfs with busybox, qemu-guest-agent and an init that mounts /dev/vda
# (ext4) on /data and runs the agent. No network: everything comes from
# Debian packages (apt-get download) and the host's qemu-ga. The result is
# cached in OUT (default /var/lib/virtkeep/testguest); a second run with the
# same inputs does nothing.
#
# Facts that shaped it: the cloud kernel has ext4, devtmpfs and the serial
# console built in; virtio drivers are modules (uncompressed .ko, loaded in
# order with busybox insmod); there is no udev, so /dev/virtio-ports/<name>
# links are made from sysfs; the host has no cpio, busybox packs the archive.
set -euo pipefail
OUT=${1:-/var/lib/virtkeep/testguest}
say() { echo "guest: $*"; }

for p in busybox-static qemu-guest-agent e2fsprogs; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || {
    say "installing $p"; DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$p" >/dev/null; }
done
kpkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | sed -n 's/.*Depends: \(linux-image-[0-9].*-cloud-amd64\)$/\1/p' | head -1)
if [ -z "$kpkg" ]; then
  apt-get update -q >/dev/null
  kpkg=$(apt-cache depends linux-image-cloud-amd64 | sed -n 's/.*Depends: \(linux-image-[0-9].*-cloud-amd64\)$/\1/p' | head -1)
fi
[ -n "$kpkg" ] || { say "cannot resolve the cloud kernel package"; exit 1; }
gaver=$(dpkg-query -W -f='${Version}' qemu-guest-agent)
stamp="$kpkg $gaver v3"
if [ -f "$OUT/stamp" ] && [ "$(cat "$OUT/stamp")" = "$stamp" ] && [ -f "$OUT/vmlinuz" ] && [ -f "$OUT/initrd" ]; then
  say "cached in $OUT ($stamp)"
  exit 0
fi
work=$(mktemp -d /var/tmp/vk-guest-build.XXXXXX)
trap 'rm -rf "$work"' EXIT
cd "$work"
say "downloading $kpkg"
apt-get download -q "$kpkg" >/dev/null
dpkg-deb -x ./*.deb kernel
vmlinuz=$(ls kernel/boot/vmlinuz-* | head -1)
kver=${vmlinuz#kernel/boot/vmlinuz-}

root=$work/root
mkdir -p "$root"/{bin,sbin,dev,proc,sys,run,tmp,data,etc,lib/modules,var}
ln -s /run "$root/var/run"
cp /bin/busybox "$root/bin/busybox"
for m in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk virtio_console; do
  f=$(find kernel/lib/modules/"$kver" -name "$m.ko*" | head -1)
  [ -n "$f" ] || { say "module $m missing from $kpkg"; exit 1; }
  case "$f" in
    *.ko) cp "$f" "$root/lib/modules/$m.ko" ;;
    *.ko.xz) xz -dc "$f" > "$root/lib/modules/$m.ko" ;;
    *.ko.zst) zstd -qdc "$f" > "$root/lib/modules/$m.ko" ;;
  esac
done
cp /usr/sbin/qemu-ga "$root/sbin/qemu-ga"
ldd /usr/sbin/qemu-ga | grep -o '/[^ ]*' | sort -u | while read -r lib; do
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
done
printf 'root:x:0:0:root:/:/bin/sh\n' > "$root/etc/passwd"
printf 'root:x:0:\n' > "$root/etc/group"
cat > "$root/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs run /run
for m in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk virtio_console; do
  insmod /lib/modules/$m.ko
done
i=0
while [ ! -e /dev/vda ] || [ -z "$(ls /sys/class/virtio-ports 2>/dev/null)" ]; do
  i=$((i+1)); [ $i -gt 100 ] && break; sleep 0.1
done
mkdir -p /dev/virtio-ports
for p in /sys/class/virtio-ports/*; do
  [ -f "$p/name" ] && ln -sf "/dev/$(basename "$p")" "/dev/virtio-ports/$(cat "$p/name")"
done
mount -t ext4 /dev/vda /data && echo "virtkeep-guest: /data mounted" > /dev/ttyS0
echo "virtkeep-guest: starting qemu-ga" > /dev/ttyS0
while true; do
  /sbin/qemu-ga -m virtio-serial -p /dev/virtio-ports/org.qemu.guest_agent.0 -t /run
  echo "virtkeep-guest: qemu-ga exited $?" > /dev/ttyS0
  sleep 1
done
INIT
chmod +x "$root/init"
(cd "$root" && find . | /bin/busybox cpio -o -H newc 2>/dev/null) > initrd
mkdir -p "$OUT"
cp "$vmlinuz" "$OUT/vmlinuz.tmp" && mv "$OUT/vmlinuz.tmp" "$OUT/vmlinuz"
cp initrd "$OUT/initrd.tmp" && mv "$OUT/initrd.tmp" "$OUT/initrd"
chmod 0644 "$OUT/vmlinuz" "$OUT/initrd"
chmod 0755 "$OUT"
echo "$stamp" > "$OUT/stamp"
say "built in $OUT ($stamp, initrd $(du -h "$OUT/initrd" | cut -f1))"
