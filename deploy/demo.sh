#!/usr/bin/env bash
# The main job on a fresh machine: install the Python package, then run the embedded demo
# (B2BUA + simulated callers and carriers over real SIP + the pipeline on a file log and chDB).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
"$PY" -m pip install -q --disable-pip-version-check -e .
exec "$PY" -m sipledger demo "$@"
