#!/usr/bin/env bash
# Check a GPU box end to end in one command that leaves every number in files:
#
#   bash scripts/gpu-check.sh [--data-dir DIR] [--out DIR] [--budget-s SECONDS] [--wheels DIR]
#                             [--results-dir DIR] [--cpu] [--plan]
#
# In order: ffcv, when it does not import, from the wheels in --wheels (default .device-wheels/; only those of what
# is missing, into a private folder: the machine's own packages, torch above all, stay as they are); the quick
# CUDA-only tests; the harness under CUDA graphs in fp16 (a test that starts processes needing the GPU, in a pytest
# process of its own: no process of the check holds a CUDA context while it starts another that needs the GPU, as
# an EXCLUSIVE_PROCESS GPU requires); the check's suite (the `fast` recipe for SUITE_EPOCHS epochs, the six models,
# on MNIST, and CIFAR-10 too when --data-dir has it; default $DEEPNETS_DATA_DIR); the harness-overhead benchmark;
# the input-pipeline benchmark; the speed sweep's eager points, then one compiled point; the CUDA-graph test in
# bf16 when time is left; the report. Everything goes to one folder, <--results-dir, default
# results/gpu-check>/<gpu-slug>-<YYYYMMDD-HHMM>/ (records, REPORT.md, tables/, plots/, logs/, gpu-check.log,
# SUMMARY.md); --out DIR receives that folder packed as one .tar.gz beside plain copies of gpu-check.log and
# SUMMARY.md, refreshed after every step, so that a check cut short from outside still hands back everything done
# until then. $PYTHON is the interpreter (default: the environment scripts/setup.sh uses, as scripts/env.sh finds
# it, when it exists; else python3).
#
# The check keeps to --budget-s (default: the steps' minimums with room to spare, 540 s), its summary included.
# Every step has a stated minimum (MINIMUM_S below: estimates until a GPU run confirms them) and a cap, its minimum plus
# its part of what the budget leaves beyond them; the plan (each step's minimum and cap) is printed first, and
# --plan prints it and stops. A step that hangs costs its cap and nothing more: it is stopped when the cap runs out
# (killed KILL_GRACE_S later if it ignores that), and a CUDA test that hangs is stopped by pytest-timeout sooner
# still. Each step prints one line (ok / failed (exit N) / stopped: budget / skipped: budget, and its seconds); a
# failed step does not stop the others; the exit status is 1 when any step failed, 2 for bad options or a machine
# that lacks what the check needs. --cpu rehearses every step's command line on a CPU with tiny sizes and
# synthetic data.
set -uo pipefail  # no -e: a failed step is recorded and the check goes on

PROG=gpu-check.sh
CALLER_DIR=$PWD
REPO=$(cd "$(dirname "$0")/.." && pwd)
if [ -z "${PYTHON:-}" ]; then  # the project's environment as set-up chose it (scripts/env.sh), else the machine's
  PYTHON=$(cd "$REPO" && source scripts/env.sh && case $PY in /*) ;; *) PY=$REPO/$PY ;; esac && [ -x "$PY" ] \
    && echo "$PY") || PYTHON=python3
fi

# How the budget is shared. Each step's minimum is what it needs on one H100/H200 to measure anything: ESTIMATES
# from what each must do (cold reduce-overhead compiles of ResNet18's training and evaluation graphs; importing ffcv
# and JIT-compiling each loader, seconds each; bench.overhead ~14 s a model; data.throughput ~24 s for four loaders),
# until a GPU run's step times confirm them (SUMMARY.md has each step's seconds beside its limit). The default
# budget is the GPU check's minimums, a stopped step's grace (KILL_GRACE_S, between TERM and KILL) and ROOM_PCT
# more; each step's cap is its minimum plus its part of the budget beyond the minimums, in proportion. The bf16
# CUDA-graph test runs only in what the others leave, when that is at least its minimum. A step with less than
# MIN_STEP_S is not worth starting.
declare -A MINIMUM_S=([install-ffcv]=15 [import-ffcv]=15 [cuda-tests]=45 [cuda-compile]=90 [suite]=120 [overhead]=15
                      [throughput]=30 [sweep-eager]=40 [sweep-compiled]=60 [cuda-compile-bf16]=90 [report]=25
                      [summary]=10)
GPU_PLAN=(install-ffcv import-ffcv cuda-tests cuda-compile suite overhead overhead throughput sweep-eager sweep-compiled
          report summary)  # what the check runs on the lent GPU machine (ffcv installed, two overhead models)
KILL_GRACE_S=10
ROOM_PCT=10
MIN_STEP_S=10
CUDA_TEST_TIMEOUT_S=90  # one quick CUDA test
SUITE_EPOCHS=4  # the check's suite: enough for MNIST near the study's accuracy, a few seconds a run on an H100

minimum() {  # minimum STEP: its stated minimum (overhead-MODEL: the overhead's)
  case $1 in overhead-*) echo "${MINIMUM_S[overhead]}" ;; *) echo "${MINIMUM_S[$1]}" ;; esac
}
sum_of_minimums() {
  local total=0 name
  for name in "$@"; do total=$((total + $(minimum "$name"))); done
  echo "$total"
}
default_budget=$((($(sum_of_minimums "${GPU_PLAN[@]}") + KILL_GRACE_S) * (100 + ROOM_PCT) / 100 + 9))
default_budget=$((default_budget - default_budget % 10))  # rounded up to 10 s

die() {
  echo "$PROG: error: $*" >&2
  exit 2
}

absolute() {  # options name paths relative to where the command was typed
  case $1 in /*) echo "$1" ;; *) echo "$CALLER_DIR/$1" ;; esac
}

data_dir=${DEEPNETS_DATA_DIR:+$(absolute "$DEEPNETS_DATA_DIR")} data_dir_given=0 out="" budget=$default_budget
wheels=$REPO/.device-wheels results=$REPO/results/gpu-check cpu=0 plan_only=0
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
    --plan) plan_only=1; shift ;;
    -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option '$1' (valid: --data-dir DIR, --out DIR, --budget-s SECONDS, --wheels DIR, --results-dir DIR, --cpu, --plan)" ;;
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
# ----- sizes: the real check, or the CPU rehearsal of the same command lines ------------------------------------
sweep_models=(resnet18 inception_v1 resnet18_improved inception_v1_improved vgg16 vgg16_improved)  # most launch-bound first
overhead_models=(resnet18_improved inception_v1)
if [ "$cpu" = 0 ]; then
  overhead_batch=${probe[fast_batch]} overhead_sizes=(--steps 20 --rounds 3)
  sweep_precisions=(bf16 fp16) sweep_batches=(256 1024) sweep_sizes=()
  compiled_model=resnet18_improved compiled_batch=${probe[fast_batch]}  # one compiled point: a cold compile is ~40 s
  data_args=(--data-dir "$data_dir") throughput_sizes=() suite_sizes=(--epochs "$SUITE_EPOCHS")
else  # tiny, the smallest model (ResNet18 is the quickest to build and step), and bf16 only: no fp16 on a CPU
  overhead_models=(resnet18) overhead_batch=2 overhead_sizes=(--steps 1 --rounds 1)
  sweep_models=(resnet18) sweep_precisions=(bf16) sweep_batches=(2) sweep_sizes=(--warmup 1 --steps 1 --windows 1)
  compiled_model=resnet18 compiled_batch=2
  datasets=(mnist) data_args=(--synthetic) throughput_sizes=(--batch-size 32 --min-seconds 0 --workers 1)
  suite_sizes=(--models resnet18 --synthetic-size 64 21 --batch-size 16 --epochs 1 --warmup-steps 1)
fi

# ----- the plan: each step's cap, its minimum plus its part of the budget beyond the minimums ---------------------
plan=()
[ "${probe[ffcv]}" = ok ] || plan+=(install-ffcv import-ffcv)
plan+=(cuda-tests cuda-compile suite "${overhead_models[@]/#/overhead-}" throughput sweep-eager sweep-compiled report summary)
planned=$(sum_of_minimums "${plan[@]}")
declare -A cap
plan_lines=("$PROG: plan for a budget of $budget s (each step's minimum is an estimate until a GPU run confirms it):"
            "$(printf '  %-26s %8s %8s' step minimum cap)")
for step_name in "${plan[@]}"; do
  [ "$step_name" != report ] || plan_lines+=("$(printf '  %-26s %6d s   what the others leave' cuda-compile-bf16 \
                                                 "${MINIMUM_S[cuda-compile-bf16]}")")
  cap[$step_name]=$(($(minimum "$step_name") * (budget - KILL_GRACE_S) / planned))
  plan_lines+=("$(printf '  %-26s %6d s %6d s%s' "$step_name" "$(minimum "$step_name")" "${cap[$step_name]}" \
                 "$( ((cap[$step_name] >= $(minimum "$step_name"))) || echo '  below its minimum')")")
done
plan_lines+=("  and ${KILL_GRACE_S} s for a stopped step's grace")
if [ "$plan_only" = 1 ]; then
  printf '%s\n' "${plan_lines[@]}"
  exit 0
fi

if [ "$cpu" = 0 ]; then
  [ "${probe[cuda]}" = yes ] || die "no CUDA device here (torch.cuda.is_available() is False); --cpu rehearses the check on the CPU"
  [ -n "$data_dir" ] || die "--data-dir: expected a folder holding MNIST (or set DEEPNETS_DATA_DIR): ${probe[mnist_files]}"
  [[ " ${datasets[*]} " == *" mnist "* ]] || die "--data-dir: no MNIST in '$data_dir'; expected ${probe[mnist_files]}"
fi
read -r -a wheels_needed <<<"${probe[wheels]}"  # ffcv's, and those of requirements this Python lacks
if [ "${probe[ffcv]}" != ok ] && [[ " ${wheels_needed[*]} " != *" ffcv-"* ]]; then
  die "--wheels: ffcv does not import here (${probe[ffcv]}) and '$wheels' holds no ffcv-*.whl; expected a folder with ffcv's wheel and its pure-Python requirements (a copy of shared/device/wheels)"
fi


# ----- the run folder, the log, what comes back and the step runner ---------------------------------------------
name=${probe[slug]}-$(date +%Y%m%d-%H%M)
[ ! -e "$results/$name" ] || name=$name-$(date +%S)  # a second check within the same minute
run_dir=$results/$name
mkdir -p "$results" && mkdir "$run_dir" "$run_dir/logs" || die "--results-dir: cannot create '$run_dir'"
[ -z "$out" ] || mkdir -p "$out" || die "--out: cannot create '$out'"
log=$run_dir/gpu-check.log
failed=() cut=()
final=0  # 1 once the full summary is written: the interim page must not replace it

say() {  # a line for the person watching and for the log
  echo "$*" | tee -a "$log"
}

before_report() {  # seconds the budget leaves before the report's and the summary's caps
  echo $((budget - KILL_GRACE_S - SECONDS - cap[report] - cap[summary]))
}
limit_of() {  # limit_of STEP: its cap, or what the budget leaves before the report and the summary if that is less
  local remaining
  remaining=$(before_report)
  echo $((cap[$1] < remaining ? cap[$1] : remaining))
}

interim_summary() {  # until the full summary exists: which steps ran, from steps.tsv, in plain bash
  {
    printf '# GPU check: %s (interim)\n\nWritten %s, after %s. The full summary replaces this page when the check ends; ' \
      "$name" "$(date '+%Y-%m-%d %H:%M %Z')" "$1"
    printf 'a check cut short can have it made from the unpacked folder with `python -m bench.gpu_check summary --run-dir %s --budget-s %s`.\n\n' \
      "$name" "$budget"
    printf '| step | status | seconds | limit |\n|---|---|---:|---:|\n'
    while IFS=$'\t' read -r step_name status seconds limit _; do
      printf '| %s | %s | %s | %s |\n' "$step_name" "$status" "$seconds" "$limit"
    done <"$run_dir/steps.tsv"
  } >"$run_dir/SUMMARY.md.tmp" && mv "$run_dir/SUMMARY.md.tmp" "$run_dir/SUMMARY.md"
}

refresh_out() {  # --out gets the folder as it is now: a new archive replaces the last one whole, or not at all
  [ -n "$out" ] || return 0
  local tarball=$out/$name.tar.gz bytes
  if tar -czf "$tarball.tmp" -C "$results" --exclude "$name/checkpoints" "$name" && mv "$tarball.tmp" "$tarball"; then
    bytes=$(stat -c %s "$tarball")
    ((bytes <= 16 * 1024 * 1024)) || { say "$PROG: $tarball is $((bytes / 1024)) KiB, over the 16 MiB a remote machine may hand back"; return 1; }
  else
    rm -f "$tarball.tmp"
    return 1
  fi
  cp "$log" "$out/gpu-check.log.tmp" && mv "$out/gpu-check.log.tmp" "$out/gpu-check.log" || return 1
  [ ! -e "$run_dir/SUMMARY.md" ] || { cp "$run_dir/SUMMARY.md" "$out/SUMMARY.md.tmp" && mv "$out/SUMMARY.md.tmp" "$out/SUMMARY.md"; }
}

# step NAME LIMIT_S COMMAND...: one step, its output in logs/NAME.log and gpu-check.log, stopped after LIMIT_S;
# then --out is brought up to date.
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
  printf '%s\t%s\t%d\t%d\t%s\n' "$step_name" "$status" $((SECONDS - start)) $((limit > 0 ? limit : 0)) "$*" >>"$run_dir/steps.tsv"
  say "$(printf '%-26s %-18s %4d s' "$step_name" "$status" $((SECONDS - start)))"
  ((final)) || interim_summary "$step_name"
  refresh_out || failed+=(pack)
}

say "$PROG: ${probe[device]}, budget ${budget} s$([ "$cpu" = 1 ] && echo ", CPU rehearsal (tiny sizes)"); folder $run_dir"
[ -z "${probe[gpu_modes]}" ] || say "$PROG: ${probe[gpu_modes]}"
say "$PROG: $PYTHON; follow it with: tail -f $log"
for line in "${plan_lines[@]}"; do say "$line"; done

# ----- the steps -------------------------------------------------------------------------------------------------
if [ "${probe[ffcv]}" = ok ]; then
  say "ffcv imports: nothing to install"
else
  # Into a private site folder: nothing of the machine's own Python (torch above all) is replaced.
  step install-ffcv "$(limit_of install-ffcv)" "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --target "$work/site" "${wheels_needed[@]/#/$wheels/}"
  export PYTHONPATH=$work/site:$PYTHONPATH
  [ ${#failed[@]} -gt 0 ] || step import-ffcv "$(limit_of import-ffcv)" "$PYTHON" -c \
    "import importlib.metadata, ffcv.loader; print('ffcv', importlib.metadata.version('ffcv'), 'from', ffcv.__file__)"
fi
if [ ${#failed[@]} -gt 0 ]; then
  say "$PROG: ffcv is not usable here (on Python 3.12 it also needs setuptools, for distutils; see $log); nothing else can run"
else
  # Only the test modules that hold CUDA tests are collected: another module's imports cannot stop them. pytest
  # exits 5 when it collects no test: a failure here, as it should be (the CUDA tests did not run). -v names each
  # test as it passes, so that a step cut short still shows which did. The tests that start processes needing the
  # GPU (marked spawns) run in pytest processes of their own, which hold no CUDA context: on an EXCLUSIVE_PROCESS
  # GPU a child could not get one while its parent holds it.
  mapfile -t cuda_modules < <(grep -l -E '(pytest\.)?mark\.cuda\b' tests/test_*.py)
  mapfile -t spawning_modules < <(grep -l -E '(pytest\.)?mark\.spawns\b' tests/test_*.py)
  cuda_tests=("$PYTHON" -m pytest -v -s -p no:cacheprovider)  # -s: what a test prints (its rates, NVML's answers)
  step cuda-tests "$(limit_of cuda-tests)" "${cuda_tests[@]}" -m "cuda and not spawns" --timeout "$CUDA_TEST_TIMEOUT_S" \
    "${cuda_modules[@]}"
  # fp16 first: the GradScaler under CUDA graphs is the riskier path; bf16 when time is left, at the end.
  step cuda-compile "$(limit_of cuda-compile)" "${cuda_tests[@]}" -m "cuda and spawns" -k fp16 "${spawning_modules[@]}"
  step suite "$(limit_of suite)" "$PYTHON" -m accelerate.commands.launch --num_processes 1 --num_machines 1 \
    --mixed_precision no --dynamo_backend no bench/run.py --preset fast --datasets "${datasets[@]}" "${data_args[@]}" \
    --results-dir "$run_dir" "${suite_sizes[@]}"
  for model in "${overhead_models[@]}"; do
    step "overhead-$model" "$(limit_of "overhead-$model")" "$PYTHON" -m bench.overhead --model "$model" \
      --batch-size "$overhead_batch" --precision bf16 --channels-last "${overhead_sizes[@]}"
  done
  step throughput "$(limit_of throughput)" "$PYTHON" -m data.throughput --datasets "${datasets[@]}" "${data_args[@]}" \
    "${throughput_sizes[@]}"
  # The speed sweep: eager points, then one compiled point (a cold compile). bench.speed stops starting points at its
  # --time-budget-s (four fifths of the step's limit, so that the point in progress can end before the step is
  # stopped) and names the points it skipped. The rehearsal gives the compiled point no time (a compile takes minutes
  # on a CPU), but its command line still runs.
  speed=("$PYTHON" -m bench.speed --modes train --channels-last on --results-dir "$run_dir" "${sweep_sizes[@]}")
  limit=$(limit_of sweep-eager)
  step sweep-eager "$limit" "${speed[@]}" --models "${sweep_models[@]}" --precisions "${sweep_precisions[@]}" \
    --batch-sizes "${sweep_batches[@]}" --compile off --time-budget-s $((limit * 4 / 5))
  limit=$(limit_of sweep-compiled)
  step sweep-compiled "$limit" "${speed[@]}" --models "$compiled_model" --precisions bf16 --batch-sizes "$compiled_batch" \
    --compile reduce-overhead --time-budget-s $((cpu == 1 ? 0 : limit * 4 / 5))
  limit=$(before_report)
  step cuda-compile-bf16 $((limit >= MINIMUM_S[cuda-compile-bf16] ? limit : 0)) "${cuda_tests[@]}" -m "cuda and spawns" \
    -k bf16 "${spawning_modules[@]}"
  step report $((budget - KILL_GRACE_S - SECONDS - cap[summary])) "$PYTHON" -m bench.report --results-dir "$run_dir"
fi
[ ${#cut[@]} -eq 0 ] || say "$PROG: out of budget ($budget s): skipped or stopped ${cut[*]}"

# ----- the summary and what comes back ----------------------------------------------------------------------------
cpu_flag=()
[ "$cpu" = 0 ] || cpu_flag=(--cpu)
summary_limit=$((budget - KILL_GRACE_S - SECONDS))  # what the budget leaves, and never too little to write it
final=1
step summary $((summary_limit > MIN_STEP_S ? summary_limit : MIN_STEP_S)) "$PYTHON" -m bench.gpu_check summary --run-dir "$run_dir" --budget-s "$budget" "${cpu_flag[@]}"
[ ! -e "$out/$name.tar.gz" ] || say "$PROG: packed $run_dir into $out/$name.tar.gz ($(($(stat -c %s "$out/$name.tar.gz") / 1024)) KiB)"
say "$PROG: done in $SECONDS s, ${failed[*]:-no step} failed; everything is in $run_dir"
if [ -n "$out" ]; then cp "$log" "$out/gpu-check.log" || failed+=(pack); fi
[ ${#failed[@]} -eq 0 ]
