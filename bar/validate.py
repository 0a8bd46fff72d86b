"""Everything about a point that can be checked before any work: one-line `UserError`s naming the key, the value and
what is allowed. Called by the planner, so the sweeper checks every point before submitting anything and a single run
fails before it trains."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from bar import UserError
from bar.build import build_generator, sampling_schedule
from bar.data import EMBEDDED_DATASETS, IMAGE_SUFFIXES, validate_data_config
from bar.tokenizer import validate_tokenizer_config

STAGES = ("tokenizer", "all", "sample")
EXTRACTORS = ("classifier", "inception")


def validate_config(cfg: DictConfig) -> list[str]:
    """Raise a one-line UserError for what cannot work. Returns warnings: in a dry run, files needed only once the
    point runs (Inception weights) are reported instead of raised, so the plan can still be shown."""
    warnings = []
    if cfg.stage not in STAGES:
        raise UserError(f"unknown stage {cfg.stage!r}: use {', '.join(STAGES)}")
    _check_data(cfg)
    validate_tokenizer_config(cfg.tokenizer)
    try:
        _check_eval(cfg)
    except UserError as err:
        if not cfg.dry_run:
            raise
        warnings.append(str(err))
    if cfg.stage == "sample" and not (cfg.checkpoint and Path(str(cfg.checkpoint)).expanduser().is_file()):
        raise UserError(f"stage=sample needs checkpoint=PATH to a generator checkpoint; {cfg.checkpoint!r} is not a file")
    if cfg.stage in ("all", "sample"):
        check_generator_config(cfg)
    return warnings


def _check_data(cfg: DictConfig) -> None:
    if cfg.data.name in EMBEDDED_DATASETS:
        validate_data_config(cfg.data)
        return
    if cfg.data.name != "imagefolder":
        raise UserError(f"unknown data.name {cfg.data.name!r}: use {', '.join(sorted(EMBEDDED_DATASETS))} or "
                        "imagefolder")
    if cfg.stage == "sample":
        return
    if OmegaConf.is_missing(cfg.data, "root") or not cfg.data.root:
        raise UserError("data=imagefolder needs data.root=DIR (an ImageNet-style folder tree DIR/<class>/<image>)")
    root = Path(str(cfg.data.root))
    if not root.is_dir():
        raise UserError(f"data folder {root} does not exist: set data.root to an ImageNet-style folder tree")
    if not _has_class_images(root):
        raise UserError(f"data folder {root} holds no images in class sub-folders (expected {root}/<class>/*.JPEG)")


def _has_class_images(root: Path) -> bool:
    """Cheap check (stops at the first image) that `root/<class>/<image>` exists."""
    return any(f.suffix.lower() in IMAGE_SUFFIXES for d in root.iterdir() if d.is_dir() for f in d.iterdir())


def _check_eval(cfg: DictConfig) -> None:
    if cfg.eval.extractor not in EXTRACTORS:
        raise UserError(f"unknown eval.extractor {cfg.eval.extractor!r}: use {' or '.join(EXTRACTORS)}")
    if cfg.eval.extractor == "inception" and cfg.stage != "sample":
        weights = cfg.eval.inception_weights
        if not weights or not Path(os.path.expanduser(str(weights))).is_file():
            raise UserError(f"Inception weights not found at {weights!r}: download pt_inception-2015-12-05 "
                            "(torch-fidelity's inception-v3-compat weights) and pass eval.inception_weights=PATH")


def check_generator_config(cfg: DictConfig) -> None:
    """Build the model on the meta device and check the sampling schedule: one-line UserErrors, no compute."""
    with torch.device("meta"):
        model = build_generator(cfg)
    schedule = {k: v for k, v in sampling_schedule(cfg, model).items() if v is not None}
    model.head.check_schedule(**schedule)
