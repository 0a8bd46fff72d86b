"""What to do with one sweep point, decided in one place: the sweeper asks before submitting (skip, dry run) and the
job asks again before running (skip, resume, lock), from the same config and the same signature.

    plan_point(cfg, skip_done=..., done=None) -> Plan
        action: run        start the point (fresh_start: clear old training checkpoints first)
                resume     continue the MLflow run (and checkpoint) a killed or requeued job left RUNNING
                skip       already finished or infeasible in this experiment (status), or held by another job now
                infeasible its estimated training memory exceeds generator.memory_budget_gb: nothing to run
    record_infeasible(cfg, plan)   an infeasible point's run, written through tracking alone
A point is its config signature (bar.orchestration.config.point_signature); its folder
outputs/points/<experiment>/<signature>/ keeps what outlives a job: the MLflow run id (run.json,
bar.orchestration.tracking.record_run), a lock held while a job runs it, training checkpoints."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from omegaconf import DictConfig, OmegaConf

from bar.orchestration import tracking
from bar.data.cache import is_locked
from bar.data.cache import try_lock as try_file_lock
from bar.orchestration.build import build_generator
from bar.orchestration.config import point_name, point_signature, run_params
from bar.core.distributed import resolve_device
from bar.orchestration.memory import HEADROOM, RESERVE_GB, MemoryPlan, plan_memory
from bar.core.paths import sqlite_path
from bar.orchestration.validate import validate_config

if TYPE_CHECKING:      # resources prices plans: it imports this module
    from bar.orchestration.resources import ResourcePlan


@dataclass
class Plan:
    name: str
    signature: str
    folder: Path
    action: str                   # run | resume | skip | infeasible
    why: str = ""
    run_id: str | None = None     # resume: the run to continue; skip: the run that finished it
    status: str | None = None     # skip: finished / infeasible (earlier), or held
    metric: float = math.nan      # skip: the earlier run's headline metric
    fresh_start: bool = False     # run: old checkpoints belong to an earlier, ended attempt
    memory: MemoryPlan | None = None   # the generator's training memory per device: micro-batch, accumulation, ...
    warnings: tuple[str, ...] = ()     # dry run: what will fail once the point runs (e.g. a missing weights file)
    resources: ResourcePlan | None = None   # the sweeper's: wall time per stage against the time chain, host memory,
                                            # checkpoints, disk (bar.orchestration.resources); None in the job

    @property
    def memory_gb(self) -> float | None:
        return self.memory.est_gb_per_gpu if self.memory is not None else None


def point_folder(cfg: DictConfig, signature: str | None = None) -> Path:
    return Path(str(cfg.paths.outputs)) / "points" / str(cfg.experiment) / (signature or point_signature(cfg))


def available_host_memory_gb() -> float:
    """Memory the kernel can still give processes (MemAvailable), in GiB."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 2 ** 20
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2 ** 30


def memory_budget_gb(cfg: DictConfig) -> float:
    """Per-device budget: generator.memory_budget_gb when set; else a GPU's memory (launcher.gpu_mem_gb) on GPUs and
    the host's available memory on CPU."""
    if cfg.generator.memory_budget_gb is not None:
        return float(cfg.generator.memory_budget_gb)
    if resolve_device(cfg.device).type == "cuda":
        return float(cfg.launcher.gpu_mem_gb)
    return available_host_memory_gb()


def memory_plan(cfg: DictConfig, world_size: int = 1) -> MemoryPlan | None:
    """The generator's training memory per device, on the meta device (a 2^32-way softmax is sized without being
    allocated): on GPUs the largest micro-batch that fits with gradient accumulation keeping the global batch, and
    activation checkpointing only if needed (bar.orchestration.memory.plan_memory); on CPU the whole per-rank batch at
    once unless generator.train.micro_batch_size says otherwise (no headroom reserved: the budget is what it says).
    None when the point trains no generator."""
    if cfg.stage != "all":
        return None
    with torch.device("meta"):
        model = build_generator(cfg)
    t = cfg.generator.train
    gpu = resolve_device(cfg.device).type == "cuda"
    micro = t.micro_batch_size or (None if gpu else t.batch_size // max(1, world_size))
    headroom, reserve_gb = (HEADROOM, RESERVE_GB) if gpu else (0.0, 0.0)
    return plan_memory(model, t.batch_size, world_size, memory_budget_gb(cfg), 2 if gpu and t.bf16 else 4,
                       micro_batch=micro, checkpointing=t.activation_checkpointing, compiled=cfg.model.compile,
                       headroom=headroom, reserve_gb=reserve_gb)


def try_lock(folder: Path):
    """The point's lock (held while a job runs it); None if another job holds it."""
    return try_file_lock(folder / ".lock")


def plan_point(cfg: DictConfig, *, skip_done: bool, done: dict | None = None, world_size: int = 1,
               runs_here: bool = True, warnings: list[str] | None = None) -> Plan:
    """Validate the point and its tracking store (one-line UserErrors), then decide. `done` ({signature: earlier run},
    from tracking.done_points) saves a store query per point when the sweeper plans many; `world_size` is the number
    of processes (GPUs) the point runs on; `runs_here` whether on this machine (then its device is checked too);
    `warnings` from an earlier validate_config skip validating again."""
    if warnings is None:
        warnings = validate_config(cfg, runs_here, world_size)
    tracking.check_store(cfg.tracking.uri)
    sig = point_signature(cfg)
    plan = Plan(point_name(cfg), sig, point_folder(cfg, sig), "run", warnings=tuple(warnings))
    uri = cfg.tracking.uri
    if skip_done:
        earlier = (done if done is not None else _done(uri, cfg.experiment, sig)).get(sig)
        if earlier is not None:
            return _skip(plan, earlier["status"], f"already {earlier['status']} in run {earlier['run_id']} "
                                                  "(force=true re-runs it)", earlier["run_id"], earlier["metric"])
    if is_locked(plan.folder / ".lock"):
        return _skip(plan, "held", f"another job is running it now (lock {plan.folder / '.lock'})")
    previous = tracking.recorded_run(plan.folder)
    state = tracking.run_state(uri, previous) if previous else None
    if state is not None and state[1] in tracking.RESUMABLE_STATUSES and not cfg.force:
        plan.action, plan.run_id, plan.why = "resume", previous, f"continues run {previous}"
    else:
        plan.fresh_start = cfg.force or (state is not None and state[1] in tracking.DONE_STATUSES)
    plan.memory = memory_plan(cfg, world_size)
    if plan.memory is not None and not plan.memory.feasible:
        plan.action = "infeasible"
        plan.why = f"estimated training memory {plan.memory.reason} (budget {memory_budget_gb(cfg):.3g} GiB per device)"
    return plan


def record_infeasible(cfg: DictConfig, plan: Plan) -> str:
    """The run of a point planned infeasible, written through tracking alone (nothing to run: no device, no stages)
    by whoever holds the point's lock. Returns its run id."""
    return tracking.record_infeasible_point(
        cfg.tracking.uri, cfg.experiment, point_name(cfg), folder=plan.folder,
        tags={"sweep": cfg.experiment, "signature": plan.signature, "profile": cfg.profile.name},
        params=run_params(cfg), config_yaml=OmegaConf.to_yaml(cfg, resolve=True), reason=plan.why,
        memory_gb=plan.memory_gb, parent_run_id=cfg.tracking.parent_run_id)


def _done(uri: str, experiment: str, signature: str) -> dict:
    """The finished run of this point, if any; a store not created yet has none (planning never creates it)."""
    database = sqlite_path(uri)
    if database is not None and not database.is_file():
        return {}
    return tracking.done_points(uri, experiment, signature=signature)


def _skip(plan: Plan, status: str, why: str, run_id: str | None = None, metric: float = math.nan) -> Plan:
    plan.action, plan.status, plan.why, plan.run_id, plan.metric = "skip", status, why, run_id, metric
    return plan
