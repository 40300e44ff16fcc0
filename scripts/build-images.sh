#!/usr/bin/env bash
# Build both images for amd64 and arm64 without a Docker daemon: static release binaries per architecture
# (scripts/build-binaries.sh: amd64 on the host, arm64 with Debian sid's toolchain in ~/.cache/cni-metrics-helper/arm64-sid-v1,
# made once), then `buildah` (vfs storage, chroot isolation) from `FROM scratch`, one image per
# architecture, gathered in one OCI image index per component and exported with every manifest as an OCI
# archive: target/images/cni-metrics-agent.tar and target/images/cni-metrics-aggregator.tar.
#   ARCHS="amd64 arm64" (default); ARCHS=amd64 for a quick local build of one architecture.
# The compiler of each architecture is printed and recorded in the image label cni-metrics.build.toolchain.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
read -r -a archs <<<"${ARCHS:-amd64 arm64}"
version="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)"
revision="$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)"
ctx_root="target/image-context"
rm -rf "$ctx_root" && mkdir -p "$ctx_root" target/images
declare -A toolchain machine=([amd64]="X86-64" [arm64]="AArch64")
for arch in "${archs[@]}"; do
  [ -n "${machine[$arch]:-}" ] || { echo "unknown architecture $arch (amd64, arm64)" >&2; exit 2; }
  started=$(date +%s)
  bin_dir="$(bash scripts/build-binaries.sh "$arch" 2>"$ctx_root/$arch.build.log")" || { cat "$ctx_root/$arch.build.log" >&2; exit 1; }
  toolchain[$arch]="$(sed -n "s/^$arch toolchain: //p" "$ctx_root/$arch.build.log")"
  echo "$arch: binaries built in $(( $(date +%s) - started )) s with ${toolchain[$arch]}"
  ctx="$ctx_root/$arch"
  mkdir -p "$ctx"
  cp "$bin_dir/cni-metrics-agent" "$bin_dir/cni-metrics-aggregator" "$ctx/"
  cp /etc/ssl/certs/ca-certificates.crt "$ctx/"
  for file in "$ctx"/cni-metrics-*; do
    header="$(readelf -h "$file")"
    grep -q "Machine: *.*${machine[$arch]}" <<<"$header" || { echo "$file is not an ${machine[$arch]} binary" >&2; exit 1; }
    if readelf -l "$file" | grep -q INTERP; then
      echo "$file is not static" >&2
      exit 1
    fi
    echo "  $(basename "$file"): $(stat -c %s "$file") bytes, ${machine[$arch]}, static"
  done
done
bah=(buildah --storage-driver vfs)
for name in agent aggregator; do
  image="cni-metrics-$name:$version"
  "${bah[@]}" manifest rm "$image" >/dev/null 2>&1 || "${bah[@]}" rmi -f "$image" >/dev/null 2>&1 || true
  "${bah[@]}" manifest create "$image" >/dev/null
  for arch in "${archs[@]}"; do
    "${bah[@]}" bud -q --isolation chroot --platform "linux/$arch" --build-arg "VERSION=$version" --build-arg "REVISION=$revision" \
      --build-arg "TOOLCHAIN=${toolchain[$arch]}" -f "Dockerfile.$name" -t "$image-$arch" "$ctx_root/$arch" >/dev/null
    "${bah[@]}" manifest add "$image" "$image-$arch" >/dev/null
  done
  rm -f "target/images/cni-metrics-$name.tar"
  "${bah[@]}" manifest push -q --all "$image" "oci-archive:target/images/cni-metrics-$name.tar:$image"
done
ls -l target/images
