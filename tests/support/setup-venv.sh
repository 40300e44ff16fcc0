#!/usr/bin/env bash
# Creates the Python environment the tests use (moto's server as the CloudWatch/STS emulator, cbor2 for
# the Smithy RPC v2 CBOR <-> JSON translator, kubernetes-validate, grpcio + grpcio-tools for the Python
# client example, cfn-lint for the CloudWatch alarms template) under target/test-venv. Idempotent.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
venv="${CNI_METRICS_TEST_VENV:-$root/target/test-venv}"
if "$venv/bin/python" -c 'import moto, cbor2, flask, kubernetes_validate, grpc, grpc_tools, cfnlint' 2>/dev/null; then
  exit 0
fi
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check -r "$root/tests/support/requirements.txt"
"$venv/bin/python" -c 'import moto, cbor2; print("test venv ready: moto", moto.__version__)'
