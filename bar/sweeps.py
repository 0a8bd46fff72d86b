"""Sweep expansion and launch: a union of Cartesian grids, every point validated before anything runs.

A sweep file gives `hydra.sweeper.params` (a Cartesian grid, as in Hydra's basic sweeper) and/or
`hydra.sweeper.grids` (a list of grids whose points are concatenated), e.g. discrete bits and continuous channels:

    hydra:
      sweeper:
        grids:
          - {tokenizer: fsq, tokenizer.bits: "2,4,8"}
          - {tokenizer: ae, tokenizer.channels: "1,2,4"}
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Sequence

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig

from bar import UserError
from bar.config import point_name, point_signature, validate_config
from bar import tracking

log = logging.getLogger("bar")


def expand_points(parser: OverridesParser, common: dict, grids: Sequence[dict], arguments: Sequence[str]) -> list[list[str]]:
    """Override lists, one per point: for each grid, the product of (common params, grid params, command line);
    command-line arguments win over the file's values for the same key. Duplicate points are dropped."""
    points, seen = [], set()
    for grid in grids or [{}]:
        merged = {**{str(k): v for k, v in (common or {}).items()}, **{str(k): v for k, v in grid.items()}}
        overrides = [f"{k}={v}" for k, v in merged.items()] + list(arguments)
        for point in BasicSweeper.split_arguments(parser.parse_overrides(overrides), None)[0]:
            key = tuple(sorted(point))
            if key not in seen:
                seen.add(key)
                points.append(point)
    return points


def run_sweep(sweeper, arguments: Sequence[str]):
    """Expand, validate every point, open the launch's parent run, launch in batches, close the parent run."""
    cfg = sweeper.config
    parser = OverridesParser.create(config_loader=sweeper.hydra_context.config_loader)
    grids = [dict(g) for g in (sweeper.grids or [])]
    points = expand_points(parser, dict(sweeper.params or {}), grids, arguments)
    loader = sweeper.hydra_context.config_loader
    configs = []
    for point in points:
        point_cfg = loader.load_sweep_config(master_config=cfg, sweep_overrides=list(point))
        try:
            validate_config(point_cfg)
        except UserError as err:
            _fail(f"sweep point [{' '.join(point)}]: {err}")
        configs.append(point_cfg)
    uri = cfg.tracking.uri
    varying = _varying_keys(grids, dict(sweeper.params or {}))
    signatures = [_job_signature(c) for c in configs]
    done = {} if cfg.force else _done_points(uri, cfg.experiment, cfg.dry_run)
    if cfg.dry_run:
        hours = [0.0 if sig in done else estimate_gpu_hours(c) for c, sig in zip(configs, signatures)]
        print(f"sweep {cfg.experiment}: {len(points)} points, {sum(s in done for s in signatures)} already done, "
              f"~{sum(hours):.3g} GPU-hours to run (estimate; launcher: {_launcher_name(cfg)}; dry run, nothing "
              "submitted)")
        for point_cfg, point, sig, h in zip(configs, points, signatures, hours):
            state = f"done ({done[sig]['status']})" if sig in done else f"~{h:.2g} GPU-h"
            print(f"  {point_label(point_cfg, point, varying):<36} {sig}  {state:<18} {' '.join(point)}")
        return []

    todo = [i for i, sig in enumerate(signatures) if sig not in done]
    skipped = len(points) - len(todo)
    if skipped:
        print(f"sweep {cfg.experiment}: {skipped} of {len(points)} points already done, skipped "
              "(force=true re-runs them)", file=sys.stderr)
    counts = {"finished": 0, "infeasible": 0, "failed": 0}
    if not todo:
        print(f"sweep {cfg.experiment}: 0 finished, 0 infeasible, 0 failed, {skipped} already done: nothing to run "
              f"(MLflow: {uri})", file=sys.stderr)
        return []
    points, configs = [points[i] for i in todo], [configs[i] for i in todo]
    parent = tracking.start_parent_run(uri, cfg.experiment, cfg.profile.name, len(points))
    points = [list(p) + [f"tracking.parent_run_id={parent}", f"point_label='{point_label(c, p, varying)}'"]
              for p, c in zip(points, configs)]
    batch_size = sweeper.max_batch_size or len(points)
    returns, job_idx = [], 0
    try:
        for start in range(0, len(points), batch_size):
            batch = points[start:start + batch_size]
            results = sweeper.launcher.launch(batch, initial_job_idx=job_idx)
            job_idx += len(batch)
            for result in results:
                try:
                    status = result.return_value["status"]
                except Exception as err:  # a job that died outside the task function (e.g. killed)
                    log.error("job failed: %s", err)
                    status = "failed"
                counts[status] = counts.get(status, 0) + 1
            returns.append(results)
    finally:
        tracking.end_parent_run(uri, parent, counts)
    skipped += counts.pop("skipped", 0)
    summary = (f"sweep {cfg.experiment}: {counts['finished']} finished, {counts['infeasible']} infeasible, "
               f"{counts['failed']} failed" + (f", {skipped} already done" if skipped else "") + f" (MLflow: {uri})")
    print(summary, file=sys.stderr)
    if counts["failed"]:
        raise SystemExit(1)
    return returns


# Keys that point_name already shows (head, bits or channels, patch size).
_NAMED_KEYS = {"tokenizer", "head", "tokenizer.bits", "tokenizer.channels", "model.patch_size", "sweep"}


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
            extra.append(f"{key.rsplit('.', 1)[-1]}={value.replace(chr(39), '')}")
    return "-".join([point_name(point_cfg), *extra])


def _job_signature(point_cfg: DictConfig) -> str:
    """The signature the job will compute: of the config without its `hydra` node (as Hydra hands it to the task)."""
    import copy

    from omegaconf import open_dict, read_write

    task_cfg = copy.deepcopy(point_cfg)
    with read_write(task_cfg), open_dict(task_cfg):
        task_cfg.pop("hydra", None)
    return point_signature(task_cfg)


def _done_points(uri: str, experiment: str, dry_run: bool) -> dict:
    """Signatures of the points already finished in this experiment. A dry run never creates the store."""
    if dry_run and uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        return {}
    return tracking.done_points(uri, experiment)


def _launcher_name(cfg: DictConfig) -> str:
    launcher = cfg.get("launcher") or {}
    return str(launcher.get("name", "local"))


def estimate_gpu_hours(cfg: DictConfig) -> float:
    """Rough accelerator-hours of one point: training FLOPs ~ 6 * params * tokens per sample * samples seen, sampling
    ~ 2 * params * tokens per image * images (x2 with CFG), at `launcher.gpu_tflops` effective TFLOP/s (bf16, a
    realistic utilisation). Tokenizer training is counted the same way on its latent grid."""
    import torch

    from bar.tokenizer import Tokenizer, latent_shape

    launcher = cfg.get("launcher") or {}
    flops_per_s = float(launcher.get("gpu_tflops", 400)) * 1e12
    _, grid, _ = latent_shape(cfg.tokenizer, cfg.data.resolution)
    tokens = grid * grid
    flops = 0.0
    with torch.device("meta"):
        tok_params = sum(p.numel() for p in Tokenizer(cfg.tokenizer, cfg.data.in_channels,
                                                      cfg.data.resolution).parameters())
        tcfg = cfg.tokenizer.train
        # convolutions/attention touch every pixel, not only every token: scale by pixels per token
        flops += 6 * tok_params * (cfg.data.resolution ** 2) * tcfg.steps * tcfg.batch_size / max(1, tokens)
        if cfg.stage in ("all", "sample"):
            from bar.generator_stage import make_generator, settings

            model = make_generator(cfg)
            st = settings(cfg, model)
            params = sum(p.numel() for p in model.parameters())
            if cfg.stage == "all":
                flops += 6 * params * tokens * st.steps * st.batch_size
            passes = 2 if (st.cfg_scale or 1.0) != 1.0 else 1
            n = cfg.generator.sample.num_samples * (2 if cfg.generator.sample.nocfg else 1)
            flops += 2 * params * tokens * n * passes
    return flops / flops_per_s / 3600


def _fail(message: str):
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)
