#!/usr/bin/env bash
# Install into .venv (scripts/install.sh), then run the offline demo into demo_out/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export MALLOC_TRIM_THRESHOLD_=${MALLOC_TRIM_THRESHOLD_:-68719476736}
exec .venv/bin/frerec demo --out "${1:-demo_out}"
