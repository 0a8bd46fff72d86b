"""Pixel conventions: images are uint8 (N, C, H, W) on disk and in datasets, float in [-1, 1] inside models."""

from __future__ import annotations

import torch


def images_to_float(images_uint8: torch.Tensor) -> torch.Tensor:
    return images_uint8.float() / 127.5 - 1.0


def float_to_images(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] floats -> uint8 images as the release writes its samples: clamp((x + 1) / 2) * 255, truncated."""
    return (((x.float() + 1) / 2).clamp(0, 1) * 255).to(torch.uint8)
