"""Memory of one paper-size tokenizer training step (not a test): the release's BAR-FSQ (SigLIP2-so400m/16 encoder,
ViT-L decoder) with every loss of the recipe on (LPIPS + ConvNeXt-S perceptual, SigLIP distillation from the frozen
encoder copy, Gram, hinge GAN past its start step), random weights, fp32 on this machine's CPU.

    python benchmarks/bench_tokenizer_memory.py [--batches 1,2] [--bits 16] [--gpu-gb 80]
                                                [--out benchmarks/results/tokenizer_memory.csv]

Per micro-batch: resident bytes (trainable and frozen parameters, buffers, AdamW state), the activations the forward
pass keeps for backward (the peak of the forward alone, graph held), and the measured peak of one whole AdamW step
above the resident bytes (torch profiler allocation events, bar.orchestration.memory; at small micro-batches the optimizer's
gradients and temporaries set it, not the activations). Activation bytes per image are the slope between two
micro-batches; the micro-batch that fits `--gpu-gb` is the largest with resident + gradients + activations inside it,
in fp32 (measured) and for bf16 autocast (activations halved: an estimate, not measured here). The
discriminator's own step (its trainable heads over frozen DINO features) is not included: it runs after the
tokenizer step, with the tokenizer's activations freed.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bar.orchestration.config import compose  # noqa: E402
from bar.tokenizers.losses.combined import build_tokenizer_loss  # noqa: E402
from bar.orchestration.memory import _bytes, gib, measure_peak_train_memory  # noqa: E402
from bar.orchestration.stages.tokenizer import new_tokenizer, training_loss_fn  # noqa: E402
from bar.training.tokenizer_hooks import tokenizer_param_groups  # noqa: E402

FIELDS = ["micro_batch", "trainable_params", "frozen_params", "resident_gib", "activations_gib", "step_peak_gib",
          "total_gib", "seconds", "bits", "resolution"]


def measure(cfg, batch: int) -> dict:
    device = torch.device("cpu")
    tokenizer = new_tokenizer(cfg, device).train()
    loss = build_tokenizer_loss(cfg.tokenizer.loss, cfg.tokenizer.weights, random_init=True).to(device)
    loss_fn = training_loss_fn(cfg, loss, device)
    t = cfg.tokenizer.train
    opt = torch.optim.AdamW(tokenizer_param_groups(tokenizer, t.lr, t.encoder_lr_mult, t.weight_decay))
    res = cfg.data.resolution
    images = torch.randint(0, 256, (batch, 3, res, res), dtype=torch.uint8)
    step = int(cfg.tokenizer.loss.gan_start)           # the GAN term on: the step with every part of the loss
    generator = torch.Generator().manual_seed(0)

    def one_step():
        opt.zero_grad(set_to_none=True)
        loss_fn(tokenizer, (images,), step, generator).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    one_step()                                          # AdamW state exists from here on
    trainable = [p for p in tokenizer.parameters() if p.requires_grad]
    frozen = [p for m in (tokenizer, loss) for p in m.parameters() if not p.requires_grad]
    resident = _bytes(trainable) + _bytes(frozen) + _bytes(tokenizer.buffers()) + _bytes(loss.buffers()) \
        + sum(_bytes(s.values()) for s in opt.state.values())
    start = time.perf_counter()
    peak = measure_peak_train_memory(one_step, device)
    seconds = time.perf_counter() - start
    held = []                                           # the loss (and through it the graph) outlives the measurement
    activations = measure_peak_train_memory(lambda: held.append(loss_fn(tokenizer, (images,), step, generator)))
    held.clear()
    return {"micro_batch": batch, "trainable_params": sum(p.numel() for p in trainable),
            "frozen_params": sum(p.numel() for p in frozen), "resident_gib": gib(resident),
            "activations_gib": gib(activations), "step_peak_gib": gib(peak),
            "total_gib": gib(resident + max(peak, activations)), "seconds": seconds,
            "bits": cfg.tokenizer.bits, "resolution": res}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", default="1,2")
    ap.add_argument("--bits", type=int, default=16)
    ap.add_argument("--gpu-gb", type=float, default=80.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "tokenizer_memory.csv"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = compose(["profile=paper", "data.root=/unused", "device=cpu", f"tokenizer.bits={args.bits}"])
    rows = []
    for batch in (int(b) for b in args.batches.split(",")):
        rows.append(measure(cfg, batch))
        r = rows[-1]
        print(f"micro-batch {batch}: resident {r['resident_gib']:.2f} GiB ({r['trainable_params'] / 1e6:.0f}M "
              f"trainable + {r['frozen_params'] / 1e6:.0f}M frozen params, AdamW state), forward activations "
              f"{r['activations_gib']:.2f} GiB, step peak {r['step_peak_gib']:.2f} GiB, total {r['total_gib']:.2f} GiB "
              f"(step {r['seconds']:.0f} s)", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in rows)
    if len(rows) >= 2:
        a, b = rows[0], rows[-1]
        per_image = (b["activations_gib"] - a["activations_gib"]) / (b["micro_batch"] - a["micro_batch"])
        grads = a["trainable_params"] * 4 / 2 ** 30                     # fp32 gradients, alive with the activations
        fixed = a["resident_gib"] + grads + a["activations_gib"] - per_image * a["micro_batch"]
        budget = args.gpu_gb * 1e9 / 2 ** 30 * 0.9             # 10% for the allocator and CUDA context
        for name, act in (("fp32", per_image), ("bf16 autocast (activations / 2, estimated)", per_image / 2)):
            fits = int((budget - fixed) // act) if act > 0 else 0
            print(f"{name}: {act:.2f} GiB per image + {fixed:.2f} GiB fixed -> micro-batch {fits} fits "
                  f"{args.gpu_gb:g} GB (90% usable)")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
