#!/usr/bin/env bash
# Create .venv with the CPU build of torch 2.13.0 and install robustopt (editable) into it.
# Idempotent: a second run only checks that everything is there.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  "${PYTHON:-python3}" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
pip_quiet() { python -m pip install --disable-pip-version-check -q "$@"; }
# Pin torch first: an unpinned 'torch' would pull a multi-GB CUDA build.
python -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '2.13.0')" 2>/dev/null \
  || pip_quiet "torch==2.13.0"
pip_quiet -e ".[test]"
