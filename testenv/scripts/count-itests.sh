#!/usr/bin/env bash
# Summarises the integration-test log written by testenv (VIRTKEEP_ITEST_LOG).
set -u
log=$1
if [ ! -s "$log" ]; then
  echo "integration tests against real libvirt/QEMU: 0 ran"
  exit 0
fi
pass=$(grep -c '^PASS ' "$log")
fail=$(grep -c '^FAIL ' "$log")
skip=$(grep -c '^SKIP ' "$log")
echo "integration tests against real libvirt/QEMU: $((pass + fail)) ran ($pass passed, $fail failed), $skip skipped"
grep '^NOTE ' "$log" | sed 's/^NOTE /  /'
if [ "$skip" -gt 0 ]; then
  grep '^SKIP ' "$log" | sed 's/^/  /'
fi
