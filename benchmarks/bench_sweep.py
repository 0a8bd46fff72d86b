"""Wall time of one sweep from cold caches, and the headline metrics of every point.

    python benchmarks/bench_sweep.py bits_vs_rfid            # the issue's benchmark: tiny profile, 2 cores
    python benchmarks/bench_sweep.py codebook_scaling         # what `make demo` runs
    python benchmarks/bench_sweep.py bits_vs_rfid profile=smoke

Runs `run.py -m sweep=NAME [overrides]` in a fresh output folder (no cached tokenizers, classifier or statistics),
then reads the points back from that folder's MLflow store. Writes benchmarks/results/sweep_NAME.csv."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

COLUMNS = ["status", "total_bits", "rfid", "gfid", "gfid_nocfg", "inception_score", "train_img_per_s",
           "sample_img_per_s", "mem_estimate_gb"]


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    sweep, overrides = argv[0], argv[1:]
    with tempfile.TemporaryDirectory(prefix=f"bench-{sweep}-") as outputs:
        env = {**os.environ, "BAR_OUTPUTS": outputs, "MLFLOW_TRACKING_URI": f"sqlite:///{outputs}/mlflow.db"}
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, str(ROOT / "run.py"), "-m", f"sweep={sweep}", *overrides], cwd=ROOT,
                              env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if proc.returncode not in (0, 1):
            print(proc.stderr[-3000:], file=sys.stderr)
            return proc.returncode
        from analysis.runs import load_runs

        frame = load_runs(tracking_uri=env["MLFLOW_TRACKING_URI"], sweep=sweep)
    table = frame.set_index("run_name")[[c for c in COLUMNS if c in frame.columns]].sort_values(
        [c for c in ("total_bits",) if c in frame.columns] or ["status"])
    out = ROOT / "benchmarks" / "results" / f"sweep_{sweep}.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out)
    print(f"sweep {sweep} {' '.join(overrides)}: {len(table)} points in {wall:.0f} s wall "
          f"({os.cpu_count()} CPUs); exit code {proc.returncode}")
    print(table.to_string(float_format=lambda v: f"{v:.4g}"))
    print(f"written {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
