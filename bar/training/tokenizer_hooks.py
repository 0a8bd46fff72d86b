"""The training-loop side of the release's tokenizer recipe (losses: bar.tokenizers.losses; augmentation:
the loader's per-image view, bar.data.views; EMA: bar.training.ema).

    tokenizer_param_groups(model, lr, encoder_lr_mult=0.1, weight_decay=0.0, encoder_substring="encoder") -> groups
    DiscriminatorHook(trainer, images_of, reconstruct, seed=None) a TrainHook: one D step after each G step >= start
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
from bar.core.vocabulary import DISCRIMINATOR
from bar.training.discriminator import DiscriminatorTrainer
from bar.training.optim import release_no_decay
from bar.training.loop import Checkpointing, TrainHook, TrainState
from bar.training.running_metrics import RunningMetrics

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
def stream_seed(seed: int, step: int, index: int, use: int) -> int:
    """The seed of one random stream of the discriminator iteration after generator step `step`: a function of the
    run's seed, the step, `index` (a sample's position in the global batch) and `use` (which draws), never of the rank
    that draws it nor of the global RNG's state."""
    return (((seed * 1_000_003 + step) * 65_537 + index) * 4 + use) % 2 ** 63


AUGMENT, CROPS = 1, 2          # stream_seed's `use`: a sample's augmentation; the discriminator's crop-or-resize draws


class DiscriminatorHook(TrainHook):
    """After each generator step at or past `trainer.start`, one discriminator step on the NEXT batch of the
    stream, reconstructed by the tokenizer in eval mode without gradients, as the release alternates G and D
    iterations. `images_of(batch)` -> images in [-1, 1] (augmented as for the G step); `reconstruct(model,
    images)` -> reconstructions. The last step's D statistics (this rank's) are in `self.last`, and go to `metrics`
    (as discriminator_loss, discriminator_logits_real, ...) when given.

    So one step of bar.training.loop's loop past the start is one G plus one D iteration of the release's loop: the
    release's 200k iterations with the GAN from 100k are 150k steps here (see the report for the LR schedule).

    Randomness: `images_of` runs once per sample, under a stream keyed by (seed, step, the sample's position in the
    global batch), and the discriminator's crop-or-resize draws of the iteration under one keyed by (seed, step), both
    forked from the global torch RNG, which they leave as they found it. So samples on different ranks are augmented
    independently (every rank holds the global RNG in the same state: drawing from it, each rank repeated the others'
    crops and flips), and the D iteration is the same whether the global batch is on one rank or split over several
    (in equal contiguous shards, as bar.data.loader deals them). `seed` None: torch's initial seed when the hook is
    made (the run's seed, which the tokenizer stage sets on every rank before building)."""

    def __init__(self, trainer: DiscriminatorTrainer, images_of: Callable[[object], torch.Tensor],
                 reconstruct: Callable[[nn.Module, torch.Tensor], torch.Tensor], seed: int | None = None,
                 metrics: RunningMetrics | None = None):
        self.trainer, self.images_of, self.reconstruct, self.metrics = trainer, images_of, reconstruct, metrics
        self.seed = torch.initial_seed() if seed is None else int(seed)
        self.last: dict[str, float] = {}

    def discriminator_images(self, batch, step: int) -> torch.Tensor:
        """`images_of` of this rank's part of a global batch (a sequence of tensors sharing dim 0), sample by sample,
        each under its own stream (this rank's part starts at position rank * its length)."""
        n = len(batch[0])
        first = dist.rank() * n
        out = []
        with torch.random.fork_rng(devices=[]):
            for i in range(n):
                torch.default_generator.manual_seed(stream_seed(self.seed, step, first + i, AUGMENT))
                out.append(self.images_of([t[i:i + 1] for t in batch]))
        return torch.cat(out)

    def after_step(self, state: TrainState) -> None:
        step = state.step - 1                # the generator step just done (0-based)
        if not self.trainer.active(step):
            return
        images = self.discriminator_images(next(state.batches), step)
        state.model.eval()
        with torch.no_grad():
            recon = self.reconstruct(state.model, images)
        state.model.train()
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(stream_seed(self.seed, step, 0, CROPS))
            self.last = self.trainer.step(images, recon)
        if self.metrics is not None:          # d_loss -> discriminator_loss, logits_real -> discriminator_logits_real
            self.metrics.add({DISCRIMINATOR + name.removeprefix("d_"): value for name, value in self.last.items()})

    def state_dict(self) -> dict:
        return self.trainer.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.trainer.load_state_dict(state)


class CheckpointingWithExtras(Checkpointing):
    """`Checkpointing` whose checkpoints also hold the states of `extras` ({name: object with state_dict /
    load_state_dict}, e.g. the EMA and discriminator hooks), restored on resume after the training state. Put it
    after those hooks in the hook list, so a checkpoint sees their updates of the same step."""

    def __init__(self, folder, extras: Mapping[str, Stateful], every: int = 0, keep: int = 2, on_checkpoint=None,
                 **when):
        super().__init__(folder, every, keep, on_checkpoint, **when)    # when: minutes, clock
        self.extras = extras

    def restore(self, state: TrainState) -> None:
        saved = dist.broadcast_object(self.dir.load_latest() if dist.is_main() else None)
        if saved is None:
            return
        state.load_state_dict(saved, dist.rank())
        stored = saved.get("extras", {})
        for name, obj in self.extras.items():
            if name in stored:
                obj.load_state_dict(stored[name])
            elif not getattr(obj, "optional_state", False):
                raise ValueError(f"checkpoint in {self.dir.folder} has no {name!r} state (written without it)")
        log.info("resumed from %s at step %d (with %s)", self.dir.folder, state.step, ", ".join(self.extras))

    def save(self, state: TrainState) -> None:
        payload = state.state_dict()
        payload["extras"] = {name: obj.state_dict() for name, obj in self.extras.items()}
        if dist.is_main():
            self.dir.save(payload, state.step)
            if self.on_checkpoint is not None:
                self.on_checkpoint(state.result)
        dist.barrier()
