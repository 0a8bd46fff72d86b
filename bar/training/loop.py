"""One training loop for every stage (tokenizer, evaluation classifier, generator): AdamW, warmup + cosine LR, grad
clipping, loss history, throughput, optional autocast, and data parallelism over torch.distributed ranks.

Its state is one object, `TrainState` (model, optimizer, step, data position, RNG, loss history, timing), with
`state_dict` / `load_state_dict`; checkpointing and stop signals are hooks on the loop (`Checkpointing`), not
parameters threaded through it. Resume is exact: an interrupted and resumed run ends with the same weights as an
uninterrupted one.

    train(model, loss_fn, batches, Recipe(...), distributed=False, hooks=[Checkpointing(...)]) -> TrainResult

Data parallelism is torch's DistributedDataParallel; gradient accumulation splits each rank's batch into
`accum_steps` micro-batches (DDP's `no_sync` until the last). Randomness inside the loss comes from a stream per
micro-batch (`micro_generator`) keyed by its position in the global batch, so the weights do not depend on how the
global batch is split over ranks and accumulation steps."""

from __future__ import annotations

import logging
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset

from bar.core import distributed as dist
from bar.training.checkpoints import CheckpointDir
from bar.core.progress import Progress
from bar.training.signals import act_on_stop, stop_requested, training_section

log = logging.getLogger("bar")


def lr_at(step: int, base_lr: float, warmup: int, total: int, min_lr: float = 0.0) -> float:
    """The release's schedule (utils/lr_schedulers.py): linear warmup from 0 (the first step's LR is 0) to base_lr,
    then cosine decay to min_lr at `total`."""
    if step < warmup:
        return base_lr * step / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_lr + 0.5 * (base_lr - min_lr) * (1 + math.cos(math.pi * progress))


class BatchStream:
    """Shuffled (x, label) batches forever, with a resumable position (`state_dict` / `load_state_dict`).

    In-memory data (a tensor pair, or a dataset with `.images` and `.labels`) is indexed directly. With
    `world_size` > 1 every rank draws the same global permutation and takes its own slice of each global batch of
    `batch_size` items (so the global batch, and the averaged gradient, do not depend on the number of ranks)."""

    def __init__(self, dataset, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        self.tensors: tuple[torch.Tensor, torch.Tensor] | None
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
class Recipe:
    """How to optimise: AdamW with linear warmup and cosine decay to min_lr at `steps`."""
    steps: int
    lr: float
    min_lr: float = 0.0
    warmup: int = 0
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float | None = None
    log_every: int = 10                              # loss history: one mean every `log_every` steps
    autocast_dtype: torch.dtype | None = None        # e.g. bf16 on GPUs; CPU runs stay fp32
    device_type: str = "cpu"
    accum_steps: int = 1                             # micro-batches per optimizer step (each rank's batch is split)
    decays: Callable[[str, torch.nn.Parameter], bool] | None = None   # weight decay on which parameters (None: all)
    seed: int = 0                                    # seeds the per-micro-batch random streams (`micro_generator`)
    compile: bool = False                            # torch.compile the (DDP-wrapped) module for the forward pass
    schedule_steps: int | None = None                # the cosine's horizon when it is not `steps`
    param_groups: Callable[[torch.nn.Module], list[dict]] | None = None   # own groups (each may carry `lr_mult`)

    def logs_at(self, step: int) -> bool:
        """Whether the loss history (and bar.training.running_metrics) gets an entry once `step` steps are done."""
        return step % self.log_every == 0 or step == self.steps


@dataclass
class TrainResult:
    history: list[tuple[int, float]] = field(default_factory=list)  # (step, loss)
    seconds: float = 0.0
    samples: int = 0          # over all ranks
    start_step: int = 0       # > 0 when resumed from a checkpoint
    world_size: int = 1
    first_step_at: float | None = None   # wall-clock time of this process's first optimizer step

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


class TrainState:
    """Everything a resumed run needs, in one place: model, optimizer, step, data position, RNG, loss history."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, batches: Iterator, world: int = 1):
        self.model, self.optimizer, self.batches, self.world = model, optimizer, batches, world
        self.step = 0                      # optimizer steps done
        self.running, self.count = 0.0, 0  # loss sum / count since the last history entry
        self.result = TrainResult(world_size=world)
        self.excluded_seconds = 0.0        # spent in hooks that are not training (evaluations): not in result.seconds

    def state_dict(self) -> dict:
        """Every rank must call this (the RNG states of all ranks are gathered); rank 0's copy is the checkpoint."""
        rngs = dist.all_gather_objects(_rng_state())
        r = self.result
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(), "step": self.step,
                "running": self.running, "count": self.count, "history": list(r.history), "seconds": r.seconds,
                "samples": r.samples, "rng": rngs, "world_size": self.world,
                "batches": self.batches.state_dict() if hasattr(self.batches, "state_dict") else None}

    def load_state_dict(self, state: dict, rank: int = 0) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step, self.running, self.count = state["step"], state["running"], state["count"]
        r = self.result
        r.history, r.seconds, r.samples, r.start_step = list(state["history"]), state["seconds"], state["samples"], \
            state["step"]
        if hasattr(self.batches, "load_state_dict") and state.get("batches") is not None:
            self.batches.load_state_dict(state["batches"])
        else:  # a plain iterator: replay it to the same position
            for _ in range(self.step):
                next(self.batches)
        if len(state["rng"]) == self.world:
            _set_rng_state(state["rng"][rank])
        else:
            log.warning("checkpoint has %d RNG states for %d ranks: random streams restart", len(state["rng"]),
                        self.world)


class TrainHook:
    """Called by the loop: before the first step (e.g. resume), after every step, after the last one."""

    def on_start(self, state: TrainState) -> None: ...
    def after_step(self, state: TrainState) -> None: ...
    def on_end(self, state: TrainState) -> None: ...


class Checkpointing(TrainHook):
    """Resume from the newest valid checkpoint in `folder`; write one when `minutes` of wall time have passed since
    the last (or since the start), every `every` steps (0: neither), on a stop request (then act on it: exit or
    requeue) and after the last step. `on_checkpoint(result)` runs on rank 0 after each write (e.g. to flush the loss
    history to MLflow).

    Ranks agree on every write (it holds collectives): rank 0's `clock` (seconds; injectable for tests) decides the
    timed ones, and its decision travels with the stop flags in the one all-reduce each step already makes."""

    def __init__(self, folder: str | Path, every: int = 0, keep: int = 2,
                 on_checkpoint: Callable[[TrainResult], None] | None = None, minutes: float = 0.0,
                 clock: Callable[[], float] = time.monotonic):
        self.dir = CheckpointDir(folder, keep)
        self.every, self.on_checkpoint = every, on_checkpoint
        self.minutes, self.clock = float(minutes), clock
        self.last = clock()                  # when the last checkpoint was written (rank 0's clock decides)

    def on_start(self, state: TrainState) -> None:
        self.restore(state)
        self.last = self.clock()

    def restore(self, state: TrainState) -> None:
        """Load the newest valid checkpoint into `state` (rank 0 reads it, every rank gets it)."""
        saved = dist.broadcast_object(self.dir.load_latest() if dist.is_main() else None)
        if saved is not None:
            state.load_state_dict(saved, dist.rank())
            log.info("resumed from %s at step %d", self.dir.folder, state.step)

    def time_is_up(self) -> bool:
        """On rank 0: `minutes` have passed since the last checkpoint (never on the other ranks, nor with 0)."""
        return bool(self.minutes) and dist.is_main() and self.clock() - self.last >= 60 * self.minutes

    def after_step(self, state: TrainState) -> None:
        signum, timed = dist.max_ints([stop_requested(), self.time_is_up()])
        if signum or timed or (self.every and state.step % self.every == 0):
            self.save(state)
            self.last = self.clock()         # after the write: a slow write does not make the next one due at once
        if signum:
            log.warning("stopping at step %d on signal %d (checkpoint written)", state.step, signum)
            state.model.eval()
            act_on_stop(signum)

    def on_end(self, state: TrainState) -> None:
        if self.dir.steps()[-1:] != [state.step]:
            self.save(state)

    def save(self, state: TrainState) -> None:
        payload = state.state_dict()
        if dist.is_main():
            self.dir.save(payload, state.step)
            if self.on_checkpoint is not None:
                self.on_checkpoint(state.result)
        dist.barrier()


def evaluation_steps(every: int, total: int) -> range:
    """The optimizer steps at which a PeriodicEval evaluates: every `every`-th step before the last (the run's final
    evaluation covers the last); none when `every` is 0."""
    return range(int(every), int(total), int(every)) if every else range(0)


class PeriodicEval(TrainHook):
    """Evaluate during training at `evaluation_steps(every, total)` (the run's final evaluation covers the last step):
    `evaluate(model, step) -> value` (None on ranks that do not score). It runs on every rank (sampling and features
    are sharded), in eval mode, with the random state put back afterwards and its time left out of the training
    throughput, so training goes on exactly as it would without it. `history` [(step, value)] is kept in checkpoints
    through `state_dict` (bar.training.tokenizer_hooks.CheckpointingWithExtras); `on_value(step, value)` runs on the
    ranks that scored (e.g. to log the value at its step). `done`: steps an earlier attempt of the run already
    evaluated and logged (it was killed after them, before its next checkpoint): skipped, never logged twice. It
    must be the same on every rank."""

    def __init__(self, every: int, total: int, evaluate: Callable[[torch.nn.Module, int], float | None],
                 on_value: Callable[[int, float], None] | None = None, done: Iterable[int] | None = None):
        self.steps, self.evaluate, self.on_value = evaluation_steps(every, total), evaluate, on_value
        self.history: list[tuple[int, float]] = []
        self.done = frozenset(int(step) for step in done or ())

    def after_step(self, state: TrainState) -> None:
        if state.step not in self.steps or state.step in self.done:
            return
        start, rng = time.perf_counter(), _rng_state()
        state.model.eval()
        try:     # not under no_grad: a lazily built evaluator may train (the classifier extractor)
            value = self.evaluate(state.model, state.step)
        finally:
            state.model.train()
            _set_rng_state(rng)
        if value is not None:
            self.history.append((state.step, float(value)))
            if self.on_value is not None:
                self.on_value(state.step, float(value))
        state.excluded_seconds += time.perf_counter() - start

    def state_dict(self) -> dict:
        return {"history": list(self.history)}

    def load_state_dict(self, state: dict) -> None:
        self.history = [tuple(item) for item in state["history"]]


class ProgressHook(TrainHook):
    """A progress bar (or, in logs, a line per 10%) of the optimizer steps, with img/s and ETA."""

    def __init__(self, desc: str, steps: int, batch_size: int):
        self.desc, self.steps, self.batch_size = desc, steps, batch_size
        self.bar: Progress | None = None

    def on_start(self, state: TrainState) -> None:
        self.bar = Progress(self.steps, self.desc, unit="step", scale=self.batch_size, initial=state.step)

    def after_step(self, state: TrainState) -> None:
        assert self.bar is not None, "on_start makes the bar"
        self.bar.update(1)

    def on_end(self, state: TrainState) -> None:
        assert self.bar is not None, "on_start makes the bar"
        self.bar.close()


def _optimizer(model: torch.nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if recipe.param_groups is not None:
        groups = recipe.param_groups(model)
    elif recipe.decays is None or not recipe.weight_decay:
        groups = [{"params": [p for _, p in named], "weight_decay": recipe.weight_decay}]
    else:
        groups = [{"params": [p for n, p in named if recipe.decays(n, p)], "weight_decay": recipe.weight_decay},
                  {"params": [p for n, p in named if not recipe.decays(n, p)], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=recipe.lr, betas=(recipe.betas[0], recipe.betas[1]))


def micro_generator(seed: int, step: int, index: int, device) -> torch.Generator:
    """The random stream of micro-batch `index` (its position in the global batch, in micro-batches) of optimizer step
    `step`: a function of where the samples sit in the global batch, not of which rank or accumulation step draws
    them, so 2 ranks x 2 accumulation steps train exactly as 1 rank x 4."""
    return torch.Generator(device=device).manual_seed((seed * 1_000_003 + step) * 65_537 + index)


def ddp_of(module) -> DistributedDataParallel | None:
    """The DistributedDataParallel wrapper inside `module` (which may be compiled), if any."""
    inner = getattr(module, "_orig_mod", module)
    return inner if isinstance(inner, DistributedDataParallel) else None


def split_batch(batch, parts: int) -> list:
    """A rank's batch (a tuple of tensors sharing dim 0) as `parts` contiguous micro-batches."""
    if parts == 1:
        return [batch]
    return list(zip(*(t.tensor_split(parts) for t in batch)))


def _step(state: TrainState, module, loss_fn, recipe: Recipe) -> float:
    """One optimizer step over `recipe.accum_steps` micro-batches of this rank's batch; returns its mean loss.
    Gradients are averaged over ranks by DDP on the last micro-batch only (`no_sync` before)."""
    lr = lr_at(state.step, recipe.lr, recipe.warmup, recipe.schedule_steps or recipe.steps, recipe.min_lr)
    for group in state.optimizer.param_groups:
        group["lr"] = lr * group.get("lr_mult", 1.0)
    batch = next(state.batches)
    micros = split_batch(batch, recipe.accum_steps)
    state.optimizer.zero_grad(set_to_none=True)
    device, total, ddp = next(state.model.parameters()).device, 0.0, ddp_of(module)
    for j, micro in enumerate(micros):
        sync = j == len(micros) - 1 or ddp is None       # without a DDP wrapper every micro-batch "syncs"
        generator = micro_generator(recipe.seed, state.step, dist.rank() * len(micros) + j, device)
        with (nullcontext() if sync or ddp is None else ddp.no_sync()), torch.autocast(
                recipe.device_type, dtype=recipe.autocast_dtype, enabled=recipe.autocast_dtype is not None):
            loss = loss_fn(module, micro, state.step, generator) / len(micros)
        loss.backward()
        total += loss.item()
    if recipe.grad_clip:
        torch.nn.utils.clip_grad_norm_([p for g in state.optimizer.param_groups for p in g["params"]],
                                       recipe.grad_clip)
    state.optimizer.step()
    state.result.samples += len(batch[0]) * state.world
    return total


def train(model: torch.nn.Module, loss_fn: Callable, batches: Iterator, recipe: Recipe, *, distributed: bool = False,
          hooks: Sequence[TrainHook] = ()) -> TrainResult:
    """Optimise `loss_fn(module, batch, step, generator) -> loss` for `recipe.steps` steps; `module` is the model (or
    its DistributedDataParallel wrapper: call it, not `model`, for the forward pass) and `generator` the micro-batch's
    random stream. With `distributed`, the model is wrapped in DistributedDataParallel (each rank's `batches` yields
    its own part of every global batch; gradients and the logged loss are averaged over the ranks), also at world
    size 1 when a process group is up (benchmarks/gpu/cluster_checks.py runs DDP + compile + no_sync on one GPU)."""
    world = dist.world_size() if distributed else 1
    ddp = distributed and torch.distributed.is_initialized()
    wrapped = DistributedDataParallel(model, device_ids=dist.device_ids(model)) if ddp else model
    module = torch.compile(wrapped) if recipe.compile else wrapped
    state = TrainState(model, _optimizer(model, recipe), batches, world)
    for hook in hooks:
        hook.on_start(state)
    model.train()
    result, base_seconds, segment_start = state.result, state.result.seconds, time.perf_counter()
    with training_section():
        while state.step < recipe.steps:
            state.running += _step(state, module, loss_fn, recipe)
            state.count += 1
            state.step += 1
            result.first_step_at = result.first_step_at or time.time()
            result.seconds = base_seconds + time.perf_counter() - segment_start - state.excluded_seconds
            if recipe.logs_at(state.step):
                mean = state.running / state.count
                result.history.append((state.step, dist.mean_scalar(mean) if world > 1 else mean))
                state.running, state.count = 0.0, 0
            for hook in hooks:
                hook.after_step(state)
    for hook in hooks:
        hook.on_end(state)
    model.eval()
    return result
