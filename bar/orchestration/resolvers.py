"""The config's resolvers: output folder and tracking store (bar.core.paths), one SLURM task per GPU and the CPUs
and memory that follow the GPUs, and the spacing of evaluations during training. Registered when bar.orchestration
is imported (a submitit job imports it when it unpickles its task, before composing its config)."""

from __future__ import annotations

import os
import socket

from omegaconf import OmegaConf

from bar.core.paths import default_tracking_uri, outputs_dir


def tracking_uri(server: str | None = None) -> str:
    """`${bar_tracking_uri:[SERVER]}`: MLFLOW_TRACKING_URI when set; else `server` when given (tracking=cluster's
    tracking server), else the sqlite file under outputs/."""
    return os.environ.get("MLFLOW_TRACKING_URI") or server or default_tracking_uri()


def submit_host() -> str:
    """`${bar_submit_host:}`: the machine the sweep is launched from. Cached in the sweep's config (use_cache), which
    Hydra copies into every job's, so a job on another node gets the driver's name; a SLURM job started by submitit
    without that cache gets it from SLURM (SLURM_SUBMIT_HOST)."""
    if os.environ.get("SUBMITIT_EXECUTOR") == "slurm" and os.environ.get("SLURM_SUBMIT_HOST"):
        return os.environ["SLURM_SUBMIT_HOST"]
    return socket.gethostname()


def one_task_per_gpu(gpus_per_node) -> int:
    """SLURM tasks per node: one process per GPU (each a torch.distributed rank), or 1 without GPUs."""
    return int(gpus_per_node) if gpus_per_node else 1


def with_gpus(gpus_per_node, value):
    """`value` on a node with GPUs; None without (the cluster's default: e.g. SLURM's CPUs and memory per job)."""
    return value if gpus_per_node else None


def per_gpu(gpus_per_node, value):
    """`value` for each GPU of a node; None without GPUs."""
    return value * int(gpus_per_node) if gpus_per_node else None


def on_gpu(device, value):
    """`value` where the point runs on GPUs (device=cuda or cuda:N), else 0: a CPU run's loader workers would only take
    cores from its step."""
    return value if str(device).startswith("cuda") else 0


def every_nth_of(steps, times) -> int:
    """Steps between `times` evenly spaced evaluations over `steps` training steps (at least 1)."""
    return max(1, int(steps) // int(times))


def register_resolvers() -> None:
    """`${bar_outputs:}`, `${bar_tracking_uri:}`, `${bar_one_task_per_gpu:N}`, `${bar_with_gpus:N,VALUE}`,
    `${bar_per_gpu:N,VALUE}`, `${bar_on_gpu:DEVICE,VALUE}`, `${bar_every:STEPS,TIMES}` and `${bar_submit_host:}`
    (idempotent)."""
    for name, fn in (("bar_outputs", lambda: str(outputs_dir())), ("bar_tracking_uri", tracking_uri),
                     ("bar_one_task_per_gpu", one_task_per_gpu), ("bar_with_gpus", with_gpus),
                     ("bar_per_gpu", per_gpu), ("bar_on_gpu", on_gpu), ("bar_every", every_nth_of)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)
    if not OmegaConf.has_resolver("bar_submit_host"):   # one value for the whole sweep (see submit_host)
        OmegaConf.register_new_resolver("bar_submit_host", submit_host, use_cache=True)
