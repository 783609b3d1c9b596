#!/usr/bin/env bash
# The scaling benchmark on a GPU box (#24): weak scaling of resnet18_improved, and of vgg16 (its large fully
# connected layers make it the communication-heavy contrast), over 1, 2, 4, ... GPUs (the powers of two up to the
# GPUs here) with the fast preset on CIFAR-10, then each series' efficiency and exposed communication at its largest
# point beside the targets for an 8-GPU NVLink machine: resnet18_improved at >= 90 % efficiency with exposed
# communication <= 10 % of the step. It prints numbers; nothing here passes or fails (speed targets are no test).
# Arguments go to bench.scaling and its runners (e.g. --data-dir DIR, --seeds 0 1 2, --comm-hook no bf16);
# RESULTS_DIR (default results/scaling-benchmark) is where the records and the report go.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
GPUS=$("$PY" -c "import torch; print(torch.cuda.device_count())")
[ "$GPUS" -ge 2 ] || { echo "scaling-benchmark.sh: error: $GPUS GPU(s) here; expected at least 2" >&2; exit 2; }
COUNTS=()
for ((count = 1; count <= GPUS; count *= 2)); do COUNTS+=("$count"); done
RESULTS_DIR=${RESULTS_DIR:-results/scaling-benchmark}
"$PY" -m bench.scaling --processes "${COUNTS[@]}" --mode weak --preset fast --models resnet18_improved vgg16 \
  --datasets cifar10 "$@" --results-dir "$RESULTS_DIR" || echo "scaling-benchmark.sh: some points did not finish (above)"
"$PY" - "$RESULTS_DIR/tables/scaling.csv" <<'PYTHON'
import sys

import pandas as pd

table = pd.read_csv(sys.argv[1])
for _, row in table[table["n"] > 0].groupby("series").tail(1).iterrows():
    print(f"{row['model']} ({row['mode']}, {row['levers'] if isinstance(row['levers'], str) else 'DDP defaults'}): "
          f"{row['processes']} GPUs, efficiency {row['efficiency %']:.0f} % (target >= 90 % for resnet18_improved), "
          f"exposed comm {row['exposed comm %']:.1f} % of the step (target <= 10 %), "
          f"gradient bus {row['grad bus GB/s']:.1f} GB/s, data stall {row['data stall %']:.1f} %")
PYTHON
