"""Named training statistics besides the loss (a loss's parts, the discriminator's), averaged over the loop's logging
windows: one entry at each step the loss history gets one (`Recipe.logs_at`), read from the device only then.

    metrics = RunningMetrics(recipe)       a TrainHook: after the hooks that add to it, before checkpointing
    metrics.add({name: tensor or float})   any number of times per step; tensors are summed where they are (no sync)
    metrics.history                        {name: [(step, mean over the window's values and the ranks)]}
"""

from __future__ import annotations

from typing import Mapping

import torch

from bar.core import distributed as dist
from bar.training.loop import Recipe, TrainHook, TrainState


def _floats(values: list) -> list[float]:
    """The values as floats, the tensors read in one transfer (one sync)."""
    tensors = [v for v in values if isinstance(v, torch.Tensor)]
    read = iter(torch.stack(tensors).tolist()) if tensors else iter(())
    return [next(read) if isinstance(v, torch.Tensor) else float(v) for v in values]


class RunningMetrics(TrainHook):
    """Window sums and counts per name; at a logging step their means, averaged over the ranks, join `history`. A
    name need not come every step (the discriminator's start at its start step): its mean is over the values that
    came. Its state (history and the open window) goes into the checkpoints, so a resumed run logs the same."""

    optional_state = True    # a checkpoint written before these metrics existed resumes without them

    def __init__(self, recipe: Recipe):
        self.logs_at = recipe.logs_at
        self.history: dict[str, list[tuple[int, float]]] = {}
        self._sums: dict[str, torch.Tensor | float] = {}
        self._counts: dict[str, int] = {}

    def add(self, values: Mapping[str, torch.Tensor | float]) -> None:
        for name, value in values.items():
            value = value.detach().float().reshape(()) if isinstance(value, torch.Tensor) else float(value)
            self._sums[name] = self._sums.get(name, 0.0) + value
            self._counts[name] = self._counts.get(name, 0) + 1

    def after_step(self, state: TrainState) -> None:
        if self.logs_at(state.step):
            self._flush(state.step)

    def _flush(self, step: int) -> None:
        sums = zip(self._sums, _floats(list(self._sums.values())))
        means = {name: total / self._counts[name] for name, total in sums}
        ranks = dist.all_gather_objects(means)        # every rank logs at the same steps: one collective
        for name in sorted(set().union(*ranks)):
            values = [r[name] for r in ranks if name in r]
            self.history.setdefault(name, []).append((step, sum(values) / len(values)))
        self._sums, self._counts = {}, {}

    def state_dict(self) -> dict:
        sums = dict(zip(self._sums, _floats(list(self._sums.values()))))
        return {"history": {k: list(v) for k, v in self.history.items()}, "sums": sums, "counts": dict(self._counts)}

    def load_state_dict(self, state: dict) -> None:
        self.history = {k: [tuple(e) for e in v] for k, v in state["history"].items()}
        self._sums, self._counts = dict(state["sums"]), dict(state["counts"])
