"""Release tokenizer benchmark (not a test): decode speed of the release's BAR-FSQ at full size on this machine.

    python benchmarks/bench_release_tokenizer.py [--resolution 256] [--bits 16] [--batch 4] [--iters 3]
                                                 [--threads 1] [--encode] [--out benchmarks/results/release_tokenizer.csv]

Full-size architecture (ViT-L decoder, 1024 wide, 24 layers; SigLIP2-so400m/16 encoder with --encode) with random
weights: the same compute as the released checkpoints. fp32, no grad. Decoding bounds the sampling speed at paper
scale: every generated image goes through it once. Times are wall-clock medians after one warm-up batch on a shared
machine.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bar.tokenizers.release import FULL, ReleaseTokenizer  # noqa: E402

FIELDS = ["section", "resolution", "bits", "batch", "threads", "iters", "sec_per_batch", "img_per_s", "params",
          "gflop_per_img", "note"]


def decoder_gflops(model: ReleaseTokenizer) -> float:
    """Multiply-adds x 2 of one decode: the transformer over grid^2 + 1 tokens, the 1x1 conv and the 3x3 conv_out."""
    d, t, s = model.size.dec_width, model.grid ** 2 + 1, model.size
    per_block = 2 * t * (4 * d * d + 2 * d * int(d * s.dec_mlp_ratio)) + 2 * 2 * t * t * d
    pixels = model.resolution ** 2
    return (s.dec_depth * per_block + 2 * model.grid ** 2 * d * 768 + 2 * pixels * 27 * 3
            + 2 * model.grid ** 2 * model.bits * d) / 1e9


def encoder_gflops(model: ReleaseTokenizer) -> float:
    e, t, s = model.size.enc_width, model.grid ** 2, model.size
    per_layer = 2 * t * (4 * e * e + 2 * e * s.enc_mlp) + 2 * 2 * t * t * e
    return (s.enc_depth * per_layer + 2 * t * 768 * e + 2 * t * e * model.bits) / 1e9


def time_it(fn, iters: int) -> float:
    fn()                                                  # warm-up
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--resolution", type=int, default=256)
    ap.add_argument("--bits", type=int, default=16)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--encode", action="store_true", help="also time encoding (builds the 840M-parameter encoder)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "release_tokenizer.csv"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    start = time.perf_counter()
    model = ReleaseTokenizer(args.bits, args.resolution, FULL, with_encoder=args.encode).eval()
    build_s = time.perf_counter() - start
    L = model.grid ** 2
    bits = torch.randint(0, 2, (args.batch, L, args.bits), dtype=torch.uint8)
    dec_params = sum(p.numel() for p in model.decoder.parameters()) + sum(
        p.numel() for p in model.quantize.out_proj.parameters())
    note = f"full size, random weights, fp32, {platform.machine()} {torch.get_num_threads()} thread(s), " \
           f"build {build_s:.1f}s, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    rows = []
    sec = time_it(lambda: model.decode(bits), args.iters)
    rows.append({"section": "decode", "resolution": args.resolution, "bits": args.bits, "batch": args.batch,
                 "threads": args.threads, "iters": args.iters, "sec_per_batch": round(sec, 3),
                 "img_per_s": round(args.batch / sec, 4), "params": dec_params,
                 "gflop_per_img": round(decoder_gflops(model), 1), "note": note})
    if args.encode:
        images = torch.rand(args.batch, 3, args.resolution, args.resolution) * 2 - 1
        sec = time_it(lambda: model.encode(images), args.iters)
        enc_params = sum(p.numel() for p in model.encoder.siglip.embeddings.parameters()) + sum(
            p.numel() for p in model.encoder.trainable_encoder.parameters())
        rows.append({"section": "encode", "resolution": args.resolution, "bits": args.bits, "batch": args.batch,
                     "threads": args.threads, "iters": args.iters, "sec_per_batch": round(sec, 3),
                     "img_per_s": round(args.batch / sec, 4), "params": enc_params,
                     "gflop_per_img": round(encoder_gflops(model), 1), "note": note})
    for row in rows:
        gflops = row["gflop_per_img"] * row["img_per_s"]
        print(f"{row['section']:>6} {row['resolution']}px batch {row['batch']}: {row['sec_per_batch']:.2f} s/batch, "
              f"{row['img_per_s']:.3f} img/s, {row['gflop_per_img']} GFLOP/img (~{gflops:.0f} GFLOP/s), "
              f"{row['params'] / 1e6:.1f}M params  [{row['note']}]")
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
