#!/usr/bin/env bash
# Installs what the tests need, checks lint and format (ruff), then runs the whole test suite (CPU only, no download).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup.sh
.venv/bin/ruff check --quiet .
.venv/bin/ruff format --check --quiet .
MPLBACKEND=Agg PYROIB_SMOKE=1 .venv/bin/python -m pytest -q "$@"
