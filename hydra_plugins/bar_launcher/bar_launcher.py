"""Hydra launcher `bar_local` (launcher=local): the points of a batch run at the same time, each in its own process
forked from one server that imported the project once (bar.orchestration.launching), so a point starts in
milliseconds. `hydra.sweeper.max_batch_size` points run at once (launcher=local: 1, one after another; `make demo`:
2).

Hydra only instantiates launchers that live in the `hydra_plugins` package, hence this thin shim."""

from dataclasses import dataclass
from typing import Optional, Sequence

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


@dataclass
class BarLocalLauncherConf:
    _target_: str = "hydra_plugins.bar_launcher.bar_launcher.BarLocalLauncher"


ConfigStore.instance().store(group="hydra/launcher", name="bar_local", node=BarLocalLauncherConf, provider="bar")


class BarLocalLauncher(Launcher):
    def __init__(self) -> None:
        self.config: Optional[DictConfig] = None
        self.hydra_context: Optional[HydraContext] = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        # Each point process runs its point itself (bar.orchestration.runner.execute), not run.py's task function.
        self.config, self.hydra_context = config, hydra_context

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        # plugin discovery imports this module: keep it free of torch
        from bar.orchestration.launching import launch_batch

        return launch_batch(self.hydra_context, self.config, job_overrides, initial_job_idx)
