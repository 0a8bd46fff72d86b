"""One training loop for every stage: AdamW, warmup + cosine LR, grad clipping, loss history, throughput; and, when
asked, data-parallel over ranks (bar.distributed), periodic atomic checkpoints and exact resume (bar.checkpoint).

Resume is exact: model, optimizer, step (hence LR), the data stream's position, every rank's RNG state, the loss
history and the running loss average are in the checkpoint, so an interrupted and resumed run ends with the same
weights as an uninterrupted one."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch.utils.data import Dataset

log = logging.getLogger("bar")

# wall-clock time of the first optimizer step taken in this process (launch-overhead measurement)
FIRST_STEP_AT: float | None = None


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def lr_at(step: int, base_lr: float, warmup: int, total: int, min_lr: float = 0.0) -> float:
    """Linear warmup to base_lr, then cosine decay to min_lr at `total`."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_lr + 0.5 * (base_lr - min_lr) * (1 + math.cos(math.pi * progress))


class BatchStream:
    """Shuffled (x, label) batches forever, with a resumable position (`state_dict` / `load_state_dict`).

    In-memory data (a tensor pair, or a dataset with `.images` and `.labels`) is indexed directly. With
    `world_size` > 1 every rank draws the same global permutation and takes its own slice of each global batch of
    `batch_size` items (so the global batch, and the averaged gradient, do not depend on the number of ranks)."""

    def __init__(self, dataset, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        if isinstance(dataset, tuple):
            self.tensors = dataset
        elif hasattr(dataset, "images") and hasattr(dataset, "labels"):
            self.tensors = dataset.images, dataset.labels
        else:
            self.tensors = None
        self.dataset = dataset
        self.n = len(self.tensors[0]) if self.tensors else len(dataset)
        self.batch_size = min(batch_size, self.n)
        self.rank, self.world_size = rank, world_size
        self.gen = torch.Generator().manual_seed(seed)
        self._new_epoch()

    def _new_epoch(self) -> None:
        self.epoch_state = self.gen.get_state()
        self.order = torch.randperm(self.n, generator=self.gen)
        self.pos = 0

    def __iter__(self):
        return self

    def __next__(self):
        if self.pos + self.batch_size > self.n:
            self._new_epoch()
        idx = self.order[self.pos:self.pos + self.batch_size]
        self.pos += self.batch_size
        if self.world_size > 1:
            idx = idx.tensor_split(self.world_size)[self.rank]
        if self.tensors is not None:
            return self.tensors[0][idx], self.tensors[1][idx]
        items = [self.dataset[int(j)] for j in idx]
        return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items])

    def state_dict(self) -> dict:
        return {"epoch_state": self.epoch_state.clone(), "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.gen.set_state(state["epoch_state"])
        self._new_epoch()
        self.pos = state["pos"]


def infinite_batches(dataset: Dataset | tuple[torch.Tensor, torch.Tensor], batch_size: int, seed: int,
                     rank: int = 0, world_size: int = 1) -> BatchStream:
    """Shuffled (x, label) batches forever (a `BatchStream`; `rank`/`world_size` shard each batch over ranks)."""
    return BatchStream(dataset, batch_size, seed, rank, world_size)


@dataclass
class TrainResult:
    history: list[tuple[int, float]] = field(default_factory=list)  # (step, loss)
    seconds: float = 0.0
    samples: int = 0          # over all ranks
    start_step: int = 0       # > 0 when resumed from a checkpoint
    world_size: int = 1

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.seconds if self.seconds else float("nan")


def _rng_state() -> dict:
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def train(model: torch.nn.Module, loss_fn: Callable[[object, int], torch.Tensor], batches: Iterator, *, steps: int,
          lr: float, min_lr: float = 0.0, warmup: int = 0, weight_decay: float = 0.0, betas=(0.9, 0.999),
          grad_clip: float | None = None, log_every: int = 10, autocast_dtype: torch.dtype | None = None,
          device_type: str = "cpu", checkpoint_dir: str | Path | None = None, checkpoint_every: int = 0,
          keep_checkpoints: int = 2, distributed: bool = False,
          on_checkpoint: Callable[[TrainResult], None] | None = None) -> TrainResult:
    """Optimise `loss_fn(batch, step)` for `steps` steps; returns the loss history (every `log_every` steps).
    `autocast_dtype` (e.g. bf16 on GPUs) runs the forward pass under autocast; CPU runs stay fp32.

    checkpoint_dir: resume from its newest valid checkpoint, write one every `checkpoint_every` steps (0: only when
        stopped by a signal) and one at the end; `on_checkpoint(result)` runs on rank 0 after each (e.g. to flush the
        loss history to MLflow).
    distributed: average gradients and the logged loss over the ranks of torch.distributed (each rank's `batches`
        yields its own shard); rank 0 writes the checkpoints, with every rank's RNG state."""
    from bar import distributed as dist_
    from bar.checkpoint import CheckpointDir, act_on_stop, stop_requested, training_section

    global FIRST_STEP_AT
    world = dist_.world_size() if distributed else 1
    rank = dist_.rank() if distributed else 0
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay)
    result = TrainResult(world_size=world)
    running, count, start_step = 0.0, 0, 0
    ckpts = CheckpointDir(checkpoint_dir, keep_checkpoints) if checkpoint_dir else None
    if world > 1:
        dist_.broadcast_parameters(model)
    if ckpts is not None:
        state = ckpts.load_latest() if rank == 0 else None
        state = dist_.broadcast_object(state) if world > 1 else state
        if state is not None:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            start_step, running, count = state["step"], state["running"], state["count"]
            result.history, result.seconds, result.samples = list(state["history"]), state["seconds"], state["samples"]
            result.start_step = start_step
            if hasattr(batches, "load_state_dict") and state.get("batches") is not None:
                batches.load_state_dict(state["batches"])
            else:  # a plain iterator: replay it to the same position
                for _ in range(start_step):
                    next(batches)
            rngs = state["rng"]
            if len(rngs) == world:
                _set_rng_state(rngs[rank])
            else:
                log.warning("checkpoint has %d RNG states for %d ranks: random streams restart", len(rngs), world)
            log.info("resumed from %s at step %d of %d", ckpts.folder, start_step, steps)

    def save(step: int) -> None:
        rngs = dist_.all_gather_objects(_rng_state()) if world > 1 else [_rng_state()]
        if rank == 0:
            ckpts.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                        "running": running, "count": count, "history": list(result.history),
                        "seconds": result.seconds, "samples": result.samples, "rng": rngs, "world_size": world,
                        "batches": batches.state_dict() if hasattr(batches, "state_dict") else None}, step)
            if on_checkpoint is not None:
                on_checkpoint(result)
        if world > 1:
            dist_.barrier()

    model.train()
    segment_start = time.perf_counter()
    with training_section():
        for step in range(start_step, steps):
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, lr, warmup, steps, min_lr)
            batch = next(batches)
            with torch.autocast(device_type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                loss = loss_fn(batch, step)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if world > 1:
                dist_.all_reduce_gradients(params)
            if grad_clip:
                torch.nn.utils.clip_grad_norm_(params, grad_clip)
            optimizer.step()
            if FIRST_STEP_AT is None:
                FIRST_STEP_AT = time.time()
            running += loss.item()
            count += 1
            result.samples += len(batch[0]) * world
            done = step + 1
            if done % log_every == 0 or done == steps:
                result.history.append((done, dist_.mean_scalar(running / count) if world > 1 else running / count))
                running, count = 0.0, 0
            signum = dist_.max_int(stop_requested()) if world > 1 else stop_requested()
            periodic = ckpts is not None and checkpoint_every and done % checkpoint_every == 0
            if ckpts is not None and (periodic or signum or done == steps):
                result.seconds += time.perf_counter() - segment_start
                segment_start = time.perf_counter()
                save(done)
            if signum:
                log.warning("stopping at step %d of %d on signal %d (checkpoint written)", done, steps, signum)
                model.eval()
                act_on_stop(signum)
    result.seconds += time.perf_counter() - segment_start
    model.eval()
    return result
