"""The release's tokenizer training augmentation (data/webdataset_reader.py:46-60, config `dataset.preprocessing`):
Resize(shorter edge, bicubic, antialias) -> RandomCrop -> RandomHorizontalFlip(0.5) -> [-1, 1], per image. No scale
jitter: the crop only moves along the longer side of the resized image.

A batched, tensor form for images already stacked at one size. Tokenizer training does not use it: its loader makes
each image's view before batching, from the whole decoded image (bar.data.views.train_view, exact to the release's
PIL resize); stacked images would already have been center-cropped."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bar.data.views import resized_shape

__all__ = ["augment", "resized_shape"]


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
