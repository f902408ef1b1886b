#!/usr/bin/env bash
# Installs the Debian packages Wrenn needs on a host (run as root). Safe to run again.
set -euo pipefail
packages=(
  qemu-system-x86 qemu-utils          # the VMM and qcow2 tooling
  debootstrap e2fsprogs lz4 kmod cpio  # the image builder
  iproute2 iptables conntrack          # network slots
  ca-certificates curl fonts-dejavu-core  # fonts-dejavu-core: text of the benchmark chart
)
if [ "${1:-}" = "--with-test-deps" ]; then
  packages+=(postgresql)               # the PostgreSQL store suite starts its own server
fi
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "==> installing: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
if ! command -v cargo >/dev/null; then
  echo "error: no Rust toolchain (cargo) on PATH; install one with rustup first" >&2
  exit 1
fi
