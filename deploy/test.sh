#!/usr/bin/env bash
# The whole test suite on a fresh machine: install everything (apt, pip, Maven), lint, test.
# The tests start real Kafka, ClickHouse 18.16, SIPp and pjsua2 peers themselves.
set -euo pipefail
cd "$(dirname "$0")/.."
./deploy/install.sh
PY=${PYTHON:-python3}
"$PY" -m ruff check .
exec "$PY" -m pytest -q -p no:cacheprovider "$@"
