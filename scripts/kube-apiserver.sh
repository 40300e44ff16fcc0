#!/usr/bin/env bash
# A real Kubernetes API server (v1.20.2) with etcd, on loopback only, for the deploy tests (the Helm
# chart's `kubectl apply --dry-run=server`, `helm install/upgrade/uninstall`).
#
#   scripts/kube-apiserver.sh build        build (or find) the cached binaries; prints the kube-apiserver path
#   scripts/kube-apiserver.sh start DIR    start etcd and kube-apiserver; writes DIR/kubeconfig, exits 0 once
#                                          /readyz answers (DIR/apiserver.log, DIR/etcd.log on failure)
#   scripts/kube-apiserver.sh stop DIR     stop both by their pid files
#
# No registry serves a kube-apiserver binary here, so it is built once from Debian bookworm's source package
# `kubernetes` (1.20.5+really1.20.2: the full upstream v1.20.2 tree with vendor/) with Debian's Go 1.19,
# offline, CGO_ENABLED=0, in GOPATH mode: about 13 min on 2 cores. The result is cached outside the clone
# under $CNI_METRICS_CACHE (default ~/.cache/cni-metrics-helper), keyed by version, with Debian's etcd 3.4.23
# beside it. Debian packages are downloaded and unpacked into the cache, never installed, and a private apt
# configuration (its own sources list and lists) leaves the system's untouched.
set -euo pipefail

KUBE_VERSION=v1.20.2
DEB_SOURCE_VERSION="1.20.5+really1.20.2-1.1+deb12u1"
GO_PACKAGE=golang-1.19
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SECURITY_MIRROR="${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"
CACHE="${CNI_METRICS_CACHE:-$HOME/.cache/cni-metrics-helper}"
# The build's revision: r2 replaces the vendored reflect2 1.0.1, whose map iteration crashes the server
# (SIGSEGV in json-iterator's sortKeysMapEncoder) on custom resources when built with Go >= 1.18, with
# Debian's reflect2 1.0.2, the release that fixed it.
BUILD_REVISION=r2
HOME_DIR="$CACHE/kube-apiserver-$KUBE_VERSION-$BUILD_REVISION"
BIN="$HOME_DIR/bin"

log() { echo "kube-apiserver.sh: $*" >&2; }
die() { log "$*"; exit 1; }

# A private apt: bookworm's deb and deb-src lines, its own lists and archive cache.
private_apt() {
  local apt="$1"
  mkdir -p "$apt/lists/partial" "$apt/archives/partial"
  local keyring=/usr/share/keyrings/debian-archive-keyring.gpg
  cat >"$apt/sources.list" <<EOF
deb [signed-by=$keyring] $MIRROR bookworm main
deb-src [signed-by=$keyring] $MIRROR bookworm main
deb [signed-by=$keyring] $SECURITY_MIRROR bookworm-security main
deb-src [signed-by=$keyring] $SECURITY_MIRROR bookworm-security main
EOF
  cat >"$apt/apt.conf" <<EOF
Dir::Etc::SourceList "$apt/sources.list";
Dir::Etc::SourceParts "$apt/none";
Dir::State::Lists "$apt/lists";
Dir::Cache "$apt";
Dir::Cache::archives "$apt/archives";
APT::Sandbox::User "root";
EOF
  APT_CONFIG="$apt/apt.conf" apt-get update -q >/dev/null || die "apt-get update failed (mirror $MIRROR)"
}

# Downloads Debian binary packages and unpacks them under ROOT (no install, no maintainer scripts).
unpack_debs() {
  local apt="$1" root="$2"
  shift 2
  mkdir -p "$root" "$apt/debs"
  (cd "$apt/debs" && APT_CONFIG="$apt/apt.conf" apt-get download -q "$@" >/dev/null) ||
    die "could not download $*"
  local deb
  for deb in "$apt"/debs/*.deb; do dpkg-deb -x "$deb" "$root"; done
}

build() {
  if [ -x "$BIN/kube-apiserver" ] && [ -x "$BIN/etcd" ]; then
    echo "$BIN/kube-apiserver"
    return
  fi
  command -v apt-get >/dev/null || die "needs apt-get (Debian) to fetch the source and Go"
  local work="$CACHE/build-$KUBE_VERSION"
  rm -rf "$work" && mkdir -p "$work"
  local started=$SECONDS
  private_apt "$work/apt"
  log "downloading Debian's kubernetes $DEB_SOURCE_VERSION source, Go 1.19, rsync and etcd"
  unpack_debs "$work/apt" "$work/root" "$GO_PACKAGE-go" "$GO_PACKAGE-src" rsync libpopt0 libxxhash0 etcd-server \
    golang-github-modern-go-reflect2-dev
  (cd "$work" && APT_CONFIG="$work/apt/apt.conf" apt-get source -q --download-only \
    "kubernetes=$DEB_SOURCE_VERSION" >/dev/null) || die "could not download the kubernetes source"
  local orig
  orig=$(ls "$work"/kubernetes_*.orig.tar.* | head -n 1)
  mkdir -p "$work/gopath/src/k8s.io/kubernetes"
  tar -xf "$orig" -C "$work/gopath/src/k8s.io/kubernetes" --strip-components=1
  local reflect2="$work/gopath/src/k8s.io/kubernetes/vendor/github.com/modern-go/reflect2"
  rm -rf "$reflect2" && cp -r "$work/root/usr/share/gocode/src/github.com/modern-go/reflect2" "$reflect2"
  log "building kube-apiserver $KUBE_VERSION (about 13 min on 2 cores)"
  local goroot="$work/root/usr/lib/go-1.19"
  (
    cd "$work/gopath/src/k8s.io/kubernetes"
    export GOROOT="$goroot" GOPATH="$work/gopath" GO111MODULE=off GOFLAGS=-p=1 CGO_ENABLED=0
    export GOCACHE="$work/gocache" GOTOOLCHAIN=local
    export PATH="$goroot/bin:$work/root/usr/bin:$PATH"
    export LD_LIBRARY_PATH="$work/root/usr/lib/x86_64-linux-gnu:$work/root/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    # The version the binary reports (the tarball has no .git).
    export KUBE_GIT_VERSION="$KUBE_VERSION" KUBE_GIT_TREE_STATE=clean
    make WHAT=cmd/kube-apiserver >"$work/make.log" 2>&1
  ) || { tail -n 30 "$work/make.log" >&2; die "the kube-apiserver build failed (log: $work/make.log)"; }
  mkdir -p "$BIN"
  cp "$work/gopath/src/k8s.io/kubernetes/_output/bin/kube-apiserver" "$BIN/kube-apiserver.tmp"
  cp "$work/root/usr/bin/etcd" "$BIN/etcd"
  mv "$BIN/kube-apiserver.tmp" "$BIN/kube-apiserver"
  rm -rf "$work"
  log "built $("$BIN/kube-apiserver" --version) ($BUILD_REVISION) in $((SECONDS - started)) s; cached in $BIN"
  echo "$BIN/kube-apiserver"
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

start() {
  local dir="$1"
  build >/dev/null
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  local etcd_port peer_port api_port token
  etcd_port=$(free_port)
  peer_port=$(free_port)
  api_port=$(free_port)
  token=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
  echo "$token,admin,admin-uid,system:masters" >"$dir/tokens.csv"
  openssl genrsa -out "$dir/sa.key" 2048 2>/dev/null
  openssl rsa -in "$dir/sa.key" -pubout -out "$dir/sa.pub" 2>/dev/null
  "$BIN/etcd" --name test --data-dir "$dir/etcd" \
    --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
    --initial-cluster "test=http://127.0.0.1:$peer_port" >"$dir/etcd.log" 2>&1 &
  echo $! >"$dir/etcd.pid"
  "$BIN/kube-apiserver" --etcd-servers "http://127.0.0.1:$etcd_port" \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$api_port" \
    --cert-dir "$dir/certs" --token-auth-file "$dir/tokens.csv" --authorization-mode RBAC \
    --service-account-issuer https://kubernetes.default.svc \
    --service-account-key-file "$dir/sa.pub" --service-account-signing-key-file "$dir/sa.key" \
    --service-cluster-ip-range 10.96.0.0/24 >"$dir/apiserver.log" 2>&1 &
  echo $! >"$dir/apiserver.pid"
  cat >"$dir/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
  - name: test
    cluster:
      server: https://127.0.0.1:$api_port
      insecure-skip-tls-verify: true
users:
  - name: admin
    user:
      token: $token
contexts:
  - name: test
    context: {cluster: test, user: admin, namespace: default}
current-context: test
EOF
  local i
  for i in $(seq 1 120); do
    if curl -skf -H "Authorization: Bearer $token" "https://127.0.0.1:$api_port/readyz" >/dev/null 2>&1; then
      log "ready on https://127.0.0.1:$api_port after ${i}x0.5 s (kubeconfig: $dir/kubeconfig)"
      return 0
    fi
    if ! kill -0 "$(cat "$dir/apiserver.pid")" 2>/dev/null || ! kill -0 "$(cat "$dir/etcd.pid")" 2>/dev/null; then
      break
    fi
    sleep 0.5
  done
  tail -n 20 "$dir/etcd.log" "$dir/apiserver.log" >&2 || true
  stop "$dir"
  die "the API server did not become ready"
}

stop() {
  local dir="$1" name pid
  for name in apiserver etcd; do
    [ -f "$dir/$name.pid" ] || continue
    pid=$(cat "$dir/$name.pid")
    if kill "$pid" 2>/dev/null; then
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$dir/$name.pid"
  done
}

case "${1:-}" in
  build) build ;;
  start) [ $# -eq 2 ] || die "usage: $0 start DIR"; start "$2" ;;
  stop) [ $# -eq 2 ] || die "usage: $0 stop DIR"; stop "$2" ;;
  *) die "usage: $0 build | start DIR | stop DIR" ;;
esac
