#!/usr/bin/env bash
# Set up on a fresh machine and run the main job.
# With a display: napari with the plugin, the brain sample (a real Colin27 T1 slice with
# simulated k-space) and the Reconstruct and Covariance Inspector widgets docked.
# Without one (or with --headless): the equivalent on the command line: reconstruct the sample
# at 4x with a 2-D Poisson-disc mask: zero filling, TV, the vn and vae-structured side by side;
# figures, metrics and reconstructions land in ./demo.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==2.13.0"   # the CPU wheel first
.venv/bin/python -m pip install -q -e ".[napari]"
if [ "${1:-}" != "--headless" ] && { [ -n "${DISPLAY:-}" ] || [ -n "${WAYLAND_DISPLAY:-}" ]; }; then
  exec .venv/bin/napari-genreg-gui
fi
.venv/bin/napari-genreg compare sample:brain --mask poisson --acceleration 4 \
  --noise-sigma 0.01 --regularizers zero-filled,tv,vn,vae-structured --out-dir demo
