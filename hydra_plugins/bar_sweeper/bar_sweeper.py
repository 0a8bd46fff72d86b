"""Hydra sweeper `bar` (logic in bar.orchestration.sweeps):
- `hydra.sweeper.params`: a Cartesian grid, as Hydra's basic sweeper reads it; `hydra.sweeper.grids`: a union of
  such grids (discrete bits and continuous channels in one sweep);
- every point composed, validated and planned before the first job is submitted: finished points are skipped
  (no job), infeasible ones recorded without a job, a bad point is one line, `dry_run=true` prints the plan and
  submits nothing;
- one MLflow parent run per launch, run names that say what varies.
Points then run through the configured launcher (bar_local, or hydra-submitit-launcher's local and SLURM ones).

Hydra only instantiates sweepers that live in the `hydra_plugins` package, hence this thin shim."""

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


@dataclass
class BarSweeperConf:
    _target_: str = "hydra_plugins.bar_sweeper.bar_sweeper.BarSweeper"
    max_batch_size: Optional[int] = None   # points launched at once; -1 or null: all (checked: bar.orchestration.rules)
    params: Optional[Dict[str, Any]] = None
    grids: List[Dict[str, Any]] = field(default_factory=list)
    paper: Optional[str] = None         # one line: the paper figure or table the sweep reproduces
    description: Optional[str] = None   # what the sweep shows and how (markdown); both head its MLflow experiment


ConfigStore.instance().store(group="hydra/sweeper", name="bar", node=BarSweeperConf, provider="bar")


class BarSweeper(Sweeper):
    def __init__(self, max_batch_size: Optional[int] = None, params: Optional[Dict[str, Any]] = None,
                 grids: Optional[List[Dict[str, Any]]] = None, paper: Optional[str] = None,
                 description: Optional[str] = None) -> None:
        self.max_batch_size = max_batch_size
        self.params = dict(params or {})
        self.grids = list(grids or [])
        self.paper, self.description = paper, description   # bar.orchestration.sweep_notes reads them from the config
        self.config: Optional[DictConfig] = None
        self.hydra_context: Optional[HydraContext] = None
        self.launcher = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(hydra_context=hydra_context,
                                                                task_function=task_function, config=config)

    def sweep(self, arguments: List[str]) -> Any:
        from bar.orchestration.sweeps import run_sweep  # plugin discovery imports this module: keep it free of torch

        return run_sweep(self, arguments)
