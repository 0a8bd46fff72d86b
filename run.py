"""Single entry point: one sweep point (`python run.py ...`) or a sweep (`python run.py -m sweep=NAME`).

A composition error (an unknown key or option, a value of the wrong type) is one line on stderr, exit code 2; Ctrl-C
is one line too (exit code 130: the point's run is marked interrupted, the same command continues it)."""

import os
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from bar.orchestration import register_resolvers
from bar.orchestration.config import describe_config_error, is_config_error, register


@hydra.main(config_path="bar/conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> dict:
    """The task: one point, run here (a single run, or a job of the submitit launchers; launcher=local's points run
    in their own processes, bar.orchestration.launching)."""
    # Referenced here so that a submitit job, which unpickles this function, imports bar.orchestration (registering
    # the config's resolvers) before composing its config; the runner itself is imported only when a point runs.
    register_resolvers()
    from bar.orchestration.runner import execute

    return execute(cfg, multirun=HydraConfig.get().mode == RunMode.MULTIRUN)


if __name__ == "__main__":
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")   # let composition errors reach us, to print them as one line
    register()
    try:
        main()
    except KeyboardInterrupt:   # Ctrl-C before a point ran (a running point or sweep reports its own)
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    except Exception as err:
        if is_config_error(err):
            print(f"error: {describe_config_error(err)}", file=sys.stderr)
        elif isinstance(err, OSError) and err.filename:   # Hydra creates its output folder before any project code
            print(f"error: cannot create {err.filename} ({err.strerror}): set BAR_OUTPUTS (or paths.outputs) to a "
                  "writable folder", file=sys.stderr)
        else:
            raise
        raise SystemExit(2) from None
