"""Shared plumbing of the frozen networks inside the tokenizer losses: freezing, input normalisation, and the VGG16
feature stack that LPIPS and the Gram loss both read (one copy of the weights serves both)."""

from __future__ import annotations

from typing import TypeVar

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models.vgg import cfgs, make_layers  # the feature stack only, not the classifier

from bar.tokenizers.losses.weights import load_into, load_weights

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

M = TypeVar("M", bound=nn.Module)


def freeze(module: M) -> M:
    """eval mode and no gradients for the module's own weights (gradients still flow to its input)."""
    module.eval()
    module.requires_grad_(False)
    return module


def sum_in_order(terms: list[torch.Tensor]) -> torch.Tensor:
    """terms[0] + terms[1] + ... left to right (the same values and broadcasting as `0.0 + terms[0] + ...`, typed as
    a Tensor); at least one term."""
    total = terms[0]
    for term in terms[1:]:
        total = total + term
    return total


def to_rgb(x_BCHW: torch.Tensor) -> torch.Tensor:
    """The frozen networks take 3 channels: a grey image (C = 1, the CPU profiles' digits) is repeated."""
    return x_BCHW.expand(-1, 3, -1, -1) if x_BCHW.shape[1] == 1 else x_BCHW


def imagenet_normalize(x_pm1: torch.Tensor) -> torch.Tensor:
    """[-1, 1] images -> [0, 1] -> (x - ImageNet mean) / ImageNet std, as every torchvision ImageNet model expects."""
    mean = x_pm1.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = x_pm1.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return ((to_rgb(x_pm1) + 1.0) / 2.0 - mean) / std


def resize(x: torch.Tensor, size: int, mode: str, antialias: bool = False) -> torch.Tensor:
    return F.interpolate(x, size=(size, size), mode=mode, align_corners=False, antialias=antialias)


def vgg16_features(path=None, random_init: bool = False) -> nn.Sequential:
    """torchvision's VGG16 `features` (13 conv + 13 ReLU + 5 max-pool layers, ImageNet weights from the local file
    `path`), frozen. The ReLUs are made out-of-place so each layer's output stays what it was when recorded (the
    Gram loss spells out the release's in-place aliasing instead of relying on it; bar/losses/gram.py)."""
    with torch.device("cpu" if random_init else "meta"):      # no random init of weights about to be replaced
        features = make_layers(cfgs["D"], batch_norm=False)
    for layer in features:
        if isinstance(layer, nn.ReLU):
            layer.inplace = False
    if not random_init:
        state = load_weights(path, "vgg16")
        state = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")} or state
        load_into(features, state, "vgg16", path)
    return freeze(features)
