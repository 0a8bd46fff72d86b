"""GPU check for issue 15 (one H100/H200-class GPU; not a test): are the cached decoder's tokens the cache-free
reference's on CUDA? At BAR-B's sizes and sampling settings (random weights), one batch from the same seed through
the reference (`kv_cache=False`), the cached decoder and the compiled one (CUDA graphs), in fp32 without TF32 and
under bf16 autocast: the share of tokens equal to the reference's, and the first AR step where they part. On CPU in
fp32 they are identical (tests/model/test_fast_paths.py).

    python benchmarks/gpu/fast_equality.py [--batch 16] [--no-compile]
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench_fast_paths import SCALES, build  # noqa: E402

from bar.model.sampling import generate  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--no-compile", action="store_true")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("error: this check needs a CUDA GPU (run it on the device machine)", file=sys.stderr)
        return 2
    device, sc = torch.device("cuda"), SCALES["bar_b"]
    model = build(sc, 16, device).eval()
    labels = torch.arange(args.batch, device=device) % sc.num_classes
    kw = dict(cfg_scale=sc.cfg_scale, temperature=sc.temperature, allocation=sc.allocation)
    paths = {"cached": dict()} | ({} if args.no_compile else {"compiled": dict(compile=True)})
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    for precision in ("fp32", "bf16"):
        ctx = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if precision == "bf16" else contextlib.nullcontext

        def run(opts):
            with ctx():
                return generate(model, labels, generator=torch.Generator(device=device).manual_seed(0), **kw, **opts)

        reference = run(dict(kv_cache=False))
        for name, opts in paths.items():
            start = time.perf_counter()
            out = run(opts)
            same = (out == reference).all(dim=-1)                  # B x L tokens: every bit equal
            parted = (~same).any(dim=0).nonzero()
            first = int(parted[0]) if len(parted) else None
            print(f"{precision} {name:8s}: {same.float().mean().item():.4f} of tokens equal to the reference's, "
                  f"identical samples {same.all(dim=1).sum().item()}/{args.batch}, first differing AR step "
                  f"{first if first is not None else '-'} ({time.perf_counter() - start:.0f} s incl. compile)",
                  flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
