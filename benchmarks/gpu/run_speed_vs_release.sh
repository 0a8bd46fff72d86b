#!/usr/bin/env bash
# benchmarks/gpu/speed_vs_release.py on the lent GPU machine (one H100/H200): under 8 minutes of command time. Needs
# benchmarks/gpu/_release/ carried along (bash benchmarks/gpu/prepare_release.sh here first). The device tool call:
#
#     run(command="bash benchmarks/gpu/run_speed_vs_release.sh", carry=["benchmarks/gpu/_release"], timeout_s=540)
#
# Output: stdout, and under $OUT speed_vs_release.log and speed_vs_release.csv (rewritten after every part).
# Arguments are passed on, e.g. `--parts sample:bar_l:bf16,train:bar_l` for the parts a first run skipped.
# LIMIT (default 470 s) is a hard stop; BUDGET (default 400 s) is when the script stops starting parts.
set -u
OUT=${OUT:-$(mktemp -d)}
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
if [ ! -f benchmarks/gpu/_release/BAR/modeling/generator.py ]; then
  echo "error: benchmarks/gpu/_release/BAR is missing: run benchmarks/gpu/prepare_release.sh and carry the folder"
  exit 2
fi
nvidia-smi -L
python3 -c "import torch, numpy; print('torch', torch.__version__, torch.version.cuda, torch.cuda.get_device_name())"
timeout "${LIMIT:-470}" python3 benchmarks/gpu/speed_vs_release.py --release benchmarks/gpu/_release \
  --budget-s "${BUDGET:-400}" --csv "$OUT/speed_vs_release.csv" "$@" 2>&1 | tee "$OUT/speed_vs_release.log"
echo "-- rc ${PIPESTATUS[0]}"
