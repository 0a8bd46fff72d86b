"""Hydra sweeper `bar`: Hydra's basic sweeper plus what stock Hydra cannot do (logic in bar.orchestration.sweeps):
- `hydra.sweeper.grids`: a union of Cartesian grids (discrete bits and continuous channels in one sweep);
- every point composed, validated and planned before the first job is submitted: finished points are skipped
  (no job), a bad point is one line, `dry_run=true` prints the plan and submits nothing;
- one MLflow parent run per launch, run names that say what varies.
Points then run through Hydra's stock launchers (basic, submitit local, submitit SLURM).

Hydra only instantiates sweepers that live in the `hydra_plugins` package, hence this thin shim."""

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore


@dataclass
class BarSweeperConf:
    _target_: str = "hydra_plugins.bar_sweeper.bar_sweeper.BarSweeper"
    max_batch_size: Optional[int] = None
    params: Optional[Dict[str, Any]] = None
    grids: List[Dict[str, Any]] = field(default_factory=list)


ConfigStore.instance().store(group="hydra/sweeper", name="bar", node=BarSweeperConf, provider="bar")


class BarSweeper(BasicSweeper):
    def __init__(self, max_batch_size: Optional[int] = None, params: Optional[Dict[str, Any]] = None,
                 grids: Optional[List[Dict[str, Any]]] = None) -> None:
        super().__init__(max_batch_size=max_batch_size, params=params)
        self.grids = list(grids or [])

    def sweep(self, arguments: List[str]) -> Any:
        from bar.orchestration.sweeps import run_sweep  # plugin discovery imports this module: keep it free of torch

        return run_sweep(self, arguments)
