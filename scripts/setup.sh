#!/usr/bin/env bash
# Idempotent set-up shared by scripts/bench.sh and scripts/test.sh: system packages (apt, only when
# missing), a virtual environment in .venv, torch, then the project with its test extras.
# A second run finds everything in place and returns in about a second.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(pkg-config libopencv-dev libturbojpeg0-dev)
VENV=${DEEPNETS_VENV:-.venv}
PYTHON=${PYTHON:-python3}

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ! "$PYTHON" -c "import ensurepip, venv" 2>/dev/null; then missing+=(python3-venv); fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing system packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PY="$VENV/bin/python"

# Reinstall the project only when its declared dependencies change.
stamp="$VENV/.deepnets-installed"
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  "$PY" -m pip install -q --upgrade pip setuptools wheel
  # torch is not pinned by the project (a GPU machine brings its own); on this Debian image these
  # exact releases come from the local wheel cache instead of a multi-GB download.
  if ! "$PY" -c "import torch, torchvision" 2>/dev/null; then
    echo "setup: installing torch and torchvision"
    "$PY" -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
  fi
  echo "setup: installing deepnets-bench and its dependencies (ffcv builds from source once)"
  # ffcv's setup.py imports numpy and pkgconfig at build time, so it builds against the venv.
  "$PY" -m pip install -q numpy pkgconfig Cython
  "$PY" -m pip install -q --no-build-isolation -e ".[test]"
  echo "$want" > "$stamp"
fi
