"""The release's tokenizer loss: the weighted sum of the parts in bar/losses/, with the GAN term from a start step.

    total = l1 * L1 + l2 * L2 + perceptual * P + distillation * MSE(feat) + gram * Gram + [step >= gan_start] * gan * G

(modeling/modules/losses.py:211-217; weights from configs/tokenizer/bar_fsq_16bits.yaml: RELEASE_WEIGHTS).

    LossWeights.from_node(node) -> LossWeights          config node (tokenizer.loss) -> weights; unknown keys fail
    needed_weight_keys(weights) -> [tokenizer.weights keys the enabled parts need]    (both in parts.py: light)
    build_tokenizer_loss(loss_node, weights_node, random_init=False) -> TokenizerLoss
    TokenizerLoss(images, recon, step, distill_pred=None, distill_target=None) -> (total, {part: value})

The discriminator is trained separately (`bar.training.discriminator.DiscriminatorTrainer`, its own optimizer); the
generator side only reads it, with its parameters frozen for that forward pass.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from bar.tokenizers.losses.distillation import distillation_loss
from bar.tokenizers.losses.frozen import vgg16_features
from bar.tokenizers.losses.gan import DinoDiscriminator, dino_vit_small, frozen_params, hinge_g_loss
from bar.tokenizers.losses.gram import GramLoss
from bar.tokenizers.losses.parts import RELEASE_WEIGHTS as RELEASE_WEIGHTS   # re-exported: the recipe's names
from bar.tokenizers.losses.parts import LossWeights, needed_weight_keys
from bar.tokenizers.losses.perceptual import LPIPS, LogitsDistance, PerceptualLoss
from bar.tokenizers.losses.reconstruction import l1_loss, l2_loss
from bar.tokenizers.losses.weights import check_weight_files


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
