#!/usr/bin/env bash
# Idempotent set-up shared by scripts/bench.sh and scripts/test.sh: a Python environment with torch, ffcv and
# this project (editable; with --test, as scripts/test.sh asks, its test extras too). A second run finds everything
# in place and returns at once.
#
# The environment (scripts/env.sh): $DEEPNETS_VENV, else an active virtualenv/conda environment whose Python
# imports torch, else .venv. A new .venv reuses the torch of $PYTHON (default python3) when it has one (CUDA build
# or not: setup says which), else installs torch from the package index:
#   TORCH_VERSION (default 2.14.1; empty: the newest), TORCHVISION_VERSION (0.29.1), TORCH_INDEX_URL (e.g.
#   https://download.pytorch.org/whl/cu126 for a given CUDA build; default: pip's index).
# ffcv: kept when importable; else installed from local wheels (FFCV_WHEELS=DIR, default .device-wheels/ when it
# holds one; no internet needed), else built from the package index, which needs the system packages below
# (apt-get, with sudo only when not root, and only when they are missing).
# The project's requirements are taken from the environment first, with no package index asked: a machine that has
# them all makes no network call. Only what is missing is fetched; where no index answers, one line names it.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh

extra=""
case ${1:-} in
  --test) extra=test ;;
  "") ;;
  *) echo "setup: error: unknown option '$1' (valid: --test, for the test extras)" >&2; exit 2 ;;
esac
extras=${extra:+[$extra]}

PYTHON=${PYTHON:-python3}
TORCH_VERSION=${TORCH_VERSION-2.14.1}
TORCHVISION_VERSION=${TORCHVISION_VERSION-0.29.1}
FFCV_BUILD_PACKAGES=(pkg-config libopencv-dev libturbojpeg0-dev)

apt_install() {  # the Debian packages among "$@" that are missing, installed; root needs no sudo
  local missing=() pkg
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo >/dev/null; then
      echo "setup: error: needs the system packages ${missing[*]} and is not root (no sudo); install them, or" \
           "give FFCV_WHEELS=DIR with prebuilt ffcv wheels" >&2
      exit 1
    fi
    sudo=sudo
  fi
  echo "setup: installing system packages: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

torch_words() {  # "torch 2.x from DIR (CUDA 12.6 build, 8 GPU(s) visible)" for the Python "$1"; fails without torchvision
  "$1" -c "import torch, torchvision; cuda = torch.version.cuda
print(f'torch {torch.__version__} from {torch.__file__.rsplit(\"/torch/\", 1)[0]} ('
      + (f'CUDA {cuda} build, {torch.cuda.device_count()} GPU(s) visible' if cuda else 'no CUDA: a CPU build') + ')')"
}

if [ ! -x "$PY" ]; then
  if "$PYTHON" -c "import torch, torchvision" 2>/dev/null; then
    # Reuse the torch $PYTHON has: a venv that sees its packages, with no pip or setuptools of its own to shadow
    # theirs (torch wants a recent setuptools). --system-site-packages covers a system or conda Python; a
    # virtualenv's own packages are added by a .pth file (a venv made from a venv sees only the base's).
    echo "setup: $PYTHON already has torch; $VENV will use it"
    "$PYTHON" -m venv --system-site-packages --without-pip "$VENV"
    purelib="import sysconfig; print(sysconfig.get_paths()['purelib'])"
    if "$PYTHON" -c "import sys; sys.exit(sys.prefix == sys.base_prefix)"; then  # $PYTHON is a virtualenv's
      "$PYTHON" -c "$purelib" > "$("$PY" -c "$purelib")/deepnets-base.pth"
    fi
    "$PY" -m pip --version >/dev/null 2>&1 || { "$PY" -m ensurepip -q && "$PY" -m pip install -q --upgrade pip setuptools wheel; }
  else
    "$PYTHON" -c "import ensurepip, venv" 2>/dev/null || apt_install python3-venv
    "$PYTHON" -m venv "$VENV"
    "$PY" -m pip install -q --upgrade pip setuptools wheel
  fi
fi

missing_requirements() {  # the requirements of the installed project (and of its extras "$1") that this Python lacks
  "$PY" - "$1" <<'PYTHON'
import sys
from importlib import metadata

try:
    from packaging.requirements import Requirement
except ImportError:  # accelerate's own requirement: without it, nothing else can be checked
    print("packaging")
    sys.exit()
missing = []
for text in metadata.requires("deepnets-bench") or []:
    requirement = Requirement(text)
    if requirement.marker is not None and not requirement.marker.evaluate({"extra": sys.argv[1]}):
        continue
    try:
        if requirement.specifier.contains(metadata.version(requirement.name), prereleases=True):
            continue
    except metadata.PackageNotFoundError:
        pass
    missing.append(str(requirement).split(";")[0].strip())
print(" ".join(missing))
PYTHON
}

# Reinstall the project only when its declared dependencies (or the extras asked for) change; the test extras'
# install serves a later run without them.
stamp="$VENV/.deepnets-installed"
digest=$(sha256sum pyproject.toml | cut -d' ' -f1)
installed=$(cat "$stamp" 2>/dev/null || true)
if [ "$installed" != "$digest$extras" ] && [ "$installed" != "$digest[test]" ]; then
  if words=$(torch_words "$PY" 2>/dev/null); then
    echo "setup: using $words"
  else
    # On this project's CI image these exact releases come from the local wheel cache, not a multi-GB download.
    echo "setup: installing torch ${TORCH_VERSION:-(newest)} and torchvision ${TORCHVISION_VERSION:-(newest)}${TORCH_INDEX_URL:+ from $TORCH_INDEX_URL}"
    "$PY" -m pip install -q "torch${TORCH_VERSION:+==$TORCH_VERSION}" \
      "torchvision${TORCHVISION_VERSION:+==$TORCHVISION_VERSION}" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
  fi
  wheels=${FFCV_WHEELS:-}
  if [ -z "$wheels" ] && compgen -G ".device-wheels/ffcv-*.whl" >/dev/null; then wheels=.device-wheels; fi
  if "$PY" -c "import ffcv" 2>/dev/null; then
    :
  elif [ -n "$wheels" ]; then
    echo "setup: installing ffcv from the wheels in $wheels"
    "$PY" -m pip install -q --no-index --find-links "$wheels" ffcv
  else
    apt_install "${FFCV_BUILD_PACKAGES[@]}"
    echo "setup: ffcv builds from source once"
    # ffcv's setup.py imports numpy and pkgconfig at build time, so it builds against the environment.
    "$PY" -m pip install -q numpy pkgconfig Cython
  fi
  log=$(mktemp)
  trap 'rm -f "$log"' EXIT
  # The project itself, editable, with no index asked; then its requirements, from here when they are all here.
  "$PY" -m pip install -q --no-index --no-deps --no-build-isolation -e . >"$log" 2>&1 \
    || { echo "setup: error: cannot install deepnets-bench into $VENV: $(grep -m 1 -i error "$log" || tail -n 1 "$log")" >&2; exit 1; }
  lacking=$(missing_requirements "$extra")
  if [ -z "$lacking" ]; then
    echo "setup: installed deepnets-bench$extras into $VENV (every requirement was here: no package index asked)"
  else
    echo "setup: installing what deepnets-bench$extras lacks into $VENV: $lacking"
    if ! "$PY" -m pip install -q --no-build-isolation -e ".$extras" >"$log" 2>&1; then
      echo "setup: error: deepnets-bench$extras needs $lacking, not installed here, and no package index has them" \
           "($(grep -m 1 -E '^ERROR' "$log" || tail -n 1 "$log")); install them, or run where an index answers" >&2
      exit 1
    fi
  fi
  echo "$digest$extras" > "$stamp"
fi
