"""Exponential moving average of a model's parameters, with the release's update rule (modeling/modules/ema_model.py,
created in utils/train_utils.py:117-119 with decay 0.999 and the other arguments at their defaults).

Release rule, at the n-th update (n = 1, 2, ...; update_after_step 0, no power warmup, min_decay 0):
    k = max(0, n - 1 - update_after_step)
    decay_n = 0                                  if k == 0  (the first update copies the weights)
            = min((1 + k) / (10 + k), 0.999)     otherwise  (a built-in warmup: 0.999 from n = 8,991 on)
    shadow -= (1 - decay_n) * (shadow - param)   for trainable parameters; frozen ones are copied
Parameters only: buffers are not averaged (the live model's buffers are used with the EMA weights). The release
steps the EMA after every iteration, including the discriminator iterations after the GAN start, where the
tokenizer's weights do not change (train_utils.py:508-516); `EMAHook(extra_update_from=gan_start)` does the same.
The EMA weights are what the release evaluates and saves as the final tokenizer (scripts/train_bar_fsq.py:190-192).

Release quirk not reproduced: on resume it rebuilds the EMA through `EMAModel.from_pretrained`, whose default decay
0.9999 then replaces 0.999 (ema_model.py:67-73, 207; train_utils.py:121-124). Here the decay is saved and restored.

    EMA(model, decay=0.999)        .update(model)  .copy_to(model)  .applied(model) (context)  state_dict()
    EMAHook(ema, extra_update_from=None)           a TrainHook: update after each optimizer step
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn as nn

from bar.training.loop import TrainHook, TrainState


class EMA:
    """Shadow copies of `model`'s parameters (by name), initialised to their current values."""

    def __init__(self, model: nn.Module, decay: float = 0.999, update_after_step: int = 0):
        self.decay, self.update_after_step = float(decay), int(update_after_step)
        self.shadow = {n: p.detach().clone() for n, p in model.named_parameters()}
        self.num_updates = 0

    def decay_at(self, n: int) -> float:
        """Decay used by the n-th update (1-based)."""
        k = max(0, n - 1 - self.update_after_step)
        return 0.0 if k <= 0 else min((1 + k) / (10 + k), self.decay)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.num_updates += 1
        one_minus_decay = 1.0 - self.decay_at(self.num_updates)
        for name, param in model.named_parameters():
            shadow = self.shadow[name]
            if param.requires_grad:
                shadow.sub_(one_minus_decay * (shadow - param.detach()))
            else:
                shadow.copy_(param.detach())

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Write the averaged weights into `model`'s parameters (its buffers stay)."""
        for name, param in model.named_parameters():
            param.copy_(self.shadow[name].to(param.device, param.dtype))

    @contextmanager
    def applied(self, model: nn.Module):
        """Evaluate (or save) `model` with the averaged weights, then put its own weights back."""
        saved = {n: p.detach().clone() for n, p in model.named_parameters()}
        self.copy_to(model)
        try:
            yield model
        finally:
            with torch.no_grad():
                for name, param in model.named_parameters():
                    param.copy_(saved[name])

    def to(self, device) -> "EMA":
        self.shadow = {n: s.to(device) for n, s in self.shadow.items()}
        return self

    def state_dict(self) -> dict:
        return {"decay": self.decay, "update_after_step": self.update_after_step, "num_updates": self.num_updates,
                "shadow": {n: s.clone() for n, s in self.shadow.items()}}

    def load_state_dict(self, state: dict) -> None:
        if set(state["shadow"]) != set(self.shadow):
            raise ValueError("EMA state does not match the model's parameter names")
        self.decay, self.update_after_step = state["decay"], state["update_after_step"]
        self.num_updates = state["num_updates"]
        self.shadow = {n: state["shadow"][n].to(self.shadow[n].device).clone() for n in self.shadow}


class EMAHook(TrainHook):
    """Updates `ema` after each optimizer step of bar.training.loop's loop; twice per step from generator step
    `extra_update_from` on (0-based), where the release also steps its EMA after each discriminator iteration.
    Checkpoint its state with `state_dict` / `load_state_dict`
    (bar.training.tokenizer_hooks.CheckpointingWithExtras)."""

    def __init__(self, ema: EMA, extra_update_from: int | None = None):
        self.ema, self.extra_update_from = ema, extra_update_from

    def after_step(self, state: TrainState) -> None:
        self.ema.update(state.model)
        if self.extra_update_from is not None and state.step - 1 >= self.extra_update_from:
            self.ema.update(state.model)

    def state_dict(self) -> dict:
        return self.ema.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.ema.load_state_dict(state)
