"""Everything about a point that can be checked before any work: one-line `UserError`s naming the key, the value and
what is allowed. Called by the planner, so the sweeper checks every point before submitting anything and a single run
fails before it trains. (Types and unknown keys are checked earlier, at composition, by bar/orchestration/schema.py.)"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationKeyError

from bar import UserError
from bar.core.files import read_generator_checkpoint
from bar.data.datasets import EMBEDDED_DATASETS, IMAGE_SUFFIXES, folder_summary, split_size, validate_data_config
from bar.model.release_keys import convert_official_state_dict
from bar.orchestration.build import build_generator, sampling_schedule
from bar.orchestration.config import resolved_dict
from bar.tokenizers.losses.combined import LossWeights, needed_weight_keys
from bar.tokenizers.losses.weights import check_weight_files
from bar.tokenizers.tokenizer import stride, validate_tokenizer_config

STAGES = ("tokenizer", "all", "sample")
EXTRACTORS = ("classifier", "inception")
PROTOCOLS = ("fidelity", "adm")
TEMPERATURE_MEANINGS = ("start", "mean")
CLASSIFIER_FEATURES = ("penultimate", "random_multiscale")
# counts that must be at least 1, and values that must not be negative
AT_LEAST_ONE = ("data.resolution", "data.num_classes", "tokenizer.train.steps", "tokenizer.train.batch_size",
                "model.dim", "model.depth", "model.heads", "model.head_width", "model.head_depth", "model.patch_size",
                "model.class_repeat", "generator.train.steps", "generator.train.batch_size",
                "generator.sample.num_samples", "generator.sample.batch_size", "eval.batch_size",
                "eval.classifier.steps", "eval.classifier.batch_size", "launcher.keep_checkpoints")
NOT_NEGATIVE = ("generator.sample.cfg_scale", "generator.sample.temperature", "tokenizer.train.warmup",
                "generator.train.warmup", "generator.train.grad_clip", "generator.train.weight_decay",
                "tokenizer.train.weight_decay", "model.dropout", "model.attn_dropout", "model.label_dropout",
                "launcher.checkpoint_every", "eval.gfid_every", "eval.rfid_every")
INCEPTION_KEY = "Conv2d_1a_3x3.conv.weight"     # a tensor of torch-fidelity's inception-v3-compat weights


def validate_config(cfg: DictConfig, runs_here: bool = True, world_size: int = 1) -> list[str]:
    """Raise a one-line UserError for what cannot work. `runs_here`: the point runs on this machine (not on a
    cluster node), so its device can be checked. Returns warnings: in a dry run, files needed only once the point
    runs (Inception weights) are reported instead of raised, so the plan can still be shown."""
    _check_interpolations(cfg)
    _check_choices(cfg, runs_here)
    _check_ranges(cfg)
    _check_order_anneal(cfg)
    _check_data(cfg)
    validate_tokenizer_config(cfg.tokenizer)
    checkpoint = cfg.tokenizer.checkpoint
    if checkpoint and not Path(str(checkpoint)).expanduser().is_file():
        raise UserError(f"tokenizer.checkpoint={checkpoint} is not a file")
    _check_tiling(cfg)
    _check_recipe(cfg)
    _check_batches(cfg, world_size)
    _check_outputs(cfg)
    warnings = []
    for check in (_check_eval_files, _check_weight_files):
        try:
            check(cfg)
        except UserError as err:
            if not cfg.dry_run:
                raise
            warnings.append(str(err))
    if cfg.stage in ("all", "sample"):
        check_generator_config(cfg)
    if cfg.stage == "sample":
        check_generator_checkpoint(cfg)
    return warnings


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


def _check_choices(cfg: DictConfig, runs_here: bool) -> None:
    for key, allowed in (("stage", STAGES), ("eval.extractor", EXTRACTORS), ("eval.protocol", PROTOCOLS),
                         ("generator.sample.temperature_is", TEMPERATURE_MEANINGS),
                         ("eval.classifier.features", CLASSIFIER_FEATURES)):
        value = OmegaConf.select(cfg, key)
        if value not in allowed:
            raise UserError(f"{key}={value!r} is not one of {', '.join(allowed)}")
    device = str(cfg.device)
    if device != "auto" and not re.fullmatch(r"cpu|cuda(:\d+)?|mps", device):
        raise UserError(f"device={device!r} is not a device: use auto, cpu, cuda or cuda:N")
    if runs_here and device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device={device} but this machine has no usable CUDA GPU: use device=cpu (or device=auto)")


def _check_ranges(cfg: DictConfig) -> None:
    for key in AT_LEAST_ONE:
        value = OmegaConf.select(cfg, key)
        if value is not None and value < 1:
            raise UserError(f"{key}={value} must be at least 1")
    for key in NOT_NEGATIVE:
        value = OmegaConf.select(cfg, key)
        if value is not None and not value >= 0:
            raise UserError(f"{key}={value} must not be negative")
    t = cfg.generator.train
    if t.micro_batch_size is not None and t.micro_batch_size < 1:
        raise UserError(f"generator.train.micro_batch_size={t.micro_batch_size} must be at least 1 (or null)")
    if cfg.num_threads is not None and cfg.num_threads < 1:
        raise UserError(f"num_threads={cfg.num_threads} must be at least 1 (or null for torch's default)")


def _check_order_anneal(cfg: DictConfig) -> None:
    """generator.train.order_anneal: [start, end] fractions of generator.train.steps, 0 <= start <= end <= 1."""
    anneal = list(cfg.generator.train.order_anneal)
    if len(anneal) != 2 or not 0 <= anneal[0] <= anneal[1] <= 1:
        raise UserError(f"generator.train.order_anneal={anneal} must be two fractions of generator.train.steps, "
                        "0 <= start <= end <= 1 (e.g. [0.5,0.75]: random order until half way, raster from 3/4)")


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
    for key in ("root", "val_root"):
        if cfg.data[key]:
            _check_folder(Path(str(cfg.data[key])), f"data.{key}", cfg.data.num_classes)


def _check_folder(root: Path, key: str, num_classes: int) -> None:
    if not root.is_dir():
        raise UserError(f"{key}: data folder {root} does not exist: set {key} to an ImageNet-style folder tree")
    if not any(f.suffix.lower() in IMAGE_SUFFIXES for d in root.iterdir() if d.is_dir() for f in d.iterdir()):
        raise UserError(f"{key}: data folder {root} holds no images in class sub-folders (expected "
                        f"{root}/<class>/*.JPEG)")
    classes = len(folder_summary(str(root))[0])
    if classes != num_classes:
        raise UserError(f"{key}: {root} has {classes} class folder(s) but data.num_classes={num_classes}: set "
                        f"data.num_classes={classes}")


def _check_recipe(cfg: DictConfig) -> None:
    """The tokenizer recipe's parts fit the architecture, and the frozen networks they need are local files."""
    tok = cfg.tokenizer
    if cfg.stage == "sample" or tok.checkpoint:
        return                                   # nothing is trained
    weights = LossWeights.from_node(tok.loss)
    if weights.distillation > 0 and tok.arch != "release":
        raise UserError(f"tokenizer.loss.distillation={weights.distillation} needs the release's architecture "
                        "(tokenizer.arch=release: its frozen SigLIP2 supplies the targets)")


def _check_weight_files(cfg: DictConfig) -> None:
    """The local weight files of the frozen networks the tokenizer recipe's parts use."""
    tok = cfg.tokenizer
    if cfg.stage == "sample" or tok.checkpoint:
        return
    check_weight_files(tok.weights, needed_weight_keys(LossWeights.from_node(tok.loss)))
    siglip = tok.weights.siglip2
    if siglip and not Path(str(siglip)).expanduser().is_file():
        raise UserError(f"tokenizer.weights.siglip2={siglip} is not a file (a release tokenizer checkpoint whose "
                        "frozen SigLIP2 initialises the encoder)")


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
    n = split_size(cfg.data, "train")
    keys = ["tokenizer.train.batch_size", "eval.classifier.batch_size"]
    keys += ["generator.train.batch_size"] if cfg.stage == "all" else []
    for key in keys:
        batch = OmegaConf.select(cfg, key)
        if batch > n:
            raise UserError(f"{key}={batch} is larger than the training split ({n} images): use at most {n}")
    for key in ("tokenizer.train.batch_size", "generator.train.batch_size"):
        if OmegaConf.select(cfg, key) % world_size:
            raise UserError(f"{key}={OmegaConf.select(cfg, key)} does not divide over {world_size} processes")


def _check_outputs(cfg: DictConfig) -> None:
    """The outputs folder must be a writable folder (or creatable in one): checked without creating anything."""
    folder = Path(str(cfg.paths.outputs))
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise UserError(f"outputs folder {folder} (BAR_OUTPUTS or paths.outputs) cannot be created: {probe} is a file")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"outputs folder {folder} (BAR_OUTPUTS or paths.outputs) is not writable ({probe}): choose "
                        "another with BAR_OUTPUTS=DIR")


def _check_eval_files(cfg: DictConfig) -> None:
    """Files the evaluation needs: Inception weights (a real weights file), the ADM reference batch."""
    # stage=sample scores its samples only with the ADM protocol: without it, it needs no Inception weights
    needs_inception = cfg.eval.protocol == "adm" or (cfg.stage != "sample" and cfg.eval.extractor == "inception")
    if needs_inception:
        weights = cfg.eval.inception_weights
        path = Path(os.path.expanduser(str(weights))) if weights else None
        if path is None or not path.is_file():
            raise UserError(f"Inception weights not found at {weights!r}: download pt_inception-2015-12-05 "
                            "(torch-fidelity's inception-v3-compat weights) and pass eval.inception_weights=PATH")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as err:
            raise UserError(f"eval.inception_weights={path} is not a weights file ({type(err).__name__})") from None
        if not isinstance(state, dict) or INCEPTION_KEY not in state:
            raise UserError(f"eval.inception_weights={path} is not torch-fidelity's inception-v3-compat weights "
                            f"(no {INCEPTION_KEY})")
    if cfg.eval.protocol == "adm" and cfg.stage != "tokenizer":
        reference = cfg.eval.reference
        if not reference or not Path(os.path.expanduser(str(reference))).is_file():
            raise UserError(f"eval.protocol=adm needs eval.reference=PATH to the ADM reference batch "
                            f"(VIRTUAL_imagenet256_labeled.npz); {reference!r} is not a file")


def check_generator_config(cfg: DictConfig) -> None:
    """Build the model on the meta device and check the sampling schedule: one-line UserErrors, no compute."""
    with torch.device("meta"):
        model = build_generator(cfg)
    schedule = {k: v for k, v in sampling_schedule(cfg, model).items() if v is not None}
    model.head.check_schedule(**schedule)


def check_generator_checkpoint(cfg: DictConfig) -> None:
    """stage=sample: the checkpoint is readable (checksum), is a generator (not a tokenizer), and fits this config
    (preset sizes, head, bits or channels): whichever is wrong is named."""
    if not cfg.checkpoint or not Path(str(cfg.checkpoint)).expanduser().is_file():
        raise UserError(f"stage=sample needs checkpoint=PATH to a generator checkpoint; {cfg.checkpoint!r} is not a "
                        "file")
    path = Path(str(cfg.checkpoint)).expanduser()
    blob = read_generator_checkpoint(path)
    state = blob.get("state_dict", blob.get("model", blob)) if isinstance(blob, dict) else blob
    if isinstance(state, dict) and any(str(k).startswith(("encoder.", "decoder.", "quantize.")) for k in state):
        raise UserError(f"checkpoint {path} is a tokenizer checkpoint, not a generator: pass the generator's "
                        "checkpoint as checkpoint=PATH")
    if isinstance(blob, dict) and "config" in blob and "state_dict" in blob:
        _check_saved_config(path, blob["config"], cfg)
        return
    if not isinstance(state, dict):
        raise UserError(f"checkpoint {path} holds a {type(state).__name__}, not a state dict of a generator")
    with torch.device("meta"):
        model = build_generator(cfg)
    convert_official_state_dict(state, model)   # raises a UserError naming the first key or shape that does not fit


def _check_saved_config(path: Path, saved: dict, cfg: DictConfig) -> None:
    current = resolved_dict(cfg)
    keys = [("model", k) for k in ("preset", "dim", "depth", "heads", "patch_size", "head_width", "class_repeat")]
    size = "bits" if saved.get("tokenizer", {}).get("kind") == "fsq" else "channels"   # the other one is unused
    keys += [("head", "name"), ("tokenizer", "kind"), ("tokenizer", size), ("data", "num_classes")]
    for group, key in keys:
        was, now = saved.get(group, {}).get(key), current[group].get(key)
        if was != now:
            raise UserError(f"checkpoint {path} was trained with {group}.{key}={was}, this run has {now}: pass "
                            f"{group}.{key}={was} (or the checkpoint that matches)")
