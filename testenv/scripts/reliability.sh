#!/usr/bin/env bash
# Writes docs/RELIABILITY.md from the rows the fault tests recorded
# (VIRTKEEP_RELIABILITY_LOG) during make reliability.
set -euo pipefail
log=$1
cat <<HEAD
# virtkeep reliability: the fault matrix

Written by \`make reliability\` on $(date -u +%Y-%m-%d) ($(git describe --always --dirty 2>/dev/null || echo unknown),
$(nproc) cores, $(uname -r)). Each row is a fault injected against the real
components (libvirt $(virsh --version 2>/dev/null || echo '?'), QEMU, the S3 server, sshd, local file
systems, the real virtkeepd), how many times, what was checked after each,
the result, and what was lost. \`make test\` runs each row once or twice.

| fault | iterations | checked after each | result | lost | test |
| --- | --- | --- | --- | --- | --- |
HEAD
sort "$log"
fails=$(grep -c '| FAIL |' "$log" || true)
echo
echo "Rows: $(wc -l < "$log"); failed: $fails."
