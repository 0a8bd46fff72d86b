"""Which parts of the tokenizer loss a recipe turns on, and the frozen networks' weight files they read. No network
code (combined.py builds the parts), so the config layer can ask without importing torchvision.

    LossWeights.from_node(node) -> LossWeights          config node (tokenizer.loss) -> weights; unknown keys fail
    needed_weight_keys(weights) -> [tokenizer.weights keys the enabled parts need]
    RELEASE_WEIGHTS                                     the release's recipe
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from bar import UserError


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
