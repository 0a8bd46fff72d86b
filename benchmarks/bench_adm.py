"""ADM evaluator benchmark (not a test): what guided-diffusion's protocol costs on this machine, by stage.

    python benchmarks/bench_adm.py [--samples 2000] [--reference 10000] [--resolution 256] [--batch 64]
                                   [--threads 1] [--distance fp16] [--out benchmarks/results/adm.csv]

Stages, timed separately:
  write_npz      writing the samples' npz (arr_0, uint8 NHWC) and reading it back
  features       Inception features (pool, spatial, logits) of the samples: torch-fidelity's inception-v3-compat
                 architecture with random weights (InceptionADM.random: the real class and forward, weights left
                 random; the same compute as the real weights)
  fid / sfid     statistics (mean, covariance) of the samples + Frechet distance (2048 / 2023 dims, scipy sqrtm)
  inception      IS from the logits
  prec_recall    k=3 manifolds: radii of the reference set and of the samples, then the cross pass
Reference features: extracting the 10,000 reference images costs `reference` x the per-image feature time (printed
as an extrapolation, not run); the metric stages use 10,000 random reference feature vectors of the real size, so
their cost is measured at the real scale. Wall-clock on a shared machine: read as rough figures.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bar.eval.adm import (InceptionADM, compute_features, feature_statistics, fid_from_stats, inception_score,
    iter_npz_images, precision_recall, write_samples_npz)

FIELDS = ["stage", "n", "seconds", "ms_per_image", "threads", "note"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--reference", type=int, default=10000)
    ap.add_argument("--resolution", type=int, default=256)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--distance", default="fp16", choices=["fp16", "fp32"])
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "adm.csv"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    rows = []

    def record(stage, n, seconds, note=""):
        note = f"{note}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores".lstrip("; ")
        rows.append({"stage": stage, "n": n, "seconds": round(seconds, 2),
                     "ms_per_image": round(1000 * seconds / max(n, 1), 2), "threads": args.threads, "note": note})
        print(f"{stage:>22}: {seconds:8.1f} s  ({n} items, {1000 * seconds / max(n, 1):.1f} ms each) {note}",
              flush=True)

    images = rng.integers(0, 256, size=(args.samples, args.resolution, args.resolution, 3), dtype=np.uint8)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        path = write_samples_npz(Path(tmp) / "samples.npz", images)
        batches = list(iter_npz_images(path, args.batch))
        record("write_read_npz", args.samples, time.perf_counter() - start, f"{path.stat().st_size / 2**20:.0f} MiB")

    extractor = InceptionADM.random(seed=0)
    start = time.perf_counter()
    feats = compute_features(batches, extractor)
    feat_s = time.perf_counter() - start
    record("features", args.samples, feat_s, f"random-weight inception-v3-compat, batch {args.batch}, "
                                             f"{args.resolution}px -> 299")
    record("reference_features_est", args.reference, feat_s / args.samples * args.reference,
           "extrapolated from the sample rate; computed once per reference file")

    ref_pool = np.abs(rng.normal(size=(args.reference, 2048))).astype(np.float32) * 0.3
    ref_spatial = np.abs(rng.normal(size=(args.reference, feats.spatial.shape[1]))).astype(np.float32)
    mu, sigma = feature_statistics(ref_pool)
    mu_s, sigma_s = feature_statistics(ref_spatial)
    start = time.perf_counter()
    fid_from_stats(*feature_statistics(feats.pool), mu, sigma)
    record("fid", args.samples, time.perf_counter() - start, "2048-dim stats + sqrtm")
    start = time.perf_counter()
    fid_from_stats(*feature_statistics(feats.spatial), mu_s, sigma_s)
    record("sfid", args.samples, time.perf_counter() - start, f"{feats.spatial.shape[1]}-dim stats + sqrtm")
    start = time.perf_counter()
    inception_score(feats.logits)
    record("inception_score", args.samples, time.perf_counter() - start)
    start = time.perf_counter()
    precision_recall(ref_pool, feats.pool, distance=args.distance)
    record("precision_recall", args.samples, time.perf_counter() - start,
           f"k=3, {args.reference} reference x {args.samples} samples, {args.distance} distances")
    metrics = sum(r["seconds"] for r in rows if r["stage"] in ("fid", "sfid", "inception_score", "precision_recall"))
    record("total_without_reference", args.samples, feat_s + metrics, "features + metrics")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    new = not out.exists()
    with out.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        if new:
            writer.writeheader()
        writer.writerows(rows)
    print(f"appended {len(rows)} row(s) to {out}")


if __name__ == "__main__":
    main()
