#!/usr/bin/env bash
# Set everything up, then run the end-to-end demo (a few minutes on 2 CPU cores).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. scripts/env.sh
. .venv/bin/activate
robustopt demo --out runs "$@"
