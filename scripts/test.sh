#!/usr/bin/env bash
# Installs what the tests need, then runs the whole test suite (CPU only, no download).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup.sh
MPLBACKEND=Agg PYROIB_SMOKE=1 .venv/bin/python -m pytest -q "$@"
