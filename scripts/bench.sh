#!/usr/bin/env bash
# Set up (idempotent) and run the benchmark suite through Accelerate's launcher.
# Arguments go to bench/run.py (see --help); launcher flags can be set with `accelerate config`.
# With no GPU and no data this is the `smoke` preset: a few minutes on synthetic data.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
exec "$PY" -m accelerate.commands.launch bench/run.py "$@"  # the launcher of whichever environment holds accelerate
