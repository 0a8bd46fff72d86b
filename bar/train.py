"""One training loop for every stage: AdamW, warmup + cosine LR, grad clipping, loss history, throughput."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
from torch.utils.data import Dataset


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


def infinite_batches(dataset: Dataset | tuple[torch.Tensor, torch.Tensor], batch_size: int, seed: int) -> Iterator:
    """Shuffled (x, label) batches forever. In-memory data (a tensor pair, or a dataset with `.images` and `.labels`)
    is indexed directly, without per-item overhead."""
    gen = torch.Generator().manual_seed(seed)
    if isinstance(dataset, tuple):
        tensors = dataset
    elif hasattr(dataset, "images") and hasattr(dataset, "labels"):
        tensors = dataset.images, dataset.labels
    else:
        tensors = None
    n = len(tensors[0]) if tensors else len(dataset)
    batch_size = min(batch_size, n)
    while True:
        order = torch.randperm(n, generator=gen)
        for i in range(0, n - batch_size + 1, batch_size):
            idx = order[i:i + batch_size]
            if tensors is not None:
                yield tensors[0][idx], tensors[1][idx]
            else:
                items = [dataset[int(j)] for j in idx]
                yield torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items])


@dataclass
class TrainResult:
    history: list[tuple[int, float]] = field(default_factory=list)  # (step, loss)
    seconds: float = 0.0
    samples: int = 0

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.seconds if self.seconds else float("nan")


def train(model: torch.nn.Module, loss_fn: Callable[[object, int], torch.Tensor], batches: Iterator, *, steps: int,
          lr: float, min_lr: float = 0.0, warmup: int = 0, weight_decay: float = 0.0, betas=(0.9, 0.999),
          grad_clip: float | None = None, log_every: int = 10, autocast_dtype: torch.dtype | None = None,
          device_type: str = "cpu") -> TrainResult:
    """Optimise `loss_fn(batch, step)` for `steps` steps; returns the loss history (every `log_every` steps).
    `autocast_dtype` (e.g. bf16 on GPUs) runs the forward pass under autocast; CPU runs stay fp32."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr,
                                  betas=tuple(betas), weight_decay=weight_decay)
    result = TrainResult()
    model.train()
    running, count = 0.0, 0
    start = time.perf_counter()
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, lr, warmup, steps, min_lr)
        batch = next(batches)
        with torch.autocast(device_type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            loss = loss_fn(batch, step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        running += loss.item()
        count += 1
        result.samples += len(batch[0])
        if (step + 1) % log_every == 0 or step == steps - 1:
            result.history.append((step + 1, running / count))
            running, count = 0.0, 0
    result.seconds = time.perf_counter() - start
    model.eval()
    return result
