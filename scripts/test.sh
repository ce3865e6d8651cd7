#!/usr/bin/env bash
# Set up everything on a fresh Debian/Ubuntu machine and run the whole test suite.
# - Debian packages for napari's GUI tests under a virtual X server (installed when missing);
# - a virtual environment in .venv with the CPU build of PyTorch, then the package and its
#   test extra;
# - pytest (GUI tests run under Xvfb through pytest-xvfb).
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m "not slow"`.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
for pkg in xvfb libxcb-icccm4 libxcb-keysyms1; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}"
fi

PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# The CPU wheel first: a bare `torch` requirement would pull a CUDA build of several GB.
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[test]"

# napari writes settings and caches: keep them out of the user's home.
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
export XDG_CACHE_HOME="$scratch/cache" XDG_CONFIG_HOME="$scratch/config"
export MPLBACKEND=Agg

.venv/bin/ruff check src tests benchmarks tools
.venv/bin/ruff format --check src tests benchmarks tools
.venv/bin/lint-imports
.venv/bin/python -m pytest "$@"
