#!/usr/bin/env bash
# Set up on a fresh machine and run the demo: reconstruct the shipped brain sample (real
# Colin27 T1 slice, simulated single-coil k-space, noise sigma 0.01) at 4x with a 2-D
# Poisson-disc mask, with zero filling, TV and wavelets side by side; the figures, metrics and
# reconstructions land in ./demo.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==2.13.0"   # the CPU wheel first
.venv/bin/python -m pip install -q -e ".[napari]"
.venv/bin/napari-genreg compare sample:brain --mask poisson --acceleration 4 \
  --noise-sigma 0.01 --regularizers zero-filled,least-squares,tv,wavelet --out-dir demo "$@"
