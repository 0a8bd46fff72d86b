"""Single entry point: one sweep point (`python run.py ...`) or a sweep (`python run.py -m sweep=NAME`)."""

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from bar import UserError
from bar.config import check_sweep_name, register_configs


def _check_sweep_argument(argv: list[str]) -> None:
    """An unknown sweep name is one line, not Hydra's multi-line composition error."""
    for arg in argv:
        if arg.startswith("sweep="):
            try:
                check_sweep_name(arg.split("=", 1)[1])
            except UserError as err:
                print(f"error: {err}", file=sys.stderr)
                raise SystemExit(2)


@hydra.main(config_path="bar/conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float:
    from bar.pipeline import execute

    return execute(cfg, multirun=HydraConfig.get().mode == RunMode.MULTIRUN)


if __name__ == "__main__":
    _check_sweep_argument(sys.argv[1:])
    register_configs()
    main()
