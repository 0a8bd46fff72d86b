"""Pixel losses of the release's tokenizer recipe (modeling/modules/losses.py:183-186): mean absolute and mean
squared error between the input images and their reconstructions, both in [-1, 1], averaged over every element."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def l1_loss(images_B3HW: torch.Tensor, recon_B3HW: torch.Tensor) -> torch.Tensor:
    """mean |x - x_hat| over all elements (weighted 0.1 in the release)."""
    return F.l1_loss(recon_B3HW, images_B3HW, reduction="mean")


def l2_loss(images_B3HW: torch.Tensor, recon_B3HW: torch.Tensor) -> torch.Tensor:
    """mean (x - x_hat)^2 over all elements (weighted 1.0 in the release)."""
    return F.mse_loss(recon_B3HW, images_B3HW, reduction="mean")
