"""Which offline feature extractor judges photo-crop images well enough for FID? A check that looks at no generator.

For every tokenizer `profile=small` trained (found in the cache by signature: fsq at the bits of codebook_scaling and
bits_vs_gfid, ae at their channels), reconstruct the validation crops and score them with each candidate extractor.
A judge is fit for rFID/gFID when its rFID ranks the tokenizers as their reconstruction error does (Spearman rho of
recon MSE vs rFID over the tokenizers; REPORT.md's agreement test asks >= 0.5), and when it ranks graded, known
degradations of the real validation crops (blur, noise, colour quantization) by strength. Candidates (the first
three listed before any was scored; random_ms added after them, before any generator was scored with it):
  classifier   the old extractor (eval.classifier at the profile: photo x strip labels, penultimate features)
  fine         the same network trained on finer labels: photo x 10 strips x above/below the validation band (40)
  random       the same network with random weights (no training), width 64, penultimate features
  random_ms    the same random network: mean and std over positions of every layer (multi-scale texture); what
               eval.classifier.features=random_multiscale builds (chosen: profile=small uses it)
Every candidate's features are divided once by their spread over the training crops (FID in comparable units; the
ranks do not change). Usage: python benchmarks/judge_check.py [--out benchmarks/results/judge_check.txt]"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from scipy.stats import spearmanr
from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bar.orchestration.build import build_tokenizer  # noqa: E402
from bar.core.files import load_verified  # noqa: E402
from bar.eval.features import DigitClassifier, RandomMultiscale, to_input, classifier_from_checkpoint
from bar.training.classifier import train_classifier
from bar.orchestration.config import compose, tokenizer_signature  # noqa: E402
from bar.data.datasets import TensorImages, build_dataset, photo_crop_boxes, photo_regions  # noqa: E402
from bar.data.images import float_to_images, images_to_float  # noqa: E402

FSQ_BITS = (4, 8, 12, 16, 24, 32, 64, 128)
AE_CHANNELS = (1, 2, 4, 8)


def cached_tokenizers(cache: Path):
    for kind, values in (("fsq", FSQ_BITS), ("ae", AE_CHANNELS)):
        for v in values:
            key = "tokenizer.bits" if kind == "fsq" else "tokenizer.channels"
            cfg = compose(["profile=small", f"tokenizer={kind}", f"{key}={v}", f"paths.cache={cache}"])
            path = cache / "tokenizer" / tokenizer_signature(cfg) / "tokenizer.pt"
            if path.is_file():
                tok = build_tokenizer(cfg)
                tok.load_state_dict(load_verified(path)["state_dict"])
                yield f"{kind}-{v}{'b' if kind == 'fsq' else 'c'}", tok.eval()


@torch.no_grad()
def reconstruct(tok, images: torch.Tensor) -> torch.Tensor:
    return torch.cat([float_to_images(tok(images_to_float(images[i:i + 250]))[0]) for i in range(0, len(images), 250)])


def degradations(val: torch.Tensor):
    """Graded known degradations of the real validation crops: (family, strength, images)."""
    x = val.float()
    g = torch.Generator().manual_seed(0)
    for s in (0.5, 1.0, 1.5):
        k = torch.arange(-2, 3, dtype=torch.float32)
        w = torch.exp(-k ** 2 / (2 * s * s))
        w = (w / w.sum()).view(1, 1, 1, 5)
        y = F.conv2d(F.pad(x.reshape(-1, 1, *x.shape[2:]), (2, 2, 0, 0), mode="replicate"), w)
        y = F.conv2d(F.pad(y, (0, 0, 2, 2), mode="replicate"), w.transpose(2, 3)).reshape(x.shape)
        yield "blur", s, y.round().clamp(0, 255).to(torch.uint8)
    for s in (8, 16, 32):
        yield "noise", s, (x + s * torch.randn(x.shape, generator=g)).round().clamp(0, 255).to(torch.uint8)
    for levels in (16, 8, 4):
        step = 255 / (levels - 1)
        yield "quantize", 256 // levels, ((x / step).round() * step).round().clamp(0, 255).to(torch.uint8)


def fine_labels(cfg) -> TensorImages:
    """The training crops relabelled photo x 10 strips x above/below the validation band (40 classes)."""
    d = cfg.data
    train = build_dataset(d, "train")
    boxes = photo_crop_boxes("train", d.train_size, d.crop_size, d.split_seed, bool(d.hflip))
    regions = {r.label: r for r in photo_regions(d.crop_size)}
    label, photo, top, left = (torch.from_numpy(boxes[:, i]) for i in range(4))
    centre = left + d.crop_size // 2
    strip10 = (centre * 10 // 640).clamp(max=9)
    below = torch.tensor([int(t >= regions[int(lab)].val_bottom) for t, lab in zip(top, label)])
    fine = photo * 20 + strip10 * 2 + below
    return TensorImages(train.images, fine, 40)


def extractor_features(name: str, cfg, cache: Path):
    d = cfg.data
    ccfg = cfg.eval.classifier
    if name == "classifier":
        tmp = cache / "judge" / "classifier"
        tmp.mkdir(parents=True, exist_ok=True)
        if not (tmp / "classifier.pt").is_file():
            train_classifier(build_dataset(d, "train"), d.in_channels, d.resolution, d.num_classes, ccfg, tmp)
        model = classifier_from_checkpoint(load_verified(tmp / "classifier.pt"))
    elif name == "fine":
        tmp = cache / "judge" / "fine"
        tmp.mkdir(parents=True, exist_ok=True)
        if not (tmp / "classifier.pt").is_file():
            train_classifier(fine_labels(cfg), d.in_channels, d.resolution, 40, ccfg, tmp)
        model = classifier_from_checkpoint(load_verified(tmp / "classifier.pt"))
    else:
        torch.manual_seed(0)
        if name == "random_ms":     # what eval.classifier.features=random_multiscale builds
            net = RandomMultiscale(d.in_channels, 64).eval()
            net.fit_scales(to_input(build_dataset(d, "train").images, d.in_channels, d.resolution))
            return torch.no_grad()(lambda images: net(to_input(images, d.in_channels, d.resolution)).double())
        model = DigitClassifier(d.in_channels, 64, 10).eval()

    @torch.no_grad()
    def raw(images: torch.Tensor) -> torch.Tensor:
        x = to_input(images, d.in_channels, d.resolution)
        return torch.cat([model.features(x[i:i + 500]) for i in range(0, len(x), 500)]).double()
    scale = raw(build_dataset(d, "train").images).std()   # one constant: FID in readable units, ranks unchanged
    return lambda images: raw(images) / scale


def fid(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(fid_statistics_to_metric(fid_features_to_statistics(a), fid_features_to_statistics(b),
                                          False)["frechet_inception_distance"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/judge_check.txt")
    parser.add_argument("--candidates", default="classifier,fine,random,random_ms")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = compose(["profile=small", "eval.classifier.features=penultimate"])
    cache = Path(str(cfg.paths.cache))
    val = build_dataset(cfg.data, "val").images
    train = build_dataset(cfg.data, "train").images
    recon = {}
    for name, tok in cached_tokenizers(cache):
        r = reconstruct(tok, val)
        recon[name] = (r, float(((r.float() - val.float()) / 127.5).pow(2).mean()))
    lines = [f"judge check, profile=small photo crops ({len(val)} validation crops), {len(recon)} cached tokenizers",
             "tokenizer recon MSE: " + ", ".join(f"{n} {m:.4f}" for n, (_, m) in recon.items())]
    for cand in args.candidates.split(","):
        start = time.time()
        feats = extractor_features(cand, cfg, cache)
        fv, ft = feats(val), feats(train)
        rfids = {n: fid(feats(r), fv) for n, (r, _) in recon.items()}
        rho = spearmanr([m for _, m in recon.values()], list(rfids.values())).statistic
        fsq = [n for n in recon if n.startswith("fsq")]
        rho_fsq = spearmanr([recon[n][1] for n in fsq], [rfids[n] for n in fsq]).statistic
        deg = {}
        for fam, s, y in degradations(val):
            deg.setdefault(fam, []).append((s, fid(feats(y), fv)))
        monotone = all(all(b[1] > a[1] for a, b in zip(v, v[1:])) for v in deg.values())
        lines += [f"\n[{cand}] ({time.time() - start:.0f} s)",
                  f"  FID train vs val (real vs real): {fid(ft, fv):.2f}; even vs odd training crops: "
                  f"{fid(ft[0::2], ft[1::2]):.2f}",
                  "  rFID: " + ", ".join(f"{n} {v:.2f}" for n, v in rfids.items()),
                  f"  Spearman(recon MSE, rFID): all {rho:+.2f}, fsq only {rho_fsq:+.2f}",
                  "  degradations: " + "; ".join(f"{fam} " + ", ".join(f"{s:g}: {v:.2f}" for s, v in vals)
                                                 for fam, vals in deg.items()),
                  f"  grows with every degradation's strength: {monotone}"]
        print("\n".join(lines[-6:]), flush=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
