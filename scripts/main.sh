#!/usr/bin/env bash
# The main job: train a β-VAE on Fashion-MNIST, evaluate it on the test split and write its report.
# Extra arguments go to `pyroib train` (e.g. --epochs 5 --device cuda).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup.sh
out=${PYROIB_OUT:-runs/fashion-beta-vae}
resume=(); [[ -f $out/checkpoint.pt ]] && resume=(--resume)
.venv/bin/pyroib train --model beta-vae --dataset fashion-mnist --beta 4 --latent-dim 20 --epochs 20 \
  --seed 0 --device auto --out "$out" "${resume[@]}" "$@"
.venv/bin/pyroib evaluate "$out" --split test --iw-samples 100 | tee "$out/test-evaluation.txt"
.venv/bin/pyroib report "$out"
echo "report: $out/report/report.md"
