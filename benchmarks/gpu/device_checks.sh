#!/usr/bin/env bash
# The GPU checks of issues 12, 13 and 15 as one short script for a lent device machine (one H100/H200-class GPU).
# Each check has its own time limit so that one slow check cannot eat the others; the most useful run first.
# Its output goes to stdout and, when OUT is set (the device tool), to $OUT/device_checks.log and CSVs under $OUT.
#
#     bash benchmarks/gpu/device_checks.sh
#
# The machine's image has torch but not this project's pure-Python dependencies: copy them from a local venv into
# .gpudeps/ first (antlr4 hydra omegaconf submitit torch_fidelity) and carry that folder; it goes on PYTHONPATH.
set -u
OUT=${OUT:-$(mktemp -d)}
export PYTHONPATH=$PWD/.gpudeps:$PWD PYTHONUNBUFFERED=1
exec > >(tee "$OUT/device_checks.log") 2>&1
check() {  # check SECONDS TITLE COMMAND...
  local limit=$1 title=$2; shift 2
  echo "== $title (limit ${limit}s)"
  local start=$SECONDS
  timeout "$limit" "$@"; local rc=$?
  echo "-- rc $rc in $((SECONDS - start)) s"
}
nvidia-smi -L
python3 -c "import torch; print('torch', torch.__version__, torch.version.cuda, torch.cuda.get_device_name())"
check 90 "issue 12: BAR-B training step, micro-batch 128, bf16, eager" \
  python3 benchmarks/gpu/bar_b_step.py --micro 128 --steps 10
check 150 "issue 13: release pipeline, 1000 samples" \
  python3 benchmarks/gpu/release_pipeline.py --samples 1000 --batch 250
check 200 "issue 15: fast paths at BAR-B, bf16, batch 128 train / 256 sample" \
  python3 benchmarks/bench_fast_paths.py --scale bar_b --repeats 3 --out "$OUT/fast_paths_bar_b.csv"
check 100 "issue 12/15: BAR-B training step, micro-batch 128, bf16, compiled" \
  python3 benchmarks/gpu/bar_b_step.py --micro 128 --steps 10 --compile
