#!/usr/bin/env bash
# Set up (idempotent) and run the test suite. Extra arguments go to pytest.
# Real-data tests run when DEEPNETS_DATA_DIR names a directory with MNIST's idx files.
# The tests run in one pytest-xdist worker per core, a test file per worker at a time (its module
# fixtures are built once): most of their time is single-threaded (process start-up, imports, ffcv's
# JIT), so two workers on two cores finish well before one.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
source scripts/env.sh
set +e
"$PY" -m pytest -n auto --dist loadfile "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
  echo "test.sh: pytest collected no tests; that is a failure" >&2
  exit 1
fi
exit "$status"
