"""Heads benchmark (not a test): memory and speed of the MBM head against the baselines on one backbone.

    python benchmarks/bench_heads.py [--profile tiny] [--batch 32] [--sample-batch 16] [--threads 1]
                                     [--mem-budget-gib 4] [--out benchmarks/results/heads.csv] [OVERRIDE ...]

The backbone is the composed config's (`--profile` plus Hydra overrides, e.g. `model.head_width=256`, as in the
earlier figures of this benchmark). Sections (all at the same backbone; CPU):
  train     one AdamW training step per head (mbm, softmax, bitwise at 8/16/24 bits per token; diffusion at 16
            channels): measured peak memory (bar.orchestration.memory.measure_train_step), the estimate (bar.orchestration.memory
            .estimate_train_memory) and step time (median of 3 steps after a warm-up). A point whose estimate exceeds
            --mem-budget-gib is not run: estimate only (the softmax head at 24 bits needs ~2^24 logits per position).
  mbm_bits  MBM peak memory at 8, 16, 32, 64 bits per token (should stay nearly flat).
  sample    sampling img/s per head (CFG on, KV cache), including the diffusion head (100 steps per token) relative
            to MBM.
  kv_cache  training img/s and sampling img/s of the preset (MBM, 16 bits) with and without the KV cache.
Timings are wall-clock on a shared machine: read them as rough ratios, not absolute figures.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bar.orchestration.build import build_generator, sampling_schedule  # noqa: E402
from bar.orchestration.config import compose  # noqa: E402
from bar.model.heads import HEADS  # noqa: E402
from bar.orchestration.memory import estimate_train_memory, fmt_bytes, measure_train_step  # noqa: E402
from bar.model.sampling import generate  # noqa: E402

FIELDS = ["section", "head", "bits", "batch", "peak_mem_bytes", "mem_estimate_bytes", "measured", "step_s",
          "train_img_per_s", "sample_img_per_s", "kv_cache", "note"]


def tokens_for(head: str, batch: int, length: int, k: int) -> torch.Tensor:
    if HEADS[head][0].token_kind == "continuous":
        return torch.randn(batch, length, k)
    return torch.randint(0, 2, (batch, length, k), dtype=torch.uint8)


def config_for(base: list[str], head: str, k: int):
    """The composed config of `head` at k bits per token (k channels for the continuous diffusion head)."""
    latent = ["tokenizer=ae", f"tokenizer.channels={k}"] if HEADS[head][0].token_kind == "continuous" \
        else ["tokenizer=fsq", f"tokenizer.bits={k}"]
    return compose(base + latent + [f"head={head}"])


def step_time(model, tokens, labels, repeats: int = 3) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()
    times = []
    for i in range(repeats + 1):
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        model.training_loss(tokens, labels, step=0).backward()
        opt.step()
        if i:                                       # the first step allocates the optimizer state
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def sample_rate(model, cfg, n: int, kv_cache: bool, repeats: int = 2) -> float:
    s = cfg.generator.sample
    labels = torch.arange(n) % model.cfg.num_classes
    sched = sampling_schedule(cfg, model)
    generate(model, labels[:2], cfg_scale=s.cfg_scale, temperature=s.temperature, kv_cache=kv_cache, **sched)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        generate(model, labels, cfg_scale=s.cfg_scale, temperature=s.temperature, kv_cache=kv_cache,
                 generator=torch.Generator().manual_seed(0), **sched)
        times.append(time.perf_counter() - start)
    return n / statistics.median(times)


def row(**kw) -> dict:
    return {f: kw.get(f, "") for f in FIELDS}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="tiny")
    ap.add_argument("--batch", type=int, default=None, help="training batch (default: the preset's)")
    ap.add_argument("--sample-batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--mem-budget-gib", type=float, default=4.0, help="run a training point only below this estimate")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "heads.csv"))
    ap.add_argument("overrides", nargs="*", help="Hydra overrides of the composed config")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    base = [f"profile={args.profile}", *args.overrides]
    cfg = compose(base)
    B = args.batch or cfg.generator.train.batch_size
    with torch.device("meta"):
        L = build_generator(cfg).cfg.steps
    budget = args.mem_budget_gib * 2 ** 30
    rows: list[dict] = []

    def train_point(section: str, head: str, k: int):
        point = config_for(base, head, k)
        with torch.device("meta"):
            est = estimate_train_memory(build_generator(point), B)
        if est > budget:
            rows.append(row(section=section, head=head, bits=k, batch=B, mem_estimate_bytes=est, measured=False,
                            note=f"estimate only: over the {args.mem_budget_gib:g} GiB budget"))
            print(f"  {section:8s} {head:9s} {k:3d} bits: estimate {fmt_bytes(est)} (not run)", flush=True)
            return
        torch.manual_seed(0)
        model = build_generator(point)
        tokens, labels = tokens_for(head, B, L, k), torch.randint(0, point.data.num_classes, (B,))
        peak = measure_train_step(model, tokens, labels)
        t = step_time(model, tokens, labels)
        rows.append(row(section=section, head=head, bits=k, batch=B, peak_mem_bytes=peak, mem_estimate_bytes=est,
                        measured=True, step_s=round(t, 4), train_img_per_s=round(B / t, 2)))
        print(f"  {section:8s} {head:9s} {k:3d} bits: peak {fmt_bytes(peak)}, estimate {fmt_bytes(est)}, "
              f"step {t * 1000:.0f} ms", flush=True)
        del model

    print(f"preset {cfg.model.preset} ({' '.join(base)}), train batch {B}, {L} tokens per image, {args.threads} thread(s)", flush=True)
    for head in ("mbm", "softmax", "bitwise"):
        for k in (8, 16, 24):
            train_point("train", head, k)
    train_point("train", "diffusion", 16)
    for k in (8, 16, 32, 64):
        train_point("mbm_bits", "mbm", k)

    n = args.sample_batch
    for head in ("mbm", "softmax", "bitwise", "diffusion"):
        torch.manual_seed(0)
        point = config_for(base, head, 16)
        model = build_generator(point).eval()
        rate = sample_rate(model, point, n, kv_cache=True)
        note = "100 denoising steps per token" if head == "diffusion" else ""
        rows.append(row(section="sample", head=head, bits=16, batch=n, sample_img_per_s=round(rate, 2),
                        kv_cache=True, note=note))
        print(f"  sample   {head:9s}  16 bits: {rate:.2f} img/s (CFG {point.generator.sample.cfg_scale}, KV cache)",
              flush=True)

    torch.manual_seed(0)
    point = config_for(base, "mbm", 16)
    model = build_generator(point)
    tokens, labels = tokens_for("mbm", B, L, 16), torch.randint(0, point.data.num_classes, (B,))
    train_rate = B / step_time(model, tokens, labels)
    model.eval()
    for kv in (True, False):
        rate = sample_rate(model, point, n, kv_cache=kv)
        rows.append(row(section="kv_cache", head="mbm", bits=16, batch=n, train_img_per_s=round(train_rate, 2),
                        sample_img_per_s=round(rate, 2), kv_cache=kv))
        print(f"  kv_cache mbm        16 bits: train {train_rate:.1f} img/s, sample {rate:.2f} img/s "
              f"(KV cache {'on' if kv else 'off'})", flush=True)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    print_table(rows)
    print(f"wrote {out}")
    return 0


def print_table(rows: list[dict]) -> None:
    print()
    print(f"{'section':9s} {'head':9s} {'bits':>4s} {'peak mem':>10s} {'estimate':>10s} {'step ms':>8s} "
          f"{'train img/s':>11s} {'sample img/s':>12s} {'kv':>5s}  note")
    mbm_rate = {r["kv_cache"]: r["sample_img_per_s"] for r in rows if r["section"] == "sample" and r["head"] == "mbm"}
    for r in rows:
        peak = fmt_bytes(r["peak_mem_bytes"]) if r["peak_mem_bytes"] != "" else "-"
        est = fmt_bytes(r["mem_estimate_bytes"]) if r["mem_estimate_bytes"] != "" else "-"
        step = f"{r['step_s'] * 1000:.0f}" if r["step_s"] != "" else "-"
        note = r["note"]
        if r["section"] == "sample" and mbm_rate.get(True):
            note = (note + "; " if note else "") + f"{r['sample_img_per_s'] / mbm_rate[True]:.2f}x MBM"
        print(f"{r['section']:9s} {r['head']:9s} {r['bits']:>4} {peak:>10s} {est:>10s} {step:>8s} "
              f"{str(r['train_img_per_s'] or '-'):>11s} {str(r['sample_img_per_s'] or '-'):>12s} "
              f"{str(r['kv_cache']):>5s}  {note}")
    kv = {r["kv_cache"]: r["sample_img_per_s"] for r in rows if r["section"] == "kv_cache"}
    if kv.get(True) and kv.get(False):
        print(f"KV cache speed-up in sampling: {kv[True] / kv[False]:.2f}x")


if __name__ == "__main__":
    raise SystemExit(main())
