#!/usr/bin/env bash
# The one command to run on a GPU machine (no network needed): builds the CUDA
# kernels, runs the test suite with CUDA tensors, `cnnkernels verify` (every
# op x backend x algorithm x dtype x layout against float64), `cnnkernels
# tune` (fills Triton's autotune cache), the full `cnnkernels bench` (its
# report, JSON, plots and a line in the device's history, compared with the
# previous one), each family's benchmark configurations, and the end-to-end
# model benchmarks; it writes one results file plus its JSON and the plots:
#     ${OUT:-benchmarks/results}/gpu_verify_<gpu-slug>_<YYYYmmdd>.md / .json
#     ${OUT:-benchmarks/results}/<gpu-slug>.jsonl (the history) and plots_<gpu-slug>_<date>/
# `benchmarks/gpu_verify.sh --dry-run` (or DRY_RUN=1) prints every command
# instead of running it (no GPU needed), to check the script.
# Every step runs even when an earlier one failed; the failures are listed in
# the results file and the exit status is 1 if there were any. Before the
# verify, tune, full-bench and end-to-end steps it took about 9 minutes on an
# H100 (build ~0.5, tests ~3, benchmarks ~5-6); the full bench adds up to 20
# minutes (its budget); verify, tune and end-to-end are not timed on a GPU yet. The
# benchmark configurations, and any targets a family states for them, come
# from the families' bench modules (VERIFY_CONFIGS and VERIFY_TARGETS in
# cnnkernels/bench/<family>.py, listed by cnnkernels.bench.verify). Each
# configuration stops starting new layers after its time budget (--budget)
# and reports how many cases it skipped.
#
# Environment: OUT (results folder), CNNK_COMMIT (the commit to record where
# there is no .git folder), PYTHON (default: python), BENCH_BATCH (default 16).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
dry_run=${DRY_RUN:-0}
[[ ${1:-} == --dry-run ]] && dry_run=1
unset TRITON_INTERPRET # the Triton backend must run CUDA tensors, not the interpreter

python=${PYTHON:-python}
batch=${BENCH_BATCH:-16}
results_dir=${OUT:-benchmarks/results}
mkdir -p "$results_dir"
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
failures=()

if [[ -z ${CNNK_COMMIT:-} ]] && CNNK_COMMIT=$(git rev-parse HEAD 2>/dev/null); then
  [[ -z $(git status --porcelain --untracked-files=no) ]] || CNNK_COMMIT+="+dirty"
fi
export CNNK_COMMIT=${CNNK_COMMIT:-unknown} # the bench JSON records the same commit
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n1 || true)
driver=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -n1 || true)
gpu=${gpu:-unknown GPU}
slug=$(tr '[:upper:]' '[:lower:]' <<<"$gpu" | sed -E 's/[^a-z0-9]+/-/g; s/^-+//; s/-+$//')
stem=$results_dir/gpu_verify_${slug}_$(date +%Y%m%d)
md=$stem.md
json=$stem.json

# step NAME LOG CMD...: run CMD, show and log its output, and set $step_rc;
# a failure is recorded in $failures instead of stopping the script.
step() {
  local name=$1 log=$2 start=$SECONDS
  shift 2
  echo "=== $name: $*"
  step_rc=0
  if ((dry_run)); then
    echo "(dry run: not run)" | tee "$log"
  else
    "$@" 2>&1 | tee "$log" || step_rc=$?
  fi
  echo "=== $name: exit $step_rc after $((SECONDS - start)) s"
  if ((step_rc != 0)); then
    failures+=("$name (exit $step_rc)")
  fi
}

# fenced FILE: FILE's text as a markdown code block.
fenced() {
  printf '```\n'
  cat "$1"
  printf '```\n\n'
}

echo "=== environment"
nvidia-smi || true
versions=$("$python" -c 'import platform, torch, triton
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"cuDNN {torch.backends.cudnn.version()}, triton {triton.__version__}, "
      f"Python {platform.python_version()}")' 2>&1) || failures+=("versions")
nvcc=$(nvcc --version 2>/dev/null | tail -n1 || true)
echo "$versions"
echo "nvcc: ${nvcc:-not found}"
{
  echo "# GPU verification: $gpu, $(date -u +%Y-%m-%d)"
  echo
  echo "| | |"
  echo "| --- | --- |"
  echo "| GPU | $gpu (driver ${driver:-unknown}) |"
  echo "| versions | $versions |"
  echo "| nvcc | ${nvcc:-not found} |"
  echo "| commit | $CNNK_COMMIT |"
  echo "| command | \`benchmarks/gpu_verify.sh\` (benchmark batch $batch) |"
  echo
} >"$md"

step build "$logs/build.log" env CNNK_WITH_CUDA=1 \
  "$python" -m pip install -e . --no-build-isolation --no-deps
{
  echo "## Build"
  echo
  if ((step_rc != 0)); then
    echo "\`CNNK_WITH_CUDA=1 pip install -e . --no-build-isolation --no-deps\` FAILED (exit"
    echo "$step_rc); its error lines and the end of its log:"
    echo
    { grep -i -m 30 'error' "$logs/build.log" || true; echo ...; tail -n 15 "$logs/build.log"; } \
      >"$logs/build_errors.log"
    fenced "$logs/build_errors.log"
  else
    echo "\`CNNK_WITH_CUDA=1 pip install -e . --no-build-isolation --no-deps\`: ok"
    echo
  fi
} >>"$md"
if ((step_rc != 0)); then
  # Without CUDA kernels the Triton backend still runs: build the rest so the
  # tests and benchmarks below still say something.
  step "build without CUDA (fallback)" "$logs/build_fallback.log" env CNNK_WITH_CUDA=0 \
    "$python" -m pip install -e . --no-build-isolation --no-deps
  echo "Fallback \`CNNK_WITH_CUDA=0 pip install -e .\`: exit $step_rc." >>"$md"
fi
{
  "$python" -m cnnkernels info >"$logs/info.log" 2>&1 || true
  fenced "$logs/info.log"
} >>"$md"

step tests "$logs/tests.log" timeout -s INT -k 30 300 "$python" -m pytest -q -ra tests
sed -n '/short test summary info/,$p' "$logs/tests.log" >"$logs/tests_summary.log"
[[ -s $logs/tests_summary.log ]] || tail -n 1 "$logs/tests.log" >"$logs/tests_summary.log"
{
  echo "## Tests: \`python -m pytest -q -ra tests\`"
  echo
  fenced "$logs/tests_summary.log"
  echo "## Benchmarks: \`python -m cnnkernels bench --batch $batch\` (one budget per configuration)"
  echo
} >>"$md"

# Correctness on this GPU: every op x backend x algorithm x dtype x layout, on one
# layer of each configuration at full size (--quick; every layer is tests/' and
# the benchmarks' job here).
step verify "$logs/verify.log" "$python" -m cnnkernels verify --quick --json "$logs/verify.json"
{
  echo "## Verify: \`python -m cnnkernels verify --quick\`"
  echo
  grep -E '^(verify:|FAIL|[0-9]+ checks)' "$logs/verify.log" >"$logs/verify_summary.log" || true
  fenced "$logs/verify_summary.log"
} >>"$md"

step tune "$logs/tune.log" "$python" -m cnnkernels tune --batch "$batch"

# The full benchmark: every family, model and algorithm, the report, the plots
# and this run's line in the device's history (compared with the last one).
plots=$results_dir/plots_${slug}_$(date +%Y%m%d)
# It starts no new case after 20 minutes (every traced layer x algorithm x backend
# x dtype is more than that on one GPU); the skipped ones are listed.
step "bench (full)" "$logs/bench_full.log" "$python" -m cnnkernels bench --batch "$batch" \
  --budget 1200 --compare --results-dir "$results_dir" --json "$logs/bench_full.json" \
  --markdown "$stem.bench.md" --plots "$plots"
{
  echo "## Benchmark: \`python -m cnnkernels bench --batch $batch --compare\`"
  echo
  echo "Report: \`$stem.bench.md\`; plots: \`$plots/\`."
  echo
  sed -n '/rows in [0-9.]* s:/,$p' "$logs/bench_full.log" >"$logs/bench_summary.log" || true
  fenced "$logs/bench_summary.log"
} >>"$md"

bench_jsons=("$logs/bench_full.json")
# bench LABEL ARGS...: one benchmark configuration, its table appended to the results file.
bench() {
  local label=$1
  shift
  bench_jsons+=("$logs/bench_$label.json")
  step "bench $label" "$logs/bench_$label.log" "$python" -m cnnkernels bench --batch "$batch" --no-history \
    --json "$logs/bench_$label.json" "$@"
  {
    echo "### $label: \`$*\`"
    echo
    fenced "$logs/bench_$label.log"
  } >>"$md"
}
# The configurations, family by family: "targets TEXT" (a family's targets,
# for the results file) and "bench LABEL ARGS..." lines.
plan=$("$python" -c 'from cnnkernels.bench.verify import print_plan; print_plan()') ||
  failures+=("benchmark configurations (exit $?)")
while read -r -u 3 kind line; do
  case $kind in
    targets) printf '%s\n\n' "$line" >>"$md" ;;
    bench)
      read -r -a config <<<"$line"
      bench "${config[@]}"
      ;;
  esac
done 3<<<"$plan"

step "end-to-end" "$logs/end_to_end.log" "$python" -m cnnkernels bench --end-to-end \
  --batch "$batch" --json "$logs/end_to_end.json"
{
  echo "## End to end: \`python -m cnnkernels bench --end-to-end --batch $batch\`"
  echo
  fenced "$logs/end_to_end.log"
} >>"$md"

{
  echo "## Result"
  echo
  if ((${#failures[@]} == 0)); then
    echo "Every step passed."
  else
    printf -- '- FAILED: %s\n' "${failures[@]}"
  fi
} >>"$md"

# One JSON for the whole run: each configuration's header and rows, plus the tests' summary.
GPU_DRIVER=$driver FAILURES=$(printf '%s\n' "${failures[@]+"${failures[@]}"}") \
  "$python" - "$json" "$logs/tests_summary.log" "${bench_jsons[@]}" <<'EOF' || failures+=("json")
import json, os, sys
from pathlib import Path

out, tests, *runs = sys.argv[1:]
json.dump({"driver": os.environ["GPU_DRIVER"],
           "failures": os.environ["FAILURES"].splitlines(),
           "tests_summary": Path(tests).read_text().splitlines(),
           "runs": [json.loads(Path(p).read_text()) for p in runs if Path(p).exists()]},
          open(out, "w"), indent=1)
EOF

echo "=== results: $md and $json"
if ((${#failures[@]} != 0)); then
  printf '=== FAILED: %s\n' "${failures[@]}"
  exit 1
fi
