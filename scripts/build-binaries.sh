#!/usr/bin/env bash
# Static release binaries of the agent and the production aggregator (no `demo` feature) for one
# architecture: `scripts/build-binaries.sh amd64|arm64`. amd64 builds on the host; arm64 builds inside
# the sid root of scripts/arm64-toolchain.sh with sid's rustc and the aarch64 standard library, from the
# crates the host fetched (offline, locked). Prints the compiler's version on stderr and the directory
# holding the two binaries on stdout. PROFILE=dev builds unoptimised (quicker; the images use release).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
arch="${1:?usage: build-binaries.sh amd64|arm64}"
profile="${PROFILE:-release}"
case "$profile" in
  release) profile_flag=(--release) out=release ;;
  dev) profile_flag=() out=debug ;;
  *) echo "PROFILE is release or dev" >&2; exit 2 ;;
esac
packages=(--no-default-features -p cni-metrics-agent -p cni-metrics-aggregator)
case "$arch" in
  amd64)
    target=x86_64-unknown-linux-gnu
    echo "amd64 toolchain: $(rustc --version)" >&2
    RUSTFLAGS="-C target-feature=+crt-static" cargo build --locked -q "${profile_flag[@]}" --target "$target" "${packages[@]}" >&2
    echo "${CARGO_TARGET_DIR:-$root/target}/$target/$out"
    ;;
  arm64)
    target=aarch64-unknown-linux-gnu
    sid="${ARM64_ROOT:-${CNI_METRICS_CACHE:-$HOME/.cache/cni-metrics-helper}/arm64-sid-v1}"
    bash "$root/scripts/arm64-toolchain.sh" >/dev/null
    echo "arm64 toolchain: $(chroot "$sid" rustc --version) (Debian sid, libstd-rust-dev:arm64)" >&2
    cargo fetch --locked -q >&2
    cargo_home="${CARGO_HOME:-$HOME/.cargo}"
    mkdir -p "$sid/work/src" "$sid/work/cargo/registry"
    # The bind mounts live in a mount namespace of their own (unshare): they vanish with the build, even
    # when it is killed, so a later `rm -rf target` can never reach the source or the crate registry
    # through them (a killed build that left them in the host's namespace once emptied ~/.cargo/registry).
    build="cd /work/src && cargo build --offline --locked -q ${profile_flag[*]} --target $target ${packages[*]}"
    # Its own target directory: the host's artifacts are of another compiler.
    unshare --mount --propagation private sh -c '
      mount --bind "$1" "$3/work/src" && mount --bind "$2" "$3/work/cargo/registry" &&
      exec chroot "$3" env -i PATH=/usr/bin:/bin HOME=/root CARGO_HOME=/work/cargo CARGO_TARGET_DIR=/work/src/target/arm64 \
        CARGO_TERM_COLOR=never RUSTFLAGS="-C target-feature=+crt-static" \
        CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc sh -c "$4"' \
      sh "$root" "$cargo_home/registry" "$sid" "$build" >&2
    echo "$root/target/arm64/$target/$out"
    ;;
  *) echo "architecture $arch: amd64 or arm64" >&2; exit 2 ;;
esac
