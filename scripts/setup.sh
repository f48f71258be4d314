#!/usr/bin/env bash
# Creates .venv with pyroib and its test tools, and installs Fashion-MNIST's files when they are missing.
# Sourced by scripts/main.sh and scripts/test.sh; safe to run again (it skips what is already there).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.pyroib-installed
if [[ ! -f $stamp || pyproject.toml -nt $stamp ]]; then
  .venv/bin/pip install --quiet --upgrade pip >/dev/null
  .venv/bin/pip install --quiet -e ".[dev]"
  touch "$stamp"
fi
fm=/usr/share/datasets/fashion-mnist
if [[ ! -f $fm/train-images-idx3-ubyte.gz && -z ${PYROIB_DATA_DIR:-} ]]; then
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    echo "installing Debian's dataset-fashion-mnist ..." >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist) >/dev/null \
      || echo "could not install dataset-fashion-mnist; Fashion-MNIST runs need --data-dir" >&2
  else
    echo "Fashion-MNIST files not found: run 'sudo apt-get install dataset-fashion-mnist' or set PYROIB_DATA_DIR" >&2
  fi
fi
