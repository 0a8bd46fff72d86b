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
from typing import Sequence

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from bar import UserError
from bar.config import point_name, validate_config
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
    if cfg.dry_run:
        print(f"sweep {cfg.experiment}: {len(points)} points (dry run, nothing submitted)")
        for point_cfg, point in zip(configs, points):
            print(f"  {point_label(point_cfg, point, _varying_keys(grids, dict(sweeper.params or {}))):<36} "
                  f"{' '.join(point)}")
        return []

    uri = cfg.tracking.uri
    parent = tracking.start_parent_run(uri, cfg.experiment, cfg.profile.name, len(points))
    varying = _varying_keys(grids, dict(sweeper.params or {}))
    points = [list(p) + [f"tracking.parent_run_id={parent}", f"point_label='{point_label(c, p, varying)}'"]
              for p, c in zip(points, configs)]
    batch_size = sweeper.max_batch_size or len(points)
    returns, counts, job_idx = [], {"finished": 0, "infeasible": 0, "failed": 0}, 0
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
    summary = (f"sweep {cfg.experiment}: {counts['finished']} finished, {counts['infeasible']} infeasible, "
               f"{counts['failed']} failed (MLflow: {uri})")
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


def _fail(message: str):
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)
