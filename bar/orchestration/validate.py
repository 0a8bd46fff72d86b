"""Everything about a point that can be checked before any work: one-line `UserError`s naming the key, the value and
what is allowed. Called by the planner, so the sweeper checks every point before submitting anything and a single run
fails before it trains. (Types and unknown keys are checked earlier, at composition, by bar/orchestration/schema.py.)

The rules of single settings are tables in bar.orchestration.rules (ranges, and when a setting is read at all); the
file inputs are opened by bar.orchestration.input_files; what is left here relates settings to each other, to the data
and to this machine."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationKeyError

from bar import UserError
from bar.core.files import folder_problem
from bar.data.cache import entry_path
from bar.data.datasets import EMBEDDED_DATASETS, check_image_folder, validate_data_config
from bar.model.generator import BARGenerator
from bar.orchestration import input_files
from bar.orchestration.build import build_generator, sampling_schedule
from bar.orchestration.config import tokenizer_signature
from bar.orchestration.data_sizes import folder_absent, planned_split_size
from bar.orchestration.rules import check_ranges, check_uses, needs_inception, trains_tokenizer
from bar.tokenizers.losses.parts import LossWeights, needed_weight_keys
from bar.tokenizers.losses.weights import check_weight_files
from bar.tokenizers.tokenizer import stride, validate_tokenizer_config

log = logging.getLogger("bar")
_warned: set[str] = set()        # each ignored setting is reported once per process (a sweep checks every point)


def validate_config(cfg: DictConfig, runs_here: bool = True, world_size: int = 1) -> list[str]:
    """Raise a one-line UserError for what cannot work, and log one warning line per setting this point ignores.
    `runs_here`: the point runs on this machine (not on a cluster node), so its device can be checked. Returns
    warnings: in a dry run, files needed only once the point runs (weights of frozen networks, Inception weights, an
    image folder not on this machine: bar.orchestration.data_sizes prices its stated size) are reported instead of
    raised, so the plan can still be shown."""
    _check_interpolations(cfg)
    check_ranges(cfg)
    _check_device(cfg, runs_here)
    for line in check_uses(cfg):
        _warn_once(line)
    missing_data = _check_data_here(cfg)
    validate_tokenizer_config(cfg.tokenizer)
    _check_tiling(cfg)
    _check_recipe(cfg)
    _check_batches(cfg, world_size)
    _check_outputs(cfg)
    model = check_generator_config(cfg) if cfg.stage in ("all", "sample") else None
    _check_inputs(cfg, model)
    problems = missing_data      # every missing file named at once, not one per rerun
    for check in (_check_reference_file, _check_inception_file, _check_weight_files):
        try:
            check(cfg)
        except UserError as err:
            problems.append(str(err))
    if problems and not cfg.dry_run:
        raise UserError("; ".join(problems))
    return problems


def _check_inputs(cfg: DictConfig, model) -> None:
    """The files the point starts from: the tokenizer to load, stage=sample's generator checkpoint and what decodes
    its samples."""
    if cfg.tokenizer.checkpoint:
        input_files.check_tokenizer_checkpoint(cfg)
    if cfg.stage == "sample":
        input_files.check_generator_checkpoint(cfg, model)
        _check_sample_decoder(cfg)


def _check_sample_decoder(cfg: DictConfig) -> None:
    """stage=sample decodes with tokenizer.checkpoint, or with the tokenizer this project trained for the config (in
    the cache); without either it writes tokens only, which the ADM protocol cannot score."""
    cached = entry_path(cfg.paths.cache, "tokenizer", tokenizer_signature(cfg)) / "tokenizer.pt"
    if cfg.tokenizer.checkpoint or cached.is_file():
        return
    if cfg.eval.protocol == "adm":
        raise UserError("eval.protocol=adm scores decoded samples and there is no tokenizer to decode them: no "
                        f"tokenizer.checkpoint, and none trained for this config in {cached.parent.parent}: pass "
                        "tokenizer.checkpoint=PATH, or train it first (stage=tokenizer, the same settings)")
    _warn_once("stage=sample without tokenizer.checkpoint, and no tokenizer trained for this config: the samples are "
               "written as tokens only (pass tokenizer.checkpoint=PATH to decode them)")


def _warn_once(line: str) -> None:
    if line not in _warned:
        _warned.add(line)
        log.warning(line)


def _check_interpolations(cfg: DictConfig) -> None:
    """A `${...}` that names a missing key (e.g. a release checkpoint for a preset that has none) fails here, by name,
    instead of as a traceback wherever it is first read."""
    try:
        for key in cfg:
            if key == "hydra":      # Hydra's own node holds values known only inside a job
                continue
            node = cfg[key]
            if OmegaConf.is_config(node):
                OmegaConf.to_container(node, resolve=True)
    except InterpolationKeyError as err:
        raise UserError(f"{err.full_key}: {str(err).splitlines()[0]} (e.g. sweep=release_eval has checkpoints for "
                        "profile=paper's presets only)") from None


def _check_device(cfg: DictConfig, runs_here: bool) -> None:
    device = str(cfg.device)
    if device != "auto" and not re.fullmatch(r"cpu|cuda(:\d+)?|mps", device):
        raise UserError(f"device={device!r} is not a device: use auto, cpu, cuda or cuda:N")
    if runs_here and device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device={device} but this machine has no usable CUDA GPU: use device=cpu (or device=auto)")


def _check_data_here(cfg: DictConfig) -> list[str]:
    """_check_data; in a dry run, an image folder that is not on this machine is a warning (returned)."""
    try:
        _check_data(cfg)
    except UserError as err:
        if not (cfg.dry_run and (folder_absent(cfg, "train") or folder_absent(cfg, "val"))):
            raise
        return [str(err)]
    return []


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
    if cfg.profile.name == "paper" and not cfg.data.val_root:
        raise UserError("profile=paper needs data.val_root=DIR (e.g. /data/imagenet/val, the same class folders): rFID "
                        "is scored on the validation split, and data.root's would decode 1.28M training images")
    classes = _check_folder(Path(str(cfg.data.root)), "data.root", cfg.data.num_classes)
    if cfg.data.val_root:
        val_classes = _check_folder(Path(str(cfg.data.val_root)), "data.val_root", cfg.data.num_classes)
        if val_classes != classes:
            other = next(name for name in val_classes if name not in classes)
            raise UserError(f"data.val_root: class folder {other} of {cfg.data.val_root} is not one of data.root's "
                            "(labels come from the sorted folder names): give both the same class folders")


def _check_folder(root: Path, key: str, num_classes: int) -> tuple[str, ...]:
    """Every class folder holds images, and there are data.num_classes of them; returns their names."""
    classes = check_image_folder(root, key)
    if len(classes) != num_classes:
        raise UserError(f"{key}: {root} has {len(classes)} class folder(s) but data.num_classes={num_classes}: set "
                        f"data.num_classes={len(classes)}")
    return classes


def _check_recipe(cfg: DictConfig) -> None:
    """The tokenizer recipe's parts fit the architecture (their weight files: _check_weight_files)."""
    tok = cfg.tokenizer
    if cfg.stage == "sample" or tok.checkpoint:
        return                                   # nothing is trained
    weights = LossWeights.from_node(tok.loss)
    if weights.distillation > 0 and tok.arch != "release":
        raise UserError(f"tokenizer.loss.distillation={weights.distillation} needs the release's architecture "
                        "(tokenizer.arch=release: its frozen SigLIP2 supplies the targets)")


def _check_weight_files(cfg: DictConfig) -> None:
    """The weight files of the frozen networks the tokenizer recipe's parts use (and SigLIP2's, which initialises the
    release architecture's encoder): all present (every missing one named in one line), then loading into their
    networks. SigLIP2 is required at tokenizer.size=full, the only size the release has files for (a random tower
    there would train the paper's tokenizer, and distil it, from noise); tokenizer.size=tiny, the CPU stand-in, may
    start from a random one, with a warning."""
    if not trains_tokenizer(cfg):
        return
    tok = cfg.tokenizer
    loss_keys = needed_weight_keys(LossWeights.from_node(tok.loss))
    siglip = tok.arch == "release" and tok.size == "full"
    check_weight_files(tok.weights, loss_keys + (["siglip2"] if siglip else []))
    if loss_keys:
        input_files.check_frozen_networks(cfg)
    if tok.arch == "release" and tok.weights.siglip2:
        input_files.check_siglip2(cfg)
    elif tok.arch == "release":
        _warn_once(f"tokenizer.weights.siglip2 is unset: this tokenizer.size={tok.size} tokenizer starts its SigLIP2 "
                   "encoder (and its distillation target) from random weights")


def _check_tiling(cfg: DictConfig) -> None:
    """The tokenizer must tile the image: resolution divisible by its stride."""
    tok = cfg.tokenizer
    step = stride(tok)
    what = f"2^tokenizer.num_down = {step}" if tok.arch == "conv" else f"tokenizer.patch = {step}"
    if cfg.data.resolution % step or cfg.data.resolution < step:
        raise UserError(f"data.resolution={cfg.data.resolution} is not a multiple of the tokenizer's stride ({what}): "
                        f"use a resolution divisible by {step}")


def _check_batches(cfg: DictConfig, world_size: int) -> None:
    """Global batches must fit the training split (and divide over the ranks)."""
    if cfg.data.name == "imagefolder" and cfg.stage == "sample":
        return
    n = planned_split_size(cfg, "train")
    keys = ["tokenizer.train.batch_size"]
    keys += ["eval.classifier.batch_size"] if cfg.eval.extractor == "classifier" else []   # else none is trained
    keys += ["generator.train.batch_size"] if cfg.stage == "all" else []
    for key in keys:
        batch = OmegaConf.select(cfg, key)
        if batch > n:
            raise UserError(f"{key}={batch} is larger than the training split ({n} images): use at most {n}")
    for key in ("tokenizer.train.batch_size", "generator.train.batch_size"):
        if OmegaConf.select(cfg, key) % world_size:
            raise UserError(f"{key}={OmegaConf.select(cfg, key)} does not divide over {world_size} processes")


def _check_outputs(cfg: DictConfig) -> None:
    """Every folder a point writes must be a writable folder, or creatable in one: the outputs folder, the cache and
    the outputs' own sub-folders (one that is a file, or read-only, would fail mid-run). Creates nothing."""
    outputs = Path(str(cfg.paths.outputs)).expanduser()
    folders = {"paths.outputs": outputs, "paths.cache": Path(str(cfg.paths.cache)).expanduser()}
    written = ("runs", "multirun", "points", "checkpoints", "samples", "mlartifacts")    # what points write there
    folders |= {f"paths.outputs/{name}": outputs / name for name in written}
    for key, folder in folders.items():
        problem = folder_problem(folder)
        if problem:
            hint = "BAR_OUTPUTS=DIR" if key != "paths.cache" else "paths.cache=DIR (or BAR_OUTPUTS=DIR)"
            raise UserError(f"outputs folder {folder} ({key}) cannot be used: {problem}: choose another with {hint}")


def _check_reference_file(cfg: DictConfig) -> None:
    """The ADM reference batch, which the ADM protocol scores samples against."""
    if cfg.eval.protocol == "adm" and cfg.stage != "tokenizer":
        input_files.check_reference(cfg)


def _check_inception_file(cfg: DictConfig) -> None:
    if needs_inception(cfg):
        input_files.check_inception_weights(cfg)


def check_generator_config(cfg: DictConfig) -> BARGenerator:
    """Build the model on the meta device and check the sampling schedule: one-line UserErrors, no compute. Returns
    the model (meta)."""
    with torch.device("meta"):
        model = build_generator(cfg)
    schedule = {k: v for k, v in sampling_schedule(cfg, model).items() if v is not None}
    model.head.check_schedule(**schedule)
    return model
