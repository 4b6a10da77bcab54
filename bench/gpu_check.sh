#!/usr/bin/env bash
# The book on a CUDA GPU, in one unattended run that fits a short lease:
#
#     bench/gpu_check.sh OUT [SECONDS]          (SECONDS: the wall-clock budget, default 540)
#
# In parallel, each lane capped by the budget:
#   tests    the test suite with the GPU visible (`device="auto"` picks it), each chapter's end-to-end test at tiny
#            parameters on the GPU (ICL_TEST_DEVICE=cuda) and the tests that skip without CUDA ($TESTS: the test
#            files to run, default all but the site and environment tests);
#   quick    every chapter at `quick` with `--device cuda`, seed 0, in three lanes ($QUICK_LANES: lanes separated by
#            ';', chapters by spaces; empty for none);
#   paper    $PAPER_CHAPTERS at `paper` (default 05_full_form_gd_plus_plus; empty for none), one after another;
#   probe    with PROBE=1, the seconds per step of chapter 05's 4-layer paper fit, 2000 steps in one process.
# Chapter 05 at either preset first trains its fits in parallel processes (bench/train_parallel.py), then runs.
# Writes OUT/quick/*.json and OUT/paper/*.json (the chapters' records: claim checks, elapsed seconds, the GPU's
# name and peak memory), the executed notebooks, OUT/logs/*.log and OUT/summary.txt (one line per chapter run).
# Timings are wall-clock seconds with the lanes sharing the GPU and 16 CPU cores: an upper bound for a chapter
# run alone. The environment must already hold the project's dependencies; PYTHON names its interpreter
# (default: .venv/bin/python where it exists, else python3). CUDA's Multi-Process Service is started when
# available, so that the many small processes' kernels share the GPU instead of taking turns.
set -uo pipefail
out=${1:?usage: bench/gpu_check.sh OUT [SECONDS]}
budget=${2:-540}
cd "$(dirname "$0")/.."
python=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
mkdir -p "$out"/quick "$out"/paper "$out"/logs
out=$(cd "$out" && pwd)
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
export ICL_STORE=${ICL_STORE:-$out/store}
deadline=$((SECONDS + budget))
left() { echo $((deadline - SECONDS > 1 ? deadline - SECONDS : 1)); }

{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  "$python" -c "import sys, torch; print(sys.version.split()[0], torch.__version__, torch.cuda.get_device_name())"
} >"$out/logs/environment.log" 2>&1
if ! "$python" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
  echo "no CUDA GPU visible to $python: nothing to check" | tee "$out/summary.txt"
  exit 2
fi

if command -v nvidia-cuda-mps-control >/dev/null 2>&1; then
  export CUDA_MPS_PIPE_DIRECTORY=/tmp/icl-mps-pipe CUDA_MPS_LOG_DIRECTORY=/tmp/icl-mps-log
  mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
  if nvidia-cuda-mps-control -d && timeout 60 "$python" -c "import torch; torch.ones(1, device='cuda').sum().item()"
  then
    echo "MPS: on" >>"$out/logs/environment.log"
    trap 'echo quit | nvidia-cuda-mps-control' EXIT
  else
    echo quit | nvidia-cuda-mps-control 2>/dev/null
    unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
    echo "MPS: failed to start, off" >>"$out/logs/environment.log"
  fi
else
  echo "MPS: not installed" >>"$out/logs/environment.log"
fi

chapter() {  # chapter NAME PRESET: one `python -m icl run`, logged, within the budget
  local name=$1 preset=$2 started=$SECONDS
  if [ "$name" = 05_full_form_gd_plus_plus ]; then
    timeout "$(left)" "$python" bench/train_parallel.py --preset "$preset" --device cuda --workers 8 \
      >"$out/logs/train_parallel-$preset.log" 2>&1 || { echo "$name $preset training exit $?" >>"$out/logs/exits.log"; return; }
  fi
  timeout "$(left)" "$python" -m icl run "$name" --preset "$preset" --device cuda --seed 0 --out "$out/$preset" \
    >"$out/logs/$name-$preset.log" 2>&1
  echo "$name $preset exit $? after $((SECONDS - started)) s (training included)" >>"$out/logs/exits.log"
}

lane_tests() {
  local workers=() files
  read -ra files <<<"${TESTS:-tests --ignore=tests/test_site.py --ignore=tests/test_environment.py}"
  "$python" -c "import xdist" 2>/dev/null && workers=(-n 4)
  ICL_TEST_DEVICE=cuda timeout "$(left)" "$python" -m pytest -q -p no:cacheprovider "${workers[@]}" "${files[@]}" \
    >"$out/logs/tests.log" 2>&1
  echo "tests exit $?" >>"$out/logs/exits.log"
  if [ "${PROBE:-0}" = 1 ]; then
    timeout "$(left)" "$python" bench/train_parallel.py --preset paper --device cuda --workers 1 --fits L4 \
      --set train_steps=2000 >"$out/logs/probe.log" 2>&1
  fi
}

lane() {  # lane PRESET CHAPTER...: the chapters one after another
  local preset=$1
  shift
  for name in "$@"; do chapter "$name" "$preset"; done
}

# Three lanes of about equal CPU time (the chapters' quick times on 2 cores), the longest chapters first.
default_lanes="05_full_form_gd_plus_plus 08_prompt_length 03_multi_step_pgd 01_setup_and_notation;\
10_gpt_least_squares 11_softmax_covariate_shift 02_one_step_pgd 07_gradient_flow;\
06_looped_transformers 04_trained_transformers_do_gd 09_distribution_shift"
lane_tests &
# shellcheck disable=SC2086  # the chapter lists split on spaces
lane paper ${PAPER_CHAPTERS-05_full_form_gd_plus_plus} &
IFS=';' read -ra lanes <<<"${QUICK_LANES-$default_lanes}"
for chapters in "${lanes[@]}"; do
  # shellcheck disable=SC2086
  lane quick $chapters &
done
wait

"$python" - "$out" >"$out/summary.txt" <<'EOF'
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
print(f"{'chapter':<30} {'preset':<6} {'checks':<12} {'elapsed s':>9} {'GPU peak MiB':>12}  failed")
for path in sorted(out.glob("*/*.json")):
    record = json.loads(path.read_text())
    checks = record["claim_checks"]
    gpu = record["run"].get("gpu") or {}
    failed = [c["name"] for c in checks if not c["passed"]]
    passed = f"{len(checks) - len(failed)}/{len(checks)} pass"
    print(f"{record['chapter']:<30} {record['preset']:<6} {passed:<12} {record['elapsed_seconds']:>9.1f} "
          f"{gpu.get('peak_memory_mib', float('nan')):>12.1f}  {'; '.join(failed)}")
EOF
{
  echo
  cat "$out/logs/exits.log"
  tail -n 3 "$out/logs/tests.log"
} >>"$out/summary.txt"
cat "$out/summary.txt"
