"""The release's tokenizer training augmentation (data/webdataset_reader.py:46-60, config `dataset.preprocessing`):
Resize(shorter edge, bicubic, antialias) -> RandomCrop -> RandomHorizontalFlip(0.5) -> [-1, 1], per image. No scale
jitter: the crop only moves along the longer side of the resized image."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def resized_shape(h: int, w: int, shorter: int) -> tuple[int, int]:
    """torchvision Resize(int): the shorter side becomes `shorter`, the longer int(shorter * long / short)."""
    if h <= w:
        return shorter, int(shorter * w / h)
    return int(shorter * h / w), shorter


def augment(images: torch.Tensor, resolution: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """The release's training augmentation on a batch (B, C, H, W), uint8 in [0, 255] or float in [-1, 1]:
    shorter side resized to `resolution` (bicubic, antialias; skipped when it already is), an independent random
    `resolution` x `resolution` crop per image, a horizontal flip with probability 1/2 per image. Float in [-1, 1]."""
    x = images.float() / 127.5 - 1.0 if images.dtype == torch.uint8 else images.float()
    B, _, H, W = x.shape
    if min(H, W) != resolution:
        x = F.interpolate(x, size=resized_shape(H, W, resolution), mode="bicubic", align_corners=False,
                          antialias=True).clamp(-1.0, 1.0)
        H, W = x.shape[-2:]
    top = torch.randint(0, H - resolution + 1, (B,), generator=generator)
    left = torch.randint(0, W - resolution + 1, (B,), generator=generator)
    flip = torch.rand(B, generator=generator) < 0.5
    out = []
    for b in range(B):
        crop = x[b, :, top[b]:top[b] + resolution, left[b]:left[b] + resolution]
        out.append(crop.flip(-1) if flip[b] else crop)
    return torch.stack(out)
