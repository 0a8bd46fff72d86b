"""The GAN discriminator's own optimizer and step (the release's, utils/train_utils.py:220-238, 254-262, 490-498):
AdamW 1e-4, betas (0.9, 0.999), weight decay 0, grad-norm clip 1.0, its own cosine schedule (warmup 10k, total
max_train_steps - discriminator_start = 100k, end 1e-5) stepped once per discriminator step.

With several ranks (`distributed=True`) it does what DDP would do for the heads, which are trained outside DDP (the
backbone is frozen and shared): rank 0's heads (parameters and spectral-norm vectors) are broadcast when the trainer is
made, so ranks that built them differently still start alike, and each step averages the heads' gradients over the
ranks before clipping. The heads then stay identical on every rank: the spectral-norm power iteration only reads the
(identical) weights, and BatchNormLocal keeps no running statistics."""

from __future__ import annotations

import math

import torch

from bar.core import distributed as dist
from bar.tokenizers.losses.gan import DinoDiscriminator, hinge_d_loss, to_uint8_levels
from bar.training.optim import release_no_decay


def release_cosine_lr(n: int, base: float, warmup: int, total: int, end: float) -> float:
    """The release's schedule (utils/lr_schedulers.py:40-46) at its n-th optimizer step (0-based): base * n / warmup
    during warmup (so the first step has LR 0), then cosine from base to `end` at `total` (held at `end` after)."""
    if n < warmup:
        return base * n / max(1, warmup)
    progress = min(1.0, (n - warmup) / max(1, total - warmup))
    return end + (base - end) * max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


class DiscriminatorTrainer:
    """The discriminator's own optimizer and step. `step(images, recon)` does one update (from its `start` on);
    the generator step never touches D's parameters. `state_dict` holds the heads, the optimizer and the step count
    (the frozen backbone comes from its weights file)."""

    def __init__(self, discriminator: DinoDiscriminator, *, start: int = 100_000, lr: float = 1e-4,
                 min_lr: float = 1e-5, warmup: int = 10_000, total: int = 100_000,
                 betas: tuple[float, float] = (0.9, 0.999), weight_decay: float = 0.0, grad_clip: float | None = 1.0,
                 factor: float = 1.0, distributed: bool = False):
        self.discriminator = discriminator
        self.start, self.lr, self.min_lr, self.warmup, self.total = start, lr, min_lr, warmup, total
        self.grad_clip, self.factor, self.distributed = grad_clip, factor, distributed
        named = discriminator.trainable()
        self.params = [p for _, p in named]
        groups = [{"params": [p for n, p in named if release_no_decay(n, p.ndim)], "weight_decay": 0.0},
                  {"params": [p for n, p in named if not release_no_decay(n, p.ndim)],
                   "weight_decay": float(weight_decay)}]
        self.optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=(betas[0], betas[1]))
        self.steps = 0                       # discriminator updates done
        if distributed:
            self._broadcast_heads()

    def _broadcast_heads(self) -> None:
        """Rank 0's heads on every rank (a no-op on one): without it, heads built from different random states would
        train apart for the whole run, since averaged gradients never pull different weights together."""
        heads = self.discriminator.heads
        mine = {k: v.detach().cpu() for k, v in heads.state_dict().items()} if dist.is_main() else None
        heads.load_state_dict(dist.broadcast_object(mine))

    def active(self, step: int) -> bool:
        """Whether the GAN is on at generator step `step` (0-based)."""
        return step >= self.start

    def lr_now(self) -> float:
        return release_cosine_lr(self.steps, self.lr, self.warmup, self.total, self.min_lr)

    def step(self, images_pm1: torch.Tensor, recon_pm1: torch.Tensor) -> dict[str, float]:
        """One discriminator update on real images and (detached, 8-bit-rounded) reconstructions (this rank's part
        of the batch). The statistics returned are this rank's."""
        D = self.discriminator
        for p in self.params:
            p.requires_grad_(True)
        lr = self.lr_now()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        logits_real = D(images_pm1.detach())
        logits_fake = D(to_uint8_levels(recon_pm1.detach()))
        loss = self.factor * hinge_d_loss(logits_real, logits_fake)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.distributed:
            dist.all_reduce_gradients(self.params)
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        self.optimizer.step()
        self.steps += 1
        return {"d_loss": loss.item(), "logits_real": logits_real.mean().item(),
                "logits_fake": logits_fake.mean().item(), "d_lr": lr}

    def state_dict(self) -> dict:
        return {"heads": self.discriminator.heads.state_dict(), "optimizer": self.optimizer.state_dict(),
                "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.discriminator.heads.load_state_dict(state["heads"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.steps = state["steps"]
