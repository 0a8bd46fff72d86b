"""Where outputs live: the one place that decides it, for bar/ and analysis/ alike.

    outputs_dir()          BAR_OUTPUTS (made absolute) or <project>/outputs
    default_tracking_uri() MLFLOW_TRACKING_URI, or an absolute sqlite file in outputs_dir()

The composed config reads both through the resolvers `${bar_outputs:}` and `${bar_tracking_uri:}` (registered on
import of `bar`), so `BAR_OUTPUTS=X make demo` and `make figures` agree on the store."""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import OmegaConf

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def outputs_dir() -> Path:
    """Absolute outputs folder: BAR_OUTPUTS if set (relative to the current directory), else <project>/outputs."""
    chosen = os.environ.get("BAR_OUTPUTS") or str(PROJECT_ROOT / "outputs")
    return Path(chosen).expanduser().resolve()


def default_tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{outputs_dir()}/mlflow.db"


def sqlite_path(uri: str) -> Path | None:
    """The database file of an sqlite tracking URI, None for any other store."""
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


def one_task_per_gpu(gpus_per_node) -> int:
    """SLURM tasks per node: one process per GPU (each a torch.distributed rank), or 1 without GPUs."""
    return int(gpus_per_node) if gpus_per_node else 1


def every_nth_of(steps, times) -> int:
    """Steps between `times` evenly spaced evaluations over `steps` training steps (at least 1)."""
    return max(1, int(steps) // int(times))


def register_resolvers() -> None:
    """Config resolvers: the two defaults above, one task per GPU for the SLURM launcher, and evaluation spacing
    (`${bar_every:${generator.train.steps},6}`) for curves (idempotent)."""
    for name, fn in (("bar_outputs", lambda: str(outputs_dir())), ("bar_tracking_uri", default_tracking_uri),
                     ("bar_one_task_per_gpu", one_task_per_gpu), ("bar_every", every_nth_of)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)
