#!/usr/bin/env bash
# The aarch64 toolchain, made once and kept outside the clone (~/.cache/cni-metrics-helper/arm64-sid-v1, or
# ARM64_ROOT; v1 is the package set below: change it with them), so a fresh clone reuses it: a Debian sid root
# (debootstrap, minbase) with sid's rustc and cargo and the aarch64 standard library of exactly that
# compiler (libstd-rust-dev:arm64), the aarch64 C cross compiler and libc. The host's rustup cannot add
# targets here (no rustup server is reachable), and bookworm's own Rust is too old for the lock file.
# Needs root (debootstrap, chroot) and a Debian mirror (DEBIAN_MIRROR, default deb.debian.org).
# Prints the compiler's version. `scripts/build-images.sh` calls it; it is a no-op once the root is ready.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dir="${ARM64_ROOT:-${CNI_METRICS_CACHE:-$HOME/.cache/cni-metrics-helper}/arm64-sid-v1}"
ready="$dir/.cni-metrics-toolchain-ready"
packages=(rustc cargo libstd-rust-dev:arm64 gcc-aarch64-linux-gnu libc6-dev-arm64-cross ca-certificates)
if [ ! -f "$ready" ]; then
  [ "$(id -u)" = 0 ] || { echo "arm64-toolchain: making the sid root needs root (debootstrap, chroot)" >&2; exit 1; }
  command -v debootstrap >/dev/null || { echo "arm64-toolchain: debootstrap is not installed (apt-get install debootstrap)" >&2; exit 1; }
  started=$(date +%s)
  rm -rf "$dir"
  mkdir -p "$dir"
  debootstrap --variant=minbase sid "$dir" "${DEBIAN_MIRROR:-http://deb.debian.org/debian}" >"$dir.debootstrap.log" 2>&1 ||
    { tail -n 20 "$dir.debootstrap.log" >&2; exit 1; }
  # The mirror's sid Release can be past its Valid-Until.
  echo 'Acquire::Check-Valid-Until "false";' >"$dir/etc/apt/apt.conf.d/99cni-metrics-valid-until"
  cp /etc/resolv.conf "$dir/etc/resolv.conf" 2>/dev/null || true
  chroot "$dir" dpkg --add-architecture arm64
  chroot "$dir" apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive chroot "$dir" apt-get install -y -q --no-install-recommends "${packages[@]}" >"$dir.apt.log" 2>&1 ||
    { tail -n 20 "$dir.apt.log" >&2; exit 1; }
  chroot "$dir" apt-get clean
  touch "$ready"
  echo "arm64-toolchain: sid root ready in $(( $(date +%s) - started )) s at $dir" >&2
fi
chroot "$dir" rustc --version
