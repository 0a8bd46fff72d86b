"""The config's resolvers: output folder and tracking store (bar.core.paths), one SLURM task per GPU, and the
spacing of evaluations during training. Registered when bar.orchestration is imported (a submitit job imports it
when it unpickles its task, before composing its config)."""

from __future__ import annotations

from omegaconf import OmegaConf

from bar.core.paths import default_tracking_uri, outputs_dir


def one_task_per_gpu(gpus_per_node) -> int:
    """SLURM tasks per node: one process per GPU (each a torch.distributed rank), or 1 without GPUs."""
    return int(gpus_per_node) if gpus_per_node else 1


def every_nth_of(steps, times) -> int:
    """Steps between `times` evenly spaced evaluations over `steps` training steps (at least 1)."""
    return max(1, int(steps) // int(times))


def register_resolvers() -> None:
    """`${bar_outputs:}`, `${bar_tracking_uri:}`, `${bar_one_task_per_gpu:N}` and `${bar_every:STEPS,TIMES}`
    (idempotent)."""
    for name, fn in (("bar_outputs", lambda: str(outputs_dir())), ("bar_tracking_uri", default_tracking_uri),
                     ("bar_one_task_per_gpu", one_task_per_gpu), ("bar_every", every_nth_of)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)
