"""Perceptual loss of the release's tokenizer recipe: LPIPS (VGG16) and ConvNeXt-S logits, mixed 1.0 : 0.1.

Release (modeling/modules/perceptual_loss.py, config `perceptual_loss: lpips-convnext_s-1.0-0.1`):
    perceptual = (1.0 * LPIPS(x, x_hat) + 0.1 * MSE(convnext(x), convnext(x_hat))) / (1.0 + 0.1)   (lines 43-46, 66-102)
then averaged over the batch (losses.py:189) and weighted 1.1 in the total, so in effect 1.0 * LPIPS + 0.1 * ConvNeXt.

- LPIPS (modeling/modules/lpips.py): the standard LPIPS v0.1 on VGG16 (torchvision IMAGENET1K_V1 backbone, the
  v0.1 linear layers): inputs in [-1, 1], shifted/scaled by the LPIPS constants, features at relu1_2, relu2_2,
  relu3_3, relu4_3, relu5_3, each unit-normalised over channels (eps 1e-10), squared difference, 1x1 linear layer,
  spatial mean, summed over the 5 layers. Run at the input resolution (no resize). Same numbers as
  `lpips.LPIPS(net='vgg')` (tests/tokenizers/test_tokenizer_losses.py checks it against the package).
- ConvNeXt-S (perceptual_loss.py:78-92): torchvision convnext_small (IMAGENET1K_V1) including its classifier, so
  the distance is the MSE between the 1000 ImageNet logits; inputs resized to 224 (bicubic, antialias), mapped
  [-1, 1] -> [0, 1], ImageNet-normalised.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models import convnext_small

from bar.tokenizers.losses.frozen import freeze, imagenet_normalize, resize, sum_in_order, to_rgb, vgg16_features
from bar.tokenizers.losses.weights import load_into, load_weights

LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)
VGG16_TAP_ENDS = (4, 9, 16, 23, 30)        # VGG16 `features` index after relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
VGG16_TAP_CHANNELS = (64, 128, 256, 512, 512)


class FeatureTaps(nn.Module):
    """Run a layer stack and return the outputs at the given layer indices (exclusive ends)."""

    def __init__(self, layers: nn.Sequential, ends: Sequence[int]):
        super().__init__()
        self.layers, self.ends = layers, tuple(ends)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs, start = [], 0
        for end in self.ends:
            for layer in self.layers[start:end]:
                x = layer(x)
            outs.append(x)
            start = end
        return outs


def unit_normalize(f_BCHW: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Each spatial position's feature vector divided by its L2 norm over channels (+ eps), as LPIPS does."""
    return f_BCHW / (f_BCHW.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)


class LPIPS(nn.Module):
    """Learned perceptual distance per image: (B, 3, H, W) x 2 in [-1, 1] -> (B, 1, 1, 1).

    `taps` maps an image to a list of feature maps with `channels` channels; the real one is VGG16
    (`LPIPS.from_files`), tests pass a tiny random stack."""

    shift: torch.Tensor               # buffers (1, 3, 1, 1): LPIPS's input scaling
    scale: torch.Tensor

    def __init__(self, taps: nn.Module, channels: Sequence[int]):
        super().__init__()
        self.taps = taps
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, kernel_size=1, bias=False) for c in channels)
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1))
        freeze(self)

    @classmethod
    def from_files(cls, vgg16_path=None, lins_path=None, random_init: bool = False,
                   features: nn.Sequential | None = None) -> "LPIPS":
        """VGG16 taps from torchvision's weights file, linear layers from the LPIPS v0.1 file (the lpips package's
        `weights/v0.1/vgg.pth`, keys `lin{k}.model.1.weight`). `features` reuses an already-loaded VGG16 stack."""
        features = features if features is not None else vgg16_features(vgg16_path, random_init)
        model = cls(FeatureTaps(features, VGG16_TAP_ENDS), VGG16_TAP_CHANNELS)
        if not random_init:
            state = load_weights(lins_path, "lpips")
            lins = {f"{k}.weight": state.get(f"lin{k}.model.1.weight", state.get(f"lin{k}.model.0.weight"))
                    for k in range(len(VGG16_TAP_CHANNELS))}
            load_into(model.lins, {k: v for k, v in lins.items() if v is not None}, "lpips", lins_path)
        return freeze(model)

    def forward(self, x_pm1: torch.Tensor, y_pm1: torch.Tensor) -> torch.Tensor:
        fx = self.taps((to_rgb(x_pm1) - self.shift) / self.scale)
        fy = self.taps((to_rgb(y_pm1) - self.shift) / self.scale)
        return sum_in_order([lin((unit_normalize(a) - unit_normalize(b)).pow(2)).mean(dim=(2, 3), keepdim=True)
                             for lin, a, b in zip(self.lins, fx, fy)])


class LogitsDistance(nn.Module):
    """MSE between a frozen ImageNet classifier's outputs (ConvNeXt-S: 1000 logits) on two image batches, each
    resized to `size` (bicubic, antialias) and ImageNet-normalised. Scalar (mean over batch and logits)."""

    def __init__(self, net: nn.Module, size: int = 224):
        super().__init__()
        self.net, self.size = freeze(net), size

    @classmethod
    def convnext_small(cls, path=None, random_init: bool = False) -> "LogitsDistance":
        with torch.device("cpu" if random_init else "meta"):
            net = convnext_small(weights=None)
        if not random_init:
            load_into(net, load_weights(path, "convnext_s"), "convnext_s", path)
        return cls(net)

    def forward(self, x_pm1: torch.Tensor, y_pm1: torch.Tensor) -> torch.Tensor:
        x = imagenet_normalize(resize(to_rgb(x_pm1), self.size, "bicubic", antialias=True))
        y = imagenet_normalize(resize(to_rgb(y_pm1), self.size, "bicubic", antialias=True))
        return F.mse_loss(self.net(x), self.net(y), reduction="mean")


class PerceptualLoss(nn.Module):
    """(w_lpips * mean_b LPIPS + w_convnext * ConvNeXt-logit MSE) / (w_lpips + w_convnext): a scalar.

    Either part may be None (then it is left out of both sums, as the release does for a single-network name)."""

    def __init__(self, lpips: nn.Module | None, convnext: nn.Module | None, lpips_weight: float = 1.0,
                 convnext_weight: float = 0.1):
        super().__init__()
        if lpips is None and convnext is None:
            raise ValueError("PerceptualLoss needs LPIPS, ConvNeXt or both")
        self.lpips, self.convnext = lpips, convnext
        self.lpips_weight, self.convnext_weight = float(lpips_weight), float(convnext_weight)

    def forward(self, images_pm1: torch.Tensor, recon_pm1: torch.Tensor) -> torch.Tensor:
        self.eval()                      # frozen networks: always in eval mode, whatever the caller set
        parts, norm = [], 0.0
        if self.lpips is not None:
            parts.append(self.lpips_weight * self.lpips(images_pm1, recon_pm1).mean())
            norm += self.lpips_weight
        if self.convnext is not None:
            parts.append(self.convnext_weight * self.convnext(images_pm1, recon_pm1))
            norm += self.convnext_weight
        return sum_in_order(parts) / norm
