#!/usr/bin/env bash
# make demo: virtkeep's main job end to end on a throwaway domain, with the
# CLI as an operator would use it. Leaves everything as it found it unless
# KEEP=1.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=$PWD/bin/virtkeep
W=/var/tmp/virtkeep-demo
DOM=virtkeep-demo
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }
cleanup() {
  [ "${KEEP:-0}" = 1 ] && { echo "kept $W and domain $DOM"; return; }
  [ -d "$W/mnt" ] && "$BIN" --config "$W/virtkeep.yaml" umount "$W/mnt" 2>/dev/null || true
  virsh -q destroy "$DOM" >/dev/null 2>&1 || true
  virsh -q undefine "$DOM" --checkpoints-metadata >/dev/null 2>&1 || true
  rm -rf "$W"
}
trap cleanup EXIT
virsh -q destroy "$DOM" >/dev/null 2>&1 || true
virsh -q undefine "$DOM" --checkpoints-metadata >/dev/null 2>&1 || true
rm -rf "$W"; mkdir -p "$W/files/etc" "$W/state"; chmod 755 "$W"

say "a domain with a 1 GiB qcow2 system disk and an ext4 data disk"
qemu-img create -q -f qcow2 "$W/vda.qcow2" 1G
qemu-io -f qcow2 -c "write -P 1 0 64M" -c "write -P 2 512M 32M" "$W/vda.qcow2" >/dev/null
echo "hello from the guest's data disk" > "$W/files/hello.txt"
echo "answer=42" > "$W/files/etc/app.conf"
truncate -s 64M "$W/vdb.raw"; mkfs.ext4 -q -F -d "$W/files" "$W/vdb.raw"
type=qemu; [ -w /dev/kvm ] && type=kvm
cat > "$W/dom.xml" <<XML
<domain type='$type'><name>$DOM</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>
<os><type arch='x86_64' machine='q35'>hvm</type></os><devices>
<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='$W/vda.qcow2'/><target dev='vda' bus='virtio'/></disk>
<disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='$W/vdb.raw'/><target dev='vdb' bus='virtio'/></disk>
<controller type='usb' model='none'/><memballoon model='none'/></devices></domain>
XML
virsh -q define "$W/dom.xml" >/dev/null
virsh -q start "$DOM" --paused
cat > "$W/virtkeep.yaml" <<YAML
version: 1
state_dir: $W/state
targets:
  - {name: local, kind: local, path: $W/repo}
  - {name: offsite, kind: local, path: $W/offsite, key_file: $W/offsite.key}
YAML
V() { run "$BIN" --config "$W/virtkeep.yaml" "$@"; }

say "full backup (the first one is full by itself), then an incremental"
V backup "$DOM"
virsh -q qemu-monitor-command "$DOM" --hmp 'qemu-io -d virtio-disk0/virtio-backend "write -P 9 100M 8M"' >/dev/null
V backup "$DOM"
say "an encrypted offsite target keeps its own chain"
V backup "$DOM" --target offsite
V list
V --json info "$DOM@latest"
say "verify every chunk of every target"
V verify --all --read-data
say "restore the latest point as files, verified"
V restore "$DOM@latest" --to "$W/restored" --verify
ls -ls "$W/restored"
say "file-level restore: mount the data disk read-only"
V mount "$DOM@latest" "$W/mnt" --disk vdb
run cat "$W/mnt/disk/hello.txt" "$W/mnt/disk/etc/app.conf"
V umount "$W/mnt"
say "done"
