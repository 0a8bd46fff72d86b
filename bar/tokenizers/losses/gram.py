"""Gram-matrix (style) loss of the release's tokenizer recipe, weighted 10 (modeling/modules/losses.py:17-83).

Release definition:
- both images resized to 224 x 224 (bilinear, align_corners=False, no antialias), [-1, 1] -> [0, 1],
  ImageNet-normalised (lines 56-63);
- run through all 31 layers of torchvision's VGG16 `features` (IMAGENET1K_V1), recording the output of every layer
  (lines 65-75);
- per recorded feature map f (N, C, H, W): G = f f^T / (C * H * W) over the flattened H * W positions, (N, C, C)
  (lines 30-40); loss term = mean over N, C, C of (G_x - G_y)^2; the loss is the SUM of the terms (lines 77-83).

Detail that changes the number: torchvision's VGG ReLUs are in-place, so the tensor recorded for each conv layer is
overwritten by the ReLU that follows it. The release's sum therefore has, per conv + ReLU pair, the post-ReLU Gram
term twice (and no pre-ReLU term), plus one term per max-pool: 2 * 13 ReLU terms + 5 pool terms. This module computes
exactly that, with out-of-place ReLUs and the aliasing spelled out (`recorded_features`)."""

from __future__ import annotations

import torch
import torch.nn as nn

from bar.tokenizers.losses.frozen import freeze, imagenet_normalize, resize, to_rgb, vgg16_features


def gram_matrix(f_NCHW: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, C): f f^T over positions, divided by C * H * W."""
    N, C, H, W = f_NCHW.shape
    f_NCL = f_NCHW.reshape(N, C, H * W)
    return f_NCL @ f_NCL.transpose(1, 2) / (C * H * W)


def recorded_features(layers: nn.Sequential, x: torch.Tensor) -> list[torch.Tensor]:
    """One entry per layer, as the release's list ends up: a ReLU (in-place in torchvision's VGG) overwrites the
    entry of the layer before it, so that entry holds the ReLU's output too."""
    entries: list[torch.Tensor] = []
    for layer in layers:
        x = layer(x)
        if isinstance(layer, nn.ReLU) and entries:
            entries[-1] = x
        entries.append(x)
    return entries


class GramLoss(nn.Module):
    """Sum over the recorded VGG16 feature maps of mean((G(x) - G(x_hat))^2). Inputs (B, 3, H, W) in [-1, 1]."""

    def __init__(self, features: nn.Sequential, size: int = 224):
        super().__init__()
        self.features, self.size = freeze(features), size

    @classmethod
    def from_file(cls, vgg16_path=None, random_init: bool = False,
                  features: nn.Sequential | None = None) -> "GramLoss":
        return cls(features if features is not None else vgg16_features(vgg16_path, random_init))

    def forward(self, images_pm1: torch.Tensor, recon_pm1: torch.Tensor) -> torch.Tensor:
        self.features.eval()
        x = imagenet_normalize(resize(to_rgb(images_pm1), self.size, "bilinear"))
        y = imagenet_normalize(resize(to_rgb(recon_pm1), self.size, "bilinear"))
        total = images_pm1.new_zeros(())
        for fx, fy in zip(recorded_features(self.features, x), recorded_features(self.features, y)):
            total = total + (gram_matrix(fx) - gram_matrix(fy)).pow(2).mean()
        return total
