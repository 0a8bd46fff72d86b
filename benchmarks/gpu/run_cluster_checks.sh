#!/usr/bin/env bash
# benchmarks/gpu/cluster_checks.py, every part, on a lent GPU machine (one H100/H200): under 8 minutes of command
# time. The machine's image has torch (and numpy, scipy, PIL, torchvision) but not this project's pure-Python
# dependencies: copy them here into .gpudeps/ (git-ignored) first and carry that folder:
#
#     bash benchmarks/gpu/run_cluster_checks.sh prepare          # here, once: .venv's hydra, omegaconf, ... -> .gpudeps/
#     run(command="bash benchmarks/gpu/run_cluster_checks.sh", carry=[".gpudeps"], timeout_s=540)
#
# Output: stdout and $OUT/cluster_checks.log (each part's result lines, rc and seconds); each part's stderr (progress,
# warnings) in $OUT/cluster_checks_PART.err, its tail shown when the part fails. Each part runs in its own process
# under its own limit (seconds, times SCALE); LIMIT (default 465 s) bounds the whole: a part gets at most what is
# left, and none starts with under 30 s left. Arguments go to every part; the CPU dry run at toy sizes:
#
#     PYTHON=.venv/bin/python SCALE=6 LIMIT=3000 bash benchmarks/gpu/run_cluster_checks.sh --tiny --device cpu
set -u
cd "$(dirname "$0")/../.."
if [ "${1:-}" = prepare ]; then
  site=$(.venv/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  rm -rf .gpudeps && mkdir -p .gpudeps
  for pkg in antlr4 hydra omegaconf submitit torch_fidelity cloudpickle; do cp -r "$site/$pkg" .gpudeps/; done
  du -sh .gpudeps
  exit 0
fi
OUT=${OUT:-$(mktemp -d)}
PY=${PYTHON:-python3}
ARGS=("$@")
export PYTHONPATH=$PWD/.gpudeps:$PWD PYTHONUNBUFFERED=1
exec > >(tee "$OUT/cluster_checks.log") 2>&1
deadline=$((SECONDS + ${LIMIT:-465}))

part() {  # part SECONDS NAME
  local limit=$(($1 * ${SCALE:-1})) name=$2 left=$((deadline - SECONDS)) start=$SECONDS rc
  if [ "$left" -lt 30 ]; then echo "== $name: skipped (${left} s of LIMIT left)"; return; fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "== $name (limit ${limit} s)"
  timeout -k 5 "$limit" "$PY" benchmarks/gpu/cluster_checks.py "$name" "${ARGS[@]}" 2>"$OUT/cluster_checks_$name.err"
  rc=$?
  [ "$rc" -ne 0 ] && tail -n 12 "$OUT/cluster_checks_$name.err"
  echo "-- rc $rc in $((SECONDS - start)) s"
}

nvidia-smi -L 2>/dev/null || echo "(no nvidia-smi)"
"$PY" -c "import torch; print('torch', torch.__version__, torch.version.cuda,
  torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')"
"$PY" -c "import hydra, omegaconf, submitit, torch_fidelity" 2>/dev/null \
  || echo "error: hydra/omegaconf/submitit/torch_fidelity missing: run 'bash $0 prepare' here and carry .gpudeps"
part 150 ddp_compile
part 70 resume
part 100 sample_l512
part 90 precision
part 55 tokenizer
