"""Hydra sweeper `bar`: Hydra's basic sweeper plus union-of-grids sweeps and up-front validation (bar.sweeps).

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
        from bar.sweeps import run_sweep

        return run_sweep(self, arguments)
