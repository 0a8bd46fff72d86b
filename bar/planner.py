"""What to do with one sweep point, decided in one place: the sweeper asks before submitting (skip, dry run) and the
job asks again before running (skip, resume, lock), from the same config and the same signature.

    plan_point(cfg, skip_done=..., done=None) -> Plan
        action: run        start the point (fresh_start: clear old training checkpoints first)
                resume     continue the MLflow run (and checkpoint) a killed or requeued job left RUNNING
                skip       already finished or infeasible in this experiment (status), or held by another job now
                infeasible its estimated training memory exceeds generator.memory_budget_gb: log it, train nothing
A point is its config signature (bar.config.point_signature); its folder outputs/points/<experiment>/<signature>/
keeps what outlives a job: the MLflow run id (run.json), a lock held while a job runs it, training checkpoints."""

from __future__ import annotations

import fcntl
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig

from bar import tracking
from bar.build import build_generator
from bar.config import point_name, point_signature
from bar.distributed import resolve_device
from bar.memory import estimate_train_memory
from bar.validate import validate_config


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
    memory_gb: float | None = None


def point_folder(cfg: DictConfig, signature: str | None = None) -> Path:
    return Path(str(cfg.paths.outputs)) / "points" / str(cfg.experiment) / (signature or point_signature(cfg))


def memory_estimate_gb(cfg: DictConfig) -> float | None:
    """Estimated peak memory of one generator training step (parameters, AdamW state, activations, head logits), on
    the meta device: a 2^32-way softmax is sized without being allocated. None when the point trains no generator."""
    if cfg.stage != "all":
        return None
    with torch.device("meta"):
        model = build_generator(cfg)
    bf16 = resolve_device(cfg.device).type == "cuda" and cfg.generator.train.bf16
    return estimate_train_memory(model, cfg.generator.train.batch_size, bytes_per_act=2 if bf16 else 4) / 2 ** 30


def try_lock(folder: Path):
    """An exclusive, non-blocking lock on the point (held while a job runs it); None if another job holds it."""
    folder.mkdir(parents=True, exist_ok=True)
    handle = open(folder / ".lock", "w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        return None
    return handle


def _held(folder: Path) -> bool:
    if not (folder / ".lock").exists():
        return False
    handle = try_lock(folder)
    if handle is None:
        return True
    handle.close()
    return False


def recorded_run(folder: Path) -> str | None:
    record = folder / "run.json"
    return json.loads(record.read_text()).get("run_id") if record.is_file() else None


def record_run(folder: Path, run_id: str, signature: str, experiment: str, name: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "run.json").write_text(json.dumps({"run_id": run_id, "signature": signature, "experiment": experiment,
                                                 "name": name}))


def plan_point(cfg: DictConfig, *, skip_done: bool, done: dict | None = None) -> Plan:
    """Validate the point (one-line UserError), then decide. `done` ({signature: earlier run}, from
    tracking.done_points) saves a store query per point when the sweeper plans many."""
    validate_config(cfg)
    sig = point_signature(cfg)
    plan = Plan(point_name(cfg), sig, point_folder(cfg, sig), "run")
    uri = cfg.tracking.uri
    if skip_done:
        earlier = (done if done is not None else tracking.done_points(uri, cfg.experiment, signature=sig)).get(sig)
        if earlier is not None:
            return _skip(plan, earlier["status"], f"already {earlier['status']} in run {earlier['run_id']} "
                                                  "(force=true re-runs it)", earlier["run_id"], earlier["metric"])
    if _held(plan.folder):
        return _skip(plan, "held", f"another job is running it now (lock {plan.folder / '.lock'})")
    previous = recorded_run(plan.folder)
    state = tracking.run_state(uri, previous) if previous else None
    if state is not None and state[1] == "running" and not cfg.force:
        plan.action, plan.run_id, plan.why = "resume", previous, f"continues run {previous}"
    else:
        plan.fresh_start = cfg.force or (state is not None and state[1] in tracking.DONE_STATUSES)
    plan.memory_gb = memory_estimate_gb(cfg)
    budget = cfg.generator.memory_budget_gb
    if plan.memory_gb is not None and plan.memory_gb > budget:
        plan.action = "infeasible"
        plan.why = f"estimated training memory {plan.memory_gb:.3g} GB exceeds generator.memory_budget_gb={budget}"
    return plan


def _skip(plan: Plan, status: str, why: str, run_id: str | None = None, metric: float = math.nan) -> Plan:
    plan.action, plan.status, plan.why, plan.run_id, plan.metric = "skip", status, why, run_id, metric
    return plan
