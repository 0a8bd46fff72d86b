"""The training-loop side of the release's tokenizer recipe (losses: bar.tokenizers.losses; augmentation:
bar.tokenizers.augment; EMA: bar.training.ema).

    tokenizer_param_groups(model, lr, encoder_lr_mult=0.1, weight_decay=0.0, encoder_substring="encoder") -> groups
    DiscriminatorHook(trainer, images_of, reconstruct)            a TrainHook: one D step after each G step >= start
    CheckpointingWithExtras(folder, extras={name: obj}, ...)      Checkpointing that also saves/restores hook states

Release facts (read from the files named):
- optimizer groups (utils/train_utils.py:156-218): every trainable parameter whose name contains `encoder` gets
  lr * encoder_lr_mult (0.1, configs/tokenizer/bar_fsq_16bits.yaml `model.vq_model.encoder_lr_mult`); the rest the
  base LR. Weight decay 0 (config `optimizer.params.weight_decay: 0.0`) with the usual exemptions (ndim < 2, names
  with norm / ln / bias / embed), i.e. four groups. The LambdaLR schedule multiplies each group's own initial LR, so
  the encoder follows the same warmup + cosine at one tenth (its end LR is 1e-6). In the release's SigLIP2 tokenizer
  `encoder` matches the trainable encoder copy and its post-LayerNorm; the patch embeddings are shared with the
  frozen copy and frozen (modeling/modules/blocks.py:270-307, 358).
"""

from __future__ import annotations

import logging
from typing import Callable, Mapping, Protocol

import torch
import torch.nn as nn

from bar.core import distributed as dist
from bar.training.discriminator import DiscriminatorTrainer
from bar.training.optim import release_no_decay
from bar.training.loop import Checkpointing, TrainHook, TrainState

log = logging.getLogger("bar")


class Stateful(Protocol):
    """What CheckpointingWithExtras saves and restores: an object with state_dict / load_state_dict."""

    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


# ----------------------------------------------------------------------------------------------------- optimizer
def tokenizer_param_groups(model: nn.Module, lr: float, encoder_lr_mult: float = 0.1, weight_decay: float = 0.0,
                           encoder_substring: str = "encoder") -> list[dict]:
    """AdamW groups as the release builds them for the tokenizer: (encoder, other) x (exempt, decayed). Each group
    carries `lr` (base * its multiplier), `lr_mult` (for a loop that sets the scheduled LR per step: it must use
    scheduled_lr * group["lr_mult"]) and `names` (ignored by torch.optim). Empty groups are left out."""
    groups = []
    for is_encoder in (True, False):
        mult = float(encoder_lr_mult) if is_encoder else 1.0
        for exempt in (True, False):
            named = [(n, p) for n, p in model.named_parameters()
                     if p.requires_grad and (encoder_substring in n) == is_encoder
                     and release_no_decay(n, p.ndim) == exempt]
            if named:
                groups.append({"params": [p for _, p in named], "names": [n for n, _ in named], "lr": lr * mult,
                               "lr_mult": mult, "weight_decay": 0.0 if exempt else float(weight_decay)})
    return groups


# ----------------------------------------------------------------------------------------------------- hooks
class DiscriminatorHook(TrainHook):
    """After each generator step at or past `trainer.start`, one discriminator step on the NEXT batch of the
    stream, reconstructed by the tokenizer in eval mode without gradients, as the release alternates G and D
    iterations. `images_of(batch)` -> images in [-1, 1] (augmented as for the G step); `reconstruct(model,
    images)` -> reconstructions. The last step's D statistics are in `self.last`.

    So one step of bar.training.loop's loop past the start is one G plus one D iteration of the release's loop: the
    release's 200k iterations with the GAN from 100k are 150k steps here (see the report for the LR schedule)."""

    def __init__(self, trainer: DiscriminatorTrainer, images_of: Callable[[object], torch.Tensor],
                 reconstruct: Callable[[nn.Module, torch.Tensor], torch.Tensor]):
        self.trainer, self.images_of, self.reconstruct = trainer, images_of, reconstruct
        self.last: dict[str, float] = {}

    def after_step(self, state: TrainState) -> None:
        if not self.trainer.active(state.step - 1):
            return
        images = self.images_of(next(state.batches))
        state.model.eval()
        with torch.no_grad():
            recon = self.reconstruct(state.model, images)
        state.model.train()
        self.last = self.trainer.step(images, recon)

    def state_dict(self) -> dict:
        return self.trainer.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.trainer.load_state_dict(state)


class CheckpointingWithExtras(Checkpointing):
    """`Checkpointing` whose checkpoints also hold the states of `extras` ({name: object with state_dict /
    load_state_dict}, e.g. the EMA and discriminator hooks), restored on resume after the training state. Put it
    after those hooks in the hook list, so a checkpoint sees their updates of the same step."""

    def __init__(self, folder, extras: Mapping[str, Stateful], every: int = 0, keep: int = 2, on_checkpoint=None):
        super().__init__(folder, every, keep, on_checkpoint)
        self.extras = extras

    def on_start(self, state: TrainState) -> None:
        saved = dist.broadcast_object(self.dir.load_latest() if dist.is_main() else None)
        if saved is None:
            return
        state.load_state_dict(saved, dist.rank())
        stored = saved.get("extras", {})
        for name, obj in self.extras.items():
            if name not in stored:
                raise ValueError(f"checkpoint in {self.dir.folder} has no {name!r} state (written without it)")
            obj.load_state_dict(stored[name])
        log.info("resumed from %s at step %d (with %s)", self.dir.folder, state.step, ", ".join(self.extras))

    def save(self, state: TrainState) -> None:
        payload = state.state_dict()
        payload["extras"] = {name: obj.state_dict() for name, obj in self.extras.items()}
        if dist.is_main():
            self.dir.save(payload, state.step)
            if self.on_checkpoint is not None:
                self.on_checkpoint(state.result)
        dist.barrier()
