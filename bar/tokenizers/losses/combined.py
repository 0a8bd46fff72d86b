"""The release's tokenizer loss: the weighted sum of the parts in bar/losses/, with the GAN term from a start step.

    total = l1 * L1 + l2 * L2 + perceptual * P + distillation * MSE(feat) + gram * Gram + [step >= gan_start] * gan * G

(modeling/modules/losses.py:211-217; weights from configs/tokenizer/bar_fsq_16bits.yaml: RELEASE_WEIGHTS).

    LossWeights.from_node(node) -> LossWeights          config node (tokenizer.loss) -> weights; unknown keys fail
    needed_weight_keys(weights) -> [tokenizer.weights keys the enabled parts need]
    build_tokenizer_loss(loss_node, weights_node, random_init=False) -> TokenizerLoss
    TokenizerLoss(images, recon, step, distill_pred=None, distill_target=None) -> (total, {part: value})

The discriminator is trained separately (`bar.training.discriminator.DiscriminatorTrainer`, its own optimizer); the
generator side only reads it, with its parameters frozen for that forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn as nn

from bar import UserError
from bar.tokenizers.losses.distillation import distillation_loss
from bar.tokenizers.losses.frozen import vgg16_features
from bar.tokenizers.losses.gan import DinoDiscriminator, dino_vit_small, frozen_params, hinge_g_loss
from bar.tokenizers.losses.gram import GramLoss
from bar.tokenizers.losses.perceptual import LPIPS, LogitsDistance, PerceptualLoss
from bar.tokenizers.losses.reconstruction import l1_loss, l2_loss
from bar.tokenizers.losses.weights import check_weight_files


@dataclass(frozen=True)
class LossWeights:
    """Weight of each part; 0 turns a part off (its network is then neither needed nor built)."""
    l1: float = 0.0
    l2: float = 0.0
    perceptual: float = 0.0
    lpips: float = 1.0               # the mix inside the perceptual part: (lpips * LPIPS + convnext * ConvNeXt) / sum
    convnext: float = 0.1
    distillation: float = 0.0
    gram: float = 0.0
    gan: float = 0.0
    gan_start: int = 0               # generator step (0-based) from which the GAN term is on

    @classmethod
    def from_node(cls, node, ignore: tuple[str, ...] = ("kl",), where: str = "tokenizer.loss") -> "LossWeights":
        """Weights from a config node (mapping or attributes); keys it does not set are off (0), except the
        perceptual mix, whose default is the release's 1.0 : 0.1. A key this class does not know fails."""
        items = dict(node.items()) if hasattr(node, "items") else dict(vars(node))
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(items) - known - set(ignore))
        if unknown:
            raise UserError(f"{where}.{unknown[0]}: unknown loss weight (known: {', '.join(sorted(known))})")
        values = {k: v for k, v in items.items() if k in known and v is not None}
        # gan_start is an int field, the rest float: one mapping of mixed types, checked by the dataclass itself
        kwargs: dict[str, Any] = {k: int(v) if k == "gan_start" else float(v) for k, v in values.items()}
        weights = cls(**kwargs)
        for f in fields(weights):
            if getattr(weights, f.name) < 0:
                raise UserError(f"{where}.{f.name}={getattr(weights, f.name)} must be >= 0")
        if weights.perceptual > 0 and weights.lpips + weights.convnext <= 0:
            raise UserError(f"{where}: perceptual={weights.perceptual} needs lpips or convnext > 0")
        return weights


# configs/tokenizer/bar_fsq_16bits.yaml `losses` (perceptual_loss: lpips-convnext_s-1.0-0.1)
RELEASE_WEIGHTS = LossWeights(l1=0.1, l2=1.0, perceptual=1.1, lpips=1.0, convnext=0.1, distillation=0.7, gram=10.0,
                              gan=0.05, gan_start=100_000)


def needed_weight_keys(weights: LossWeights) -> list[str]:
    """The tokenizer.weights entries the enabled parts read."""
    keys = []
    if (weights.perceptual > 0 and weights.lpips > 0) or weights.gram > 0:
        keys.append("vgg16")
    if weights.perceptual > 0 and weights.lpips > 0:
        keys.append("lpips")
    if weights.perceptual > 0 and weights.convnext > 0:
        keys.append("convnext_s")
    if weights.gan > 0:
        keys.append("dino_vits")
    return keys


class TokenizerLoss(nn.Module):
    """Weighted sum of the tokenizer's loss parts. The frozen networks are passed in (built from weight files by
    `build_tokenizer_loss`, or tiny random ones in tests); a part with weight 0 needs none."""

    def __init__(self, weights: LossWeights, perceptual: nn.Module | None = None, gram: nn.Module | None = None,
                 discriminator: DinoDiscriminator | None = None):
        super().__init__()
        for name, module in (("perceptual", perceptual), ("gram", gram), ("gan", discriminator)):
            if getattr(weights, name) > 0 and module is None:
                raise ValueError(f"loss weight {name}={getattr(weights, name)} but no {name} network was given")
        self.weights = weights
        self.perceptual, self.gram, self.discriminator = perceptual, gram, discriminator

    def gan_active(self, step: int) -> bool:
        return self.weights.gan > 0 and step >= self.weights.gan_start

    def forward(self, images: torch.Tensor, recon: torch.Tensor, step: int, distill_pred: torch.Tensor | None = None,
                distill_target: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """images, recon: (B, C, H, W) in [-1, 1]; step: the generator step (0-based). Returns the total and the
        unweighted parts (detached; a disabled part is 0)."""
        w, zero = self.weights, recon.new_zeros(())
        parts = {"l1": l1_loss(images, recon) if w.l1 else zero, "l2": l2_loss(images, recon) if w.l2 else zero,
                 "perceptual": _frozen_part(self.perceptual, w.perceptual, images, recon, zero),
                 "distillation": zero, "gram": _frozen_part(self.gram, w.gram, images, recon, zero), "gan": zero}
        if w.distillation:
            if distill_pred is None or distill_target is None:
                raise ValueError("distillation weight > 0: pass distill_pred (projected decoder features) and "
                                 "distill_target (frozen encoder features)")
            parts["distillation"] = distillation_loss(distill_pred, distill_target)
        if self.gan_active(step):
            disc = self.discriminator
            assert disc is not None, "gan weight > 0 without a discriminator"    # rejected by __init__
            with frozen_params(disc):
                parts["gan"] = hinge_g_loss(disc(recon))
        total = sum(getattr(w, name) * value for name, value in parts.items())
        return total, {name: value.detach() for name, value in parts.items()}


def _frozen_part(network: nn.Module | None, weight: float, images: torch.Tensor, recon: torch.Tensor,
                 zero: torch.Tensor) -> torch.Tensor:
    """network(images, recon) when its weight is on, else `zero`."""
    if not weight:
        return zero
    assert network is not None, "loss weight > 0 without its network"       # rejected by TokenizerLoss.__init__
    return network(images, recon)


def build_tokenizer_loss(loss_node, weights_node=None, *, random_init: bool = False,
                         where: str = "tokenizer.loss") -> TokenizerLoss:
    """Check the weight files the enabled parts need (one-line UserError, before anything is built), then build the
    frozen networks from them. `random_init=True` builds them with random weights and reads no file (tests, and a
    tiny profile only when the user asks for it)."""
    weights = loss_node if isinstance(loss_node, LossWeights) else LossWeights.from_node(loss_node, where=where)
    keys = needed_weight_keys(weights)
    paths = {} if random_init else check_weight_files(weights_node, keys)
    features = vgg16_features(paths.get("vgg16"), random_init) if "vgg16" in keys else None
    perceptual = None
    if weights.perceptual > 0:
        lpips = LPIPS.from_files(None, paths.get("lpips"), random_init, features=features) if weights.lpips else None
        convnext = LogitsDistance.convnext_small(paths.get("convnext_s"), random_init) if weights.convnext else None
        perceptual = PerceptualLoss(lpips, convnext, weights.lpips, weights.convnext)
    gram = GramLoss.from_file(features=features) if weights.gram > 0 else None
    disc = DinoDiscriminator(dino_vit_small(paths.get("dino_vits"), random_init)) if weights.gan > 0 else None
    return TokenizerLoss(weights, perceptual, gram, disc)
