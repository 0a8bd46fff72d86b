"""Hydra launcher `bar_local` (launcher=local): Hydra's basic launcher, except that the points of a batch run at the
same time. Each point is its own process forked from one server that imported the project once (bar.orchestration.runner), so
a point starts in milliseconds where a fresh interpreter (submitit's local launcher) spends seconds importing torch,
torch-fidelity and MLflow. `hydra.sweeper.max_batch_size` points run at once (launcher=local: 1, one after
another; `make demo`: 2).

Hydra only instantiates launchers that live in the `hydra_plugins` package, hence this thin shim."""

from dataclasses import dataclass
from typing import Sequence

from hydra._internal.core_plugins.basic_launcher import BasicLauncher
from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn


@dataclass
class BarLocalLauncherConf:
    _target_: str = "hydra_plugins.bar_launcher.bar_launcher.BarLocalLauncher"


ConfigStore.instance().store(group="hydra/launcher", name="bar_local", node=BarLocalLauncherConf, provider="bar")


class BarLocalLauncher(BasicLauncher):
    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from bar.orchestration import runner  # plugin discovery imports this module: keep it free of torch

        with runner.started_not_awaited():   # each job's task starts its point's process and returns it
            returns = super().launch(job_overrides, initial_job_idx)
        return runner.await_points(list(returns))
