"""GPU check for issue 12 (run on one H100/H200-class GPU; not a test): one BAR-B training step at micro-batch 128 in
bf16 autocast with TF32, as the release trains it per GPU: measured peak memory against the memory plan's estimate,
and training img/s.

    python benchmarks/gpu/bar_b_step.py [--micro 128] [--steps 10] [--model bar_b] [--compile]

Prints one line per setting and exits non-zero without CUDA."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bar.orchestration.build import build_generator  # noqa: E402
from bar.orchestration.config import compose  # noqa: E402
from bar.core.distributed import configure_device  # noqa: E402
from bar.orchestration.memory import per_gpu_breakdown  # noqa: E402
from bar.training.optim import decays  # noqa: E402
from bar.training.loop import Recipe, _optimizer, micro_generator  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="bar_b")
    ap.add_argument("--micro", type=int, default=128)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--compile", action="store_true")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("error: this check needs a CUDA GPU (run it on the device machine)", file=sys.stderr)
        return 2
    device = torch.device("cuda")
    configure_device(device)
    cfg = compose(["profile=paper", "data.root=/unused", f"model={args.model}"])
    torch.manual_seed(0)
    model = build_generator(cfg).to(device)
    with torch.device("meta"):
        estimate = sum(per_gpu_breakdown(build_generator(cfg), args.micro, bytes_per_act=2).values()) / 2 ** 30
    recipe = Recipe(steps=1, lr=4e-4, weight_decay=0.03, betas=(0.9, 0.96), decays=decays)
    optimizer = _optimizer(model, recipe)
    step_fn = torch.compile(model) if args.compile else model
    g = model.cfg
    tokens = torch.randint(0, 2, (args.micro, g.grid[0] * g.grid[1], g.token_dim), dtype=torch.uint8, device=device)
    labels = torch.randint(0, 1000, (args.micro,), device=device)

    def step(i: int) -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = step_fn(tokens, labels, 0, micro_generator(0, i, 0, device))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    start = time.perf_counter()
    step(0)
    torch.cuda.synchronize()
    first = time.perf_counter() - start
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for i in range(1, args.steps + 1):
        step(i)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2 ** 30
    print(f"{args.model} micro-batch {args.micro} bf16{' compiled' if args.compile else ''} on "
          f"{torch.cuda.get_device_name()}: peak {peak:.1f} GiB (estimate {estimate:.1f} GiB, "
          f"{peak / estimate:.2f}x), {args.micro * args.steps / seconds:.1f} img/s over {args.steps} steps "
          f"(first step {first:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
