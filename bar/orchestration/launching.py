"""The local launcher (launcher=local, hydra_plugins/bar_launcher): a batch of points, each in its own process forked
from one server process that imported the project once, so a point starts in milliseconds where a fresh interpreter
spends seconds importing torch, torch-fidelity and MLflow.

    launch_batch(hydra_context, config, job_overrides, initial_job_idx) -> [JobReturn]
        starts every point of the batch (Hydra's per-point output folder, then its process), awaits them all, and
        returns what each point's `execute` returned

A point process only runs its point (bar.orchestration.runner.execute). One that dies without returning (SIGKILL,
the out-of-memory killer, a crash in native code) has its MLflow run marked failed here, not left RUNNING; Ctrl-C
reaches the points too, which mark their runs interrupted, and is given time to do so."""

from __future__ import annotations

import logging
import math
import multiprocessing
import signal
import sys
from pathlib import Path
from typing import Sequence

from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, run_job, setup_globals
from hydra.types import HydraContext
from omegaconf import DictConfig, OmegaConf, open_dict

from bar.orchestration import tracking
from bar.orchestration.config import point_name
from bar.orchestration.planner import point_folder
from bar.orchestration.runner import execute

log = logging.getLogger(__name__)

INTERRUPT_GRACE_S = 60   # after Ctrl-C, how long a point may take to record its run as interrupted


def launch_batch(hydra_context: HydraContext, config: DictConfig, job_overrides: Sequence[Sequence[str]],
                 initial_job_idx: int) -> list[JobReturn]:
    """Start the batch's points at once, then await them; one JobReturn per point, its value what the point
    returned ({"status", "metric", ...})."""
    setup_globals()
    configure_log(config.hydra.hydra_logging, config.hydra.verbose)
    Path(str(config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
    log.info(f"Launching {len(job_overrides)} jobs locally")
    started = []
    for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
        log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
        job_config = hydra_context.config_loader.load_sweep_config(config, list(overrides))
        with open_dict(job_config):
            job_config.hydra.job.id = idx
            job_config.hydra.job.num = idx
        # Hydra's job: its output folder and saved configs, then the task, which starts the point's process
        started.append(run_job(hydra_context=hydra_context, task_function=PointProcess, config=job_config,
                               job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir"))
        configure_log(config.hydra.hydra_logging, config.hydra.verbose)
    return await_points(started)


def await_points(started: list[JobReturn]) -> list[JobReturn]:
    """Each started point's JobReturn gets what the point returned. On Ctrl-C every started point is given time to
    record its run as interrupted."""
    points = [r.return_value if r.status == JobStatus.COMPLETED else None for r in started]
    try:
        for job, point in zip(started, points):
            if point is not None:
                job.return_value = point.wait()
    except KeyboardInterrupt:
        for point in points:
            if point is not None:
                point.child.join(INTERRUPT_GRACE_S)
        raise
    return started


class PointProcess:
    """One point running in a child process, forked from a clean server process that has imported the runner (not
    from this one, which holds MLflow connections). `wait` returns what the point's `execute` returned, or records
    the point failed when its process died without returning."""

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([__name__])   # imported once by the server: each point forks in milliseconds
        self.receive, send = context.Pipe(duplex=False)
        self.child = context.Process(target=_point_main, args=(OmegaConf.to_container(cfg, resolve=True), send))
        self.child.start()
        send.close()

    def wait(self) -> dict:
        try:
            self.child.join()
        except KeyboardInterrupt:
            self.child.join(INTERRUPT_GRACE_S)   # let it record its run as interrupted
            raise
        try:
            if self.receive.poll():          # also true at end of file, when the child died before sending
                return self.receive.recv()
        except EOFError:
            pass
        return self._record_death()

    def _record_death(self) -> dict:
        reason = describe_exit(self.child.exitcode)
        run_id = tracking.recorded_run(point_folder(self.cfg))
        if run_id is not None:
            tracking.record_dead_point(self.cfg.tracking.uri, run_id, f"point process died: {reason}")
        print(f"{point_name(self.cfg)}: failed, its process died ({reason})" + (f" (run {run_id})" if run_id else ""),
              file=sys.stderr)
        return {"status": "failed", "metric": math.nan}


def _point_main(container: dict, send) -> None:
    """The point process: run the point, send back what it returned."""
    try:
        send.send(execute(OmegaConf.create(container), multirun=True))
    except KeyboardInterrupt:
        raise SystemExit(130) from None


def describe_exit(code: int | None) -> str:
    """A process exit code in words: signals by name (SIGKILL is also what the out-of-memory killer sends)."""
    if code is not None and code < 0:
        name = signal.Signals(-code).name
        return f"{name}: killed, or out of memory" if name == "SIGKILL" else name
    return f"exit code {code}"
