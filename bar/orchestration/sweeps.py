"""Sweeps: expand a sweep file into points (bar.orchestration.sweep_points), plan every point before anything runs,
record the infeasible ones, launch the rest.

A sweep file gives `hydra.sweeper.params` (a Cartesian grid, as in Hydra's basic sweeper) and/or
`hydra.sweeper.grids` (a list of grids whose points are concatenated), e.g. discrete bits and continuous channels:

    hydra:
      sweeper:
        grids:
          - {tokenizer: fsq, tokenizer.bits: "2,4,8"}
          - {tokenizer: ae, tokenizer.channels: "1,2,4"}

Every point is composed and planned (bar.orchestration.planner: validated, skipped when already done, held or
infeasible) before the first job is submitted; a bad point is one line naming it. `dry_run=true` prints the plan
(and each point's resource plan: bar.orchestration.resources) and submits nothing; a launcher that limits its jobs
(SLURM's time chain, mem_gb) refuses, in one line, points that cannot finish within the chain or need more memory.
Infeasible points are recorded here through tracking alone (no job). The points left run through the configured
Hydra launcher (launcher=local: bar.orchestration.launching; local_parallel, slurm:
hydra-submitit-launcher's stock ones) in batches of `hydra.sweeper.max_batch_size` (at least 1; -1 or null: the
whole sweep at once; anything else is refused before any point is planned), under one MLflow parent run per
launch."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Sequence

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from bar import UserError
from bar.core.paths import sqlite_path
from bar.data.cache import is_locked, try_lock
from bar.orchestration import tracking
from bar.orchestration.submitit_logs import quiet_sacct_polling
from bar.orchestration.config import describe_config_error, is_config_error, point_name
from bar.orchestration.cost import point_hours, sweep_hours
from bar.orchestration.planner import Plan, plan_point, point_folder, record_infeasible
from bar.orchestration.planner import try_lock as try_point_lock
from bar.orchestration.resources import node_memory_gib, price_points, refusal, resource_lines, time_chain
from bar.orchestration.rules import check_value
from bar.orchestration.sampling_plan import sampling_plan
from bar.orchestration.sweep_notes import LaunchNotes
from bar.orchestration.sweep_points import expand_points
from bar.orchestration.validate import validate_config

log = logging.getLogger("bar")

# Keys that point_name already shows (head, bits or channels, patch size).
_NAMED_KEYS = {"tokenizer", "head", "tokenizer.bits", "tokenizer.channels", "model.patch_size", "sweep", "model"}


def run_sweep(sweeper, arguments: Sequence[str]):
    """Expand, plan every point, then print the plan (dry run) or launch the points left in batches."""
    cfg = sweeper.config
    try:
        check_value("hydra.sweeper.max_batch_size", sweeper.max_batch_size)
    except UserError as err:
        _fail(str(err))
    grids, common = [dict(g) for g in (sweeper.grids or [])], dict(sweeper.params or {})
    parser = OverridesParser.create(config_loader=sweeper.hydra_context.config_loader)
    try:
        points = expand_points(parser, common, grids, arguments)
    except UserError as err:
        _fail(str(err))
    configs = [_compose_point(sweeper, point) for point in points]
    world, here = planning_world_size(cfg), cfg.launcher.name != "slurm"
    warnings = {}
    for point, point_cfg in zip(points, configs):   # every point valid before the store is even opened
        try:
            warnings[id(point_cfg)] = validate_config(point_cfg, here, world)
        except UserError as err:
            _fail(f"sweep point [{' '.join(point)}]: {err}")
    try:
        tracking.check_store(cfg.tracking.uri)
        done = {} if cfg.force else _done_points(cfg.tracking.uri, cfg.experiment)
        plans = [plan_point(c, skip_done=not cfg.force, done=done, world_size=world, runs_here=here,
                            warnings=warnings[id(c)]) for c in configs]
    except UserError as err:
        _fail(str(err))
    varying = _varying_keys(grids, common)
    labels = [point_label(c, p, varying) for c, p in zip(configs, points)]
    if cfg.dry_run:
        _print_plan(cfg, points, configs, plans, labels)
        return []
    _refuse_unfit(cfg, configs, plans, labels)
    return _launch(sweeper, cfg, points, plans, labels, configs)


def _refuse_unfit(cfg: DictConfig, configs: list, plans: list[Plan], labels: list[str]) -> None:
    """A launcher that limits its jobs (a time limit per job, mem_gb: submitit's): every point to run is priced
    (bar.orchestration.resources), and the launch refused in one line, before anything is submitted, when a point
    cannot finish within the time chain or needs more host memory than mem_gb."""
    if time_chain(cfg) is None and node_memory_gib(cfg) is None:
        return
    try:
        price_points(cfg, configs, plans, planning_world_size(cfg))
    except UserError as err:
        _fail(str(err))
    problem = refusal(cfg, plans, labels)
    if problem:
        _fail(problem)


def _compose_point(sweeper, point: list[str]) -> DictConfig:
    try:
        return sweeper.hydra_context.config_loader.load_sweep_config(master_config=sweeper.config,
                                                                      sweep_overrides=list(point))
    except Exception as err:
        if is_config_error(err):
            _fail(f"sweep point [{' '.join(point)}]: {describe_config_error(err)}")
        raise


def _launch(sweeper, cfg: DictConfig, points, plans: list[Plan], labels: list[str], configs: list):
    todo = [i for i, plan in enumerate(plans) if plan.action != "skip"]
    skipped = len(points) - len(todo)
    if skipped:
        print(f"sweep {cfg.experiment}: {skipped} of {len(points)} points already done, skipped "
              "(force=true re-runs them)", file=sys.stderr)
    uri = cfg.tracking.uri
    if not todo:
        print(f"sweep {cfg.experiment}: 0 finished, 0 infeasible, 0 failed, {skipped} already done: nothing to run "
              f"(MLflow: {uri})", file=sys.stderr)
        return []
    parent, alive = _open_launch(cfg, len(todo))
    notes = LaunchNotes(cfg, parent, labels, plans)
    notes.update({})   # the experiment's and the launch's descriptions (bar.orchestration.sweep_notes)

    def job_overrides(i: int) -> list[str]:
        return list(points[i]) + [f"tracking.parent_run_id={parent}", f"point_label='{labels[i]}'"]

    counts, total = {"finished": 0, "infeasible": 0, "failed": 0}, len(todo)
    returns, interrupted = [], False
    try:
        infeasible = [i for i in todo if plans[i].action == "infeasible"]
        for i in infeasible:          # recorded here: nothing runs, so no job is launched (nor queued) for them
            status = _record_infeasible(_job_config(sweeper, job_overrides(i)), plans[i])
            counts[status] = counts.get(status, 0) + 1
        if infeasible:
            _progress(cfg, counts, total, skipped, notes)
        todo = [i for i in todo if plans[i].action != "infeasible"]
        jobs = [job_overrides(i) for i in todo]
        batch_size = sweeper.max_batch_size if (sweeper.max_batch_size or 0) > 0 else max(1, len(jobs))   # -1, null
        for start in range(0, len(jobs), batch_size):
            batch = [job + [f"launcher.submitted_at={time.time():.3f}"] for job in jobs[start:start + batch_size]]
            results = _launch_batch(sweeper, batch, start, [configs[i] for i in todo[start:start + batch_size]])
            for status in results:
                counts[status] = counts.get(status, 0) + 1
            returns.append(results)
            _progress(cfg, counts, total, skipped, notes)
    except KeyboardInterrupt:
        interrupted = True
        print(f"sweep {cfg.experiment}: interrupted; launch the same command again to continue its unfinished points",
              file=sys.stderr)
        raise SystemExit(130) from None
    finally:
        notes.finish(counts, interrupted)
        tracking.end_parent_run(uri, parent, counts, interrupted)
        if alive is not None:
            alive.close()
    skipped += counts.pop("skipped", 0)
    print(f"sweep {cfg.experiment}: {counts['finished']} finished, {counts['infeasible']} infeasible, "
          f"{counts['failed']} failed" + (f", {skipped} already done" if skipped else "") + f" (MLflow: {uri})",
          file=sys.stderr)
    notes.draw_figures(counts)
    if counts["failed"]:
        raise SystemExit(1)
    return returns


def _open_launch(cfg: DictConfig, num_points: int):
    """Close the launches of this sweep left open by drivers that stopped, then open this launch's parent run and hold
    its lock (while this driver runs: a later launch can tell). Returns (parent run id, lock)."""
    closed = tracking.close_stale_parents(cfg.tracking.uri, cfg.experiment,
                                          lambda run_id: is_locked(_launch_lock(cfg, run_id)))
    if closed:
        print(f"sweep {cfg.experiment}: closed {len(closed)} launch(es) left open by a driver that stopped",
              file=sys.stderr)
    parent = tracking.start_parent_run(cfg.tracking.uri, cfg.experiment, cfg.profile.name, num_points)
    return parent, try_lock(_launch_lock(cfg, parent))


def _record_infeasible(point_cfg: DictConfig, plan: Plan) -> str:
    """An infeasible point's run, written by this driver through tracking alone under the point's lock: "infeasible",
    or "skipped" when another job holds the point."""
    lock = try_point_lock(plan.folder)
    if lock is None:
        return "skipped"
    try:
        record_infeasible(point_cfg, plan)
    finally:
        lock.close()
    return "infeasible"


def _job_config(sweeper, job: list[str]) -> DictConfig:
    """The config a launched job would get for these overrides (Hydra's own node removed, as its jobs see it)."""
    cfg = _compose_point(sweeper, job)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def _launch_lock(cfg: DictConfig, parent_run_id: str) -> Path:
    return Path(str(cfg.paths.outputs)) / "launches" / f"{parent_run_id}.lock"


def _progress(cfg: DictConfig, counts: dict, total: int, skipped: int, notes: LaunchNotes) -> None:
    """The sweep's count so far, on stderr and in the launch's description."""
    notes.update(counts)
    done = sum(counts.values())
    print(f"sweep {cfg.experiment}: {done}/{total} points done ({counts.get('finished', 0)} finished, "
          f"{counts.get('infeasible', 0)} infeasible, {counts.get('failed', 0)} failed"
          + (f", {counts['skipped']} skipped" if counts.get("skipped") else "") + f"), {total - done} left"
          + (f"; {skipped} were already done" if skipped else ""), file=sys.stderr)


def _launch_batch(sweeper, batch: list[list[str]], first_index: int, configs: list) -> list[str]:
    """Statuses of one batch of jobs. A job that died outside the task function (killed, out of memory) makes the
    stock submitit launchers raise for the whole batch: each point is then looked up in the store instead, and a
    point whose run was left RUNNING with no process holding it is recorded failed."""
    quiet_sacct_polling()
    try:
        results = sweeper.launcher.launch(batch, initial_job_idx=first_index)
    except Exception as err:
        log.error("a job of this batch died outside its task (%s)",
                  str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__)
        return [_status_after_death(point_cfg) for point_cfg in configs]
    statuses = []
    for result in results:
        try:
            statuses.append(result.return_value["status"])
        except Exception as err:  # the task raised past its own handling
            log.error("job failed: %s", err)
            statuses.append("failed")
    return statuses


def _status_after_death(point_cfg: DictConfig) -> str:
    folder = point_folder(point_cfg)
    run_id = tracking.recorded_run(folder)
    state = tracking.run_state(point_cfg.tracking.uri, run_id) if run_id else None
    if state is not None and state[1] in tracking.DONE_STATUSES:
        return state[1]
    if run_id and not is_locked(folder / ".lock"):
        tracking.record_dead_point(point_cfg.tracking.uri, run_id, "point process died outside its task")
    return "failed"


def planning_world_size(cfg: DictConfig) -> int:
    """Processes a point will run on: the submitit launchers' nodes x tasks per node (one per GPU); 1 otherwise."""
    launcher = cfg.hydra.launcher if "hydra" in cfg else {}
    if "tasks_per_node" not in launcher:
        return 1
    return int(launcher.get("nodes") or 1) * int(launcher.get("tasks_per_node") or 1)


def _print_plan(cfg: DictConfig, points, configs, plans: list[Plan], labels: list[str]) -> None:
    """Each point (micro-batch, accumulation, memory per device, GPU-hours; the sampling batch and its memory per
    device), infeasible ones apart, then the totals with each distinct tokenizer counted once
    (bar.orchestration.cost), then each point's resource plan against the launcher's limits
    (bar.orchestration.resources)."""
    priced = price_points(cfg, configs, plans, planning_world_size(cfg))
    rows, infeasible = [], []
    for point_cfg, plan, label, cost in zip(configs, plans, labels, priced):
        mem = plan.memory
        if plan.action == "skip":
            rows.append(f"  {label:<28} {plan.signature}  done ({plan.status})")
            continue
        if plan.action == "infeasible":
            assert mem is not None, "only a memory plan makes a point infeasible"
            infeasible.append(f"  {label:<28} {plan.signature}  {mem.est_gb_per_gpu:.4g} GiB per device: "
                              f"{mem.reason}")
            continue
        assert cost is not None, "price_points prices every point to run"
        what = "sampling" if point_cfg.stage == "sample" else "generator"
        rows.append(f"  {label:<28} {plan.signature}  {_shape(point_cfg, mem):<46} {what} "
                    f"~{point_hours(cost, point_cfg):.3g} GPU-h" + _split_note(point_cfg))
    costs = [c for c in priced if c is not None]
    cached = {c.tokenizer_key for c in costs if (Path(cfg.paths.cache) / "tokenizer" / c.tokenizer_key).is_dir()}
    hours = sweep_hours(costs, cfg, cached)
    done = sum(p.action == "skip" for p in plans)
    print(f"sweep {cfg.experiment}: {len(points)} points, {done} already done, {len(infeasible)} infeasible, "
          f"~{hours['total']:.3g} GPU-hours to run (launcher: {cfg.launcher.name}; {cfg.launcher.gpu_tflops:g} TFLOP/s "
          f"x utilization {cfg.launcher.utilization:g}, sampling {cfg.launcher.sample_utilization:g}; dry run, nothing "
          "submitted)")
    print("\n".join(rows))
    if infeasible:
        print("infeasible (not run, not counted):\n" + "\n".join(infeasible))
    print(f"GPU-hours: {hours['distinct_tokenizers']} distinct tokenizer(s) {hours['tokenizers']:.3g} + generator "
          f"training {hours['generator_training']:.3g} + sampling {hours['sampling']:.3g} = {hours['total']:.3g}")
    print("\n".join(resource_lines(cfg, plans, labels)))
    for warning in sorted({w for p in plans for w in p.warnings}):
        print(f"warning: the points will fail until this is fixed: {warning}")


def _shape(cfg: DictConfig, mem) -> str:
    """The per-device plan: training's micro-batch and memory, or (stage=sample) the sampling batch and memory."""
    if mem is not None:
        return (f"micro {mem.micro_batch} x accum {mem.accum_steps} x {mem.world_size} dev"
                + (" +ckpt" if mem.checkpointing else "") + f", {mem.est_gb_per_gpu:.3g} GiB/dev")
    if cfg.stage != "sample":
        return "-"
    sampling = sampling_plan(cfg).memory
    assert sampling is not None, "stage=sample plans its sampling memory"
    fits = "" if sampling.feasible else ": not even that fits"
    split = f" ({sampling.requested} does not fit)" if sampling.split else ""
    return f"sample batch {sampling.batch_size}{split}, {sampling.est_gb_per_gpu:.3g} GiB/dev{fits}"


def _split_note(cfg: DictConfig) -> str:
    """Training points: the sampling batch per device and its memory (and the batch asked for, when it does not
    fit)."""
    sampling = sampling_plan(cfg).memory if cfg.stage == "all" else None
    if sampling is None:
        return ""
    split = f" ({sampling.requested} does not fit)" if sampling.split else ""
    return f"; sample batch {sampling.batch_size}{split}, {sampling.est_gb_per_gpu:.3g} GiB/dev"


def _varying_keys(grids: Sequence[dict], common: dict) -> set[str]:
    keys = set(common)
    for grid in grids:
        keys |= set(grid)
    return {k.lstrip("+~") for k in keys} - _NAMED_KEYS


def point_label(point_cfg: DictConfig, overrides: Sequence[str], varying: set[str]) -> str:
    """Run name saying what varies: the point's name plus the swept values it does not already show."""
    extra = []
    for override in overrides:
        key, _, value = override.lstrip("+~").partition("=")
        if key in varying:
            extra.append(f"{key.rsplit('.', 1)[-1]}={_shown_value(point_cfg, key, value)}")
    return "-".join([point_name(point_cfg), *extra])


def _shown_value(point_cfg: DictConfig, key: str, raw: str) -> str:
    """A swept value as a run name shows it: resolved (`${...}` as its value), a file path as its file's stem, so
    that names stay short and carry no '/'."""
    try:
        value = OmegaConf.select(point_cfg, key, default=raw)
    except OmegaConfBaseException:      # an interpolation that does not resolve: validation names it
        value = raw
    text = str(value).replace(chr(39), "")
    return (Path(text).stem or text).replace("/", "_") if "/" in text else text


def _done_points(uri: str, experiment: str) -> dict:
    """Signatures of the points already finished in this experiment (a store not created yet has none: planning
    never creates it)."""
    database = sqlite_path(uri)
    if database is not None and not database.is_file():
        return {}
    return tracking.done_points(uri, experiment)


def _fail(message: str):
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


