"""Feature distillation of the release's tokenizer recipe: MSE between the decoder's projected features and the
frozen SigLIP2 encoder's features (modeling/modules/losses.py:192-197, weighted 0.7).

Where the two tensors come from (modeling/modules/blocks.py, read for this module):
- target (`clip_gt`, blocks.py:314-331, 369-372): the frozen copy of the SigLIP2-so400m encoder run on the same
  (frozen, shared) patch embeddings as the trainable copy, through all its layers and its frozen post-LayerNorm:
  (B, L, 1152) for L = (resolution / 16)^2 patches.
- prediction (`clip_pred`, blocks.py:441-447, 480-481): the decoder's hidden states after block
  `clip_align_layer_id` = 2 (the third block, 0-based index, config bar_fsq_16bits.yaml), image tokens only (the
  class token dropped), through `FeatureProjector` (Linear(width, 2048), SiLU, Linear(2048, 2048), SiLU,
  Linear(2048, 1152)). The projector is part of the tokenizer (its parameters are trained with the decoder's LR).

The loss takes both tensors, so any tokenizer that produces them plugs in."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class FeatureProjector(nn.Sequential):
    """The release's `clip_projector`: decoder width -> 2048 -> 2048 -> target width, SiLU between."""

    def __init__(self, width: int, target_width: int = 1152, hidden: int = 2048):
        super().__init__(nn.Linear(width, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                         nn.Linear(hidden, target_width))


def distillation_loss(pred_BLD: torch.Tensor, target_BLD: torch.Tensor) -> torch.Tensor:
    """mean (pred - target)^2 over all elements; the frozen encoder's features carry no gradient."""
    if pred_BLD.shape != target_BLD.shape:
        raise ValueError(f"distillation: projected features {tuple(pred_BLD.shape)} and frozen-encoder features "
                         f"{tuple(target_BLD.shape)} differ in shape")
    return F.mse_loss(pred_BLD, target_BLD.detach(), reduction="mean")
