#!/usr/bin/env bash
# Build both images without a Docker daemon: static release binaries on the host, then `buildah` (vfs
# storage, chroot isolation) from `FROM scratch`, exported as OCI archives under target/images/.
#   TARGET=x86_64-unknown-linux-gnu (default) or aarch64-unknown-linux-gnu (needs that rustup target and
#   a cross linker: CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
target="${TARGET:-x86_64-unknown-linux-gnu}"
version="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)"
# --no-default-features: the production aggregator has no `demo` (so it links neither the agent nor the
# test fixtures).
RUSTFLAGS="-C target-feature=+crt-static" cargo build --locked --release --target "$target" --no-default-features \
  -p cni-metrics-agent -p cni-metrics-aggregator
ctx="target/image-context"
rm -rf "$ctx" && mkdir -p "$ctx" target/images
cp "target/$target/release/cni-metrics-agent" "target/$target/release/cni-metrics-aggregator" "$ctx/"
cp /etc/ssl/certs/ca-certificates.crt "$ctx/"
for file in "$ctx"/cni-metrics-*; do
  if ldd "$file" 2>&1 | grep -q '=>'; then
    echo "$file is not static" >&2
    exit 1
  fi
done
bah=(buildah --storage-driver vfs)
for name in agent aggregator; do
  "${bah[@]}" bud --isolation chroot --build-arg "VERSION=$version" -f "Dockerfile.$name" -t "cni-metrics-$name:$version" "$ctx"
  rm -f "target/images/cni-metrics-$name.tar"
  "${bah[@]}" push "cni-metrics-$name:$version" "oci-archive:target/images/cni-metrics-$name.tar:cni-metrics-$name:$version"
done
ls -l target/images
