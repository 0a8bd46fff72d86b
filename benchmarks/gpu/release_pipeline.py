"""GPU check for issue 13 (run on one H100/H200-class GPU; not a test): the paper protocol's pipeline end to end at
full size with random weights, timed per stage: BAR-B samples (CFG, KV cache, bf16, the release's settings) ->
the release tokenizer's decoder (full size) -> ADM Inception features (pool, spatial, logits) -> the ADM metrics
against a reference of as many random images.

    python benchmarks/gpu/release_pipeline.py [--samples 1000] [--batch 250] [--model bar_b]

Exits non-zero without CUDA. Its metric values mean nothing (random weights); the timings are the point."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bar.eval import adm  # noqa: E402
from bar.orchestration.build import build_generator, sampling_schedule  # noqa: E402
from bar.orchestration.config import compose  # noqa: E402
from bar.core.distributed import configure_device  # noqa: E402
from bar.tokenizers.release import ReleaseTokenizer  # noqa: E402
from bar.model.sampling import generate  # noqa: E402
from bar.data.images import float_to_images  # noqa: E402


def timed(label: str, fn):
    torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return out, seconds


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=250)
    ap.add_argument("--model", default="bar_b")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("error: this check needs a CUDA GPU (run it on the device machine)", file=sys.stderr)
        return 2
    device = torch.device("cuda")
    configure_device(device)
    cfg = compose(["profile=paper", "data.root=/unused", f"model={args.model}"])
    torch.manual_seed(0)
    model = build_generator(cfg).to(device).eval()
    tokenizer = ReleaseTokenizer(16, 256, "full", with_encoder=False).to(device).eval()
    extractor = adm.InceptionADM.random(0).to(device)
    s, schedule = cfg.generator.sample, sampling_schedule(cfg, model)
    labels = torch.arange(args.samples) % 1000
    times, images = {"sample": 0.0, "decode": 0.0, "features": 0.0}, []
    for i in range(0, args.samples, args.batch):
        g = torch.Generator(device=device).manual_seed(i)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            tokens, t = timed("sample", lambda: generate(model, labels[i:i + args.batch].to(device),
                                                          cfg_scale=s.cfg_scale, temperature=s.temperature,
                                                          generator=g, kv_cache=True, **schedule))
            times["sample"] += t
            batch, t = timed("decode", lambda: float_to_images(tokenizer.decode(tokens)))
            times["decode"] += t
        images.append(batch.permute(0, 2, 3, 1).cpu())
    images = torch.cat(images)
    feats, times["features"] = timed("features", lambda: adm.compute_features(images.split(args.batch), extractor,
                                                                              device))
    reference = np.random.default_rng(0).integers(0, 256, images.shape, dtype=np.uint8)
    ref_feats, _ = timed("ref", lambda: adm.compute_features(torch.from_numpy(reference).split(args.batch),
                                                              extractor, device))
    ref = adm.ReferenceBatch(path=Path("random"), num_images=len(reference), image_shape=reference.shape[1:])
    scores, times["metrics"] = timed("metrics", lambda: adm.adm_scores(feats, ref, ref_feats, device=device))
    n = args.samples
    print(f"{args.model} on {torch.cuda.get_device_name()}, {n} samples, batch {args.batch}, bf16: sample "
          f"{n / times['sample']:.1f} img/s, decode {n / times['decode']:.1f} img/s, ADM features "
          f"{n / times['features']:.1f} img/s, metrics {times['metrics']:.1f} s; end to end "
          f"{sum(times.values()):.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
