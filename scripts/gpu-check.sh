#!/usr/bin/env bash
# Check a GPU box end to end in one command that leaves every number in files:
#
#   bash scripts/gpu-check.sh [--data-dir DIR] [--out DIR] [--budget-s SECONDS] [--wheels DIR]
#                             [--results-dir DIR] [--cpu]
#
# In order: ffcv, when it does not import, from the wheels in --wheels (default .device-wheels/; only those
# of what is missing, into a private folder: the machine's own packages, torch above all, stay as they are);
# the CUDA-only tests; the harness-overhead benchmark; the speed sweep's eager points; the input-pipeline
# benchmark; the `fast` suite on MNIST (and CIFAR-10 when --data-dir has it; default $DEEPNETS_DATA_DIR);
# the sweep's compiled points; the report. Everything goes to one folder, <--results-dir, default
# results/gpu-check>/<gpu-slug>-<YYYYMMDD-HHMM>/ (records, REPORT.md, tables/, plots/, logs/, gpu-check.log,
# SUMMARY.md); --out DIR receives that folder packed as one .tar.gz beside plain copies of gpu-check.log and
# SUMMARY.md, which is all a lent GPU machine hands back. $PYTHON (default python3) is the interpreter.
#
# A GPU is lent for minutes, so the check keeps to --budget-s (default 420), its summary included: a step
# starts only while time is left and is stopped when its share runs out (killed KILL_GRACE_S later if it
# ignores that), and the speed sweep has its own share. Each step prints
# one line (ok / failed (exit N) / stopped: budget / skipped: budget, and its seconds); a failed step does
# not stop the others; the exit status is 1 when any step failed, 2 for bad options or a machine that lacks
# what the check needs. --cpu rehearses every step's command line on a CPU with tiny sizes and synthetic data.
set -uo pipefail  # no -e: a failed step is recorded and the check goes on

PROG=gpu-check.sh
PYTHON=${PYTHON:-python3}  # the interpreter that has torch (on the lent machines: python3)
CALLER_DIR=$PWD
REPO=$(cd "$(dirname "$0")/.." && pwd)

# How the budget is shared: the report and the summary are cheap but must come last, so the measuring steps
# leave them REPORT_RESERVE_S and SUMMARY_RESERVE_S, and every step's limit leaves room for KILL_GRACE_S, the
# time a stopped step gets between TERM and KILL; the sweep (which could take an hour with every compile)
# gets SWEEP_SHARE_PCT; a step with less than MIN_STEP_S left is not worth starting.
REPORT_RESERVE_S=30
SUMMARY_RESERVE_S=20
KILL_GRACE_S=10
SWEEP_SHARE_PCT=25
MIN_STEP_S=10

die() {
  echo "$PROG: error: $*" >&2
  exit 2
}

absolute() {  # options name paths relative to where the command was typed
  case $1 in /*) echo "$1" ;; *) echo "$CALLER_DIR/$1" ;; esac
}

data_dir=${DEEPNETS_DATA_DIR:+$(absolute "$DEEPNETS_DATA_DIR")} data_dir_given=0 out="" budget=420 wheels=$REPO/.device-wheels
results=$REPO/results/gpu-check cpu=0
while [ $# -gt 0 ]; do
  case $1 in --*=*) set -- "${1%%=*}" "${1#*=}" "${@:2}" ;; esac  # --opt=value as --opt value
  case $1 in
    --data-dir|--out|--budget-s|--wheels|--results-dir)
      [ $# -ge 2 ] && [ -n "$2" ] || die "$1: expected a value"
      case $1 in
        --data-dir) data_dir=$(absolute "$2") data_dir_given=1 ;;
        --out) out=$(absolute "$2") ;;
        --budget-s) budget=$2 ;;
        --wheels) wheels=$(absolute "$2") ;;
        --results-dir) results=$(absolute "$2") ;;
      esac
      shift 2 ;;
    --cpu) cpu=1; shift ;;
    -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option '$1' (valid: --data-dir DIR, --out DIR, --budget-s SECONDS, --wheels DIR, --results-dir DIR, --cpu)" ;;
  esac
done
[[ $budget =~ ^[1-9][0-9]*$ ]] || die "--budget-s: expected a positive whole number of seconds, got '$budget'"
[ -z "$out" ] || [ ! -e "$out" ] || [ -d "$out" ] || die "--out: expected a folder, got the file '$out'"
[ ! -e "$results" ] || [ -d "$results" ] || die "--results-dir: expected a folder, got the file '$results'"
if [ "$cpu" = 1 ]; then
  [ "$data_dir_given" = 0 ] || die "--data-dir: not used with --cpu (the rehearsal trains on synthetic data)"
  data_dir=""
  export CUDA_VISIBLE_DEVICES=""  # a rehearsal on the CPU even where a GPU is present
  export OMP_NUM_THREADS=1  # tiny sizes gain nothing from more threads; on a busy CPU they would only spin
elif [ -n "$data_dir" ] && [ ! -d "$data_dir" ]; then
  die "--data-dir: expected a folder holding MNIST's idx files, got '$data_dir' (not a folder)"
fi

cd "$REPO" || exit 2
export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}  # the project, importable without installing it
export PYTHONUNBUFFERED=1  # each command's output reaches the log as it happens

# ----- what this machine has ------------------------------------------------------------------------------------
work=$(mktemp -d)  # the probe's messages, and the private site folder where ffcv may be installed
trap 'rm -rf "$work"' EXIT
probe_out=$("$PYTHON" -m bench.gpu_check probe --wheels "$wheels" ${data_dir:+--data-dir "$data_dir"} 2>"$work/probe.err") \
  || die "$PYTHON -m bench.gpu_check probe failed: $(tail -n 1 "$work/probe.err")"
declare -A probe
while IFS='=' read -r key value; do probe[$key]=$value; done <<<"$probe_out"
read -r -a datasets <<<"${probe[datasets]}"
if [ "$cpu" = 0 ]; then
  [ "${probe[cuda]}" = yes ] || die "no CUDA device here (torch.cuda.is_available() is False); --cpu rehearses the check on the CPU"
  [ -n "$data_dir" ] || die "--data-dir: expected a folder holding MNIST (or set DEEPNETS_DATA_DIR): ${probe[mnist_files]}"
  [[ " ${datasets[*]} " == *" mnist "* ]] || die "--data-dir: no MNIST in '$data_dir'; expected ${probe[mnist_files]}"
fi
read -r -a wheels_needed <<<"${probe[wheels]}"  # ffcv's, and those of requirements this Python lacks
if [ "${probe[ffcv]}" != ok ] && [[ " ${wheels_needed[*]} " != *" ffcv-"* ]]; then
  die "--wheels: ffcv does not import here (${probe[ffcv]}) and '$wheels' holds no ffcv-*.whl; expected a folder with ffcv's wheel and its pure-Python requirements (a copy of shared/device/wheels)"
fi

# ----- the run folder, the log and the step runner ---------------------------------------------------------------
name=${probe[slug]}-$(date +%Y%m%d-%H%M)
[ ! -e "$results/$name" ] || name=$name-$(date +%S)  # a second check within the same minute
run_dir=$results/$name
mkdir -p "$results" && mkdir "$run_dir" "$run_dir/logs" || die "--results-dir: cannot create '$run_dir'"
[ -z "$out" ] || mkdir -p "$out" || die "--out: cannot create '$out'"
log=$run_dir/gpu-check.log
failed=() cut=()

say() {  # a line for the person watching and for the log
  echo "$*" | tee -a "$log"
}

left() {  # seconds the measuring steps may still use
  echo $((budget - REPORT_RESERVE_S - SUMMARY_RESERVE_S - KILL_GRACE_S - SECONDS))
}

# step NAME LIMIT_S COMMAND...: one step, its output in logs/NAME.log and gpu-check.log, stopped after LIMIT_S.
step() {
  local step_name=$1 limit=$2 status rc start=$SECONDS
  shift 2
  if ((limit < MIN_STEP_S)); then
    status="skipped: budget"
    cut+=("$step_name")
  else
    printf '\n=== %s (at most %d s): %s\n' "$step_name" "$limit" "$*" >>"$log"
    timeout --kill-after="$KILL_GRACE_S" "$limit" "$@" 2>&1 | tee "$run_dir/logs/$step_name.log" >>"$log"
    rc=${PIPESTATUS[0]}
    if ((rc == 0)); then
      status=ok
    elif ((SECONDS - start >= limit)); then  # timeout's 124 (or 137 after its SIGKILL)
      status="stopped: budget"
      cut+=("$step_name")
    else
      status="failed (exit $rc)"
      failed+=("$step_name")
    fi
  fi
  printf '%s\t%s\t%d\t%s\n' "$step_name" "$status" $((SECONDS - start)) "$*" >>"$run_dir/steps.tsv"
  say "$(printf '%-26s %-18s %4d s' "$step_name" "$status" $((SECONDS - start)))"
}

say "$PROG: ${probe[device]}, budget ${budget} s$([ "$cpu" = 1 ] && echo ", CPU rehearsal (tiny sizes)"); folder $run_dir"
say "$PROG: follow it with: tail -f $log"

# ----- sizes: the real check, or the CPU rehearsal of the same command lines ------------------------------------
sweep_models=(resnet18 inception_v1 resnet18_improved inception_v1_improved vgg16 vgg16_improved)  # most launch-bound first
overhead_models=(resnet18_improved inception_v1)
if [ "$cpu" = 0 ]; then
  overhead_batch=${probe[fast_batch]} overhead_sizes=()
  sweep_precisions=(bf16 fp16) sweep_batches=(256 1024) sweep_sizes=()
  data_args=(--data-dir "$data_dir") throughput_sizes=() suite_sizes=()
else  # tiny, the smallest model (ResNet18 is the quickest to build and step), and bf16 only: no fp16 on a CPU
  overhead_models=(resnet18) overhead_batch=2 overhead_sizes=(--steps 1 --rounds 1)
  sweep_models=(resnet18) sweep_precisions=(bf16) sweep_batches=(2) sweep_sizes=(--warmup 1 --steps 1 --windows 1)
  datasets=(mnist) data_args=(--synthetic) throughput_sizes=(--batch-size 8 --min-seconds 0 --workers 1)
  suite_sizes=(--models resnet18 --synthetic-size 64 21 --batch-size 16 --epochs 1 --warmup-steps 1)
fi

# ----- the steps -------------------------------------------------------------------------------------------------
if [ "${probe[ffcv]}" = ok ]; then
  say "ffcv imports: nothing to install"
else
  # Into a private site folder: nothing of the machine's own Python (torch above all) is replaced.
  step install-ffcv 300 "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --target "$work/site" "${wheels_needed[@]/#/$wheels/}"
  export PYTHONPATH=$work/site:$PYTHONPATH
  [ ${#failed[@]} -gt 0 ] || step import-ffcv 120 "$PYTHON" -c \
    "import importlib.metadata, ffcv.loader; print('ffcv', importlib.metadata.version('ffcv'), 'from', ffcv.__file__)"
fi
if [ ${#failed[@]} -gt 0 ]; then
  say "$PROG: ffcv is not usable here (on Python 3.12 it also needs setuptools, for distutils; see $log); nothing else can run"
else
  step cuda-tests "$(left)" "$PYTHON" -m pytest -m cuda
  for model in "${overhead_models[@]}"; do
    step "overhead-$model" "$(left)" "$PYTHON" -m bench.overhead --model "$model" --batch-size "$overhead_batch" \
      --precision bf16 --channels-last "${overhead_sizes[@]}"
  done
  # The speed sweep gets its own share of the budget: eager points here, compiled ones (tens of seconds of
  # compiling each) only after the suite, with what is left of the share; bench.speed stops starting points at
  # its --time-budget-s and names the ones it skipped.
  sweep_share=$((budget * SWEEP_SHARE_PCT / 100))
  sweep=("$PYTHON" -m bench.speed --models "${sweep_models[@]}" --modes train --precisions "${sweep_precisions[@]}"
         --channels-last on --batch-sizes "${sweep_batches[@]}" --results-dir "$run_dir" "${sweep_sizes[@]}")
  sweep_start=$SECONDS
  step sweep-eager "$(left)" "${sweep[@]}" --compile off --time-budget-s "$sweep_share"
  sweep_share=$((sweep_share - (SECONDS - sweep_start)))
  step throughput "$(left)" "$PYTHON" -m data.throughput --datasets "${datasets[@]}" "${data_args[@]}" "${throughput_sizes[@]}"
  step suite "$(left)" "$PYTHON" -m accelerate.commands.launch --num_processes 1 --num_machines 1 \
    --mixed_precision no --dynamo_backend no bench/run.py --preset fast --datasets "${datasets[@]}" "${data_args[@]}" \
    --results-dir "$run_dir" "${suite_sizes[@]}"
  # Compiled points: what is left of the sweep's share, if the suite left that much. The rehearsal gives them no
  # time (a compile takes minutes on a CPU), but their command line still runs and names what it skipped.
  limit=$(left)
  compiled_time=$((sweep_share < limit ? sweep_share : limit))
  if [ "$cpu" = 1 ]; then compiled_time=0; elif ((compiled_time < MIN_STEP_S)); then limit=0; fi
  step sweep-compiled "$limit" "${sweep[@]}" --compile reduce-overhead default --time-budget-s "$compiled_time"
  step report $((budget - SUMMARY_RESERVE_S - KILL_GRACE_S - SECONDS)) "$PYTHON" -m bench.report --results-dir "$run_dir"
fi
[ ${#cut[@]} -eq 0 ] || say "$PROG: out of budget ($budget s): skipped or stopped ${cut[*]}"

# ----- the summary and what comes back ----------------------------------------------------------------------------
cpu_flag=()
[ "$cpu" = 0 ] || cpu_flag=(--cpu)
summary_limit=$((budget - KILL_GRACE_S - SECONDS))  # what the budget leaves, and never too little to write it
step summary $((summary_limit > MIN_STEP_S ? summary_limit : MIN_STEP_S)) "$PYTHON" -m bench.gpu_check summary --run-dir "$run_dir" --budget-s "$budget" "${cpu_flag[@]}"
if [ -n "$out" ]; then
  # A lent machine hands back at most 8 files of 16 MiB: the folder as one archive, and the two pages to read first.
  tarball=$out/$name.tar.gz
  if tar -czf "$tarball" -C "$results" --exclude "$name/checkpoints" "$name"; then
    bytes=$(stat -c %s "$tarball")
    say "$PROG: packed $run_dir into $tarball ($((bytes / 1024)) KiB)"
    ((bytes <= 16 * 1024 * 1024)) || { failed+=(pack); say "$PROG: $tarball is over the 16 MiB a lent machine hands back"; }
  else
    failed+=(pack)
  fi
  [ ! -e "$run_dir/SUMMARY.md" ] || cp "$run_dir/SUMMARY.md" "$out/" || failed+=(pack)
fi
say "$PROG: done in $SECONDS s, ${failed[*]:-no step} failed; everything is in $run_dir"
[ -z "$out" ] || cp "$log" "$out/gpu-check.log" || failed+=(pack)
[ ${#failed[@]} -eq 0 ]
