#!/usr/bin/env bash
# Generates the Python gRPC stubs of the aggregator's API from proto/ (they are not committed):
#   bash examples/python/generate.sh [OUT_DIR]      (default: examples/python/gen)
# Needs grpcio-tools (pip install -r examples/python/requirements.txt).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
out="${1:-$root/examples/python/gen}"
python="${PYTHON:-python3}"
mkdir -p "$out"
"$python" -m grpc_tools.protoc -I "$root/proto/proto" --python_out="$out" --grpc_python_out="$out" \
  cni_metrics/v1/ingest.proto cni_metrics/v1/consumer.proto
echo "stubs in $out"
