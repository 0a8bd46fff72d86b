"""Generator stages: pretokenize the training set once per tokenizer, train the AR generator on the codes, measure
gFID / IS / precision / recall of its samples (made by bar.orchestration.stages.samples), save and load
checkpoints."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torchvision.utils import save_image

from bar.core import distributed
from bar.orchestration.build import AnyTokenizer, build_generator
from bar.data.cache import load_or_rebuild
from bar.core.files import read_generator_checkpoint, save_atomic
from bar.data.codes import CodesStore, pretokenize
from bar.orchestration.config import tokenizer_signature
from bar.data.loader import codes_loader
from bar.model.release_keys import load_official
from bar.training.optim import decays
from bar.training.loop import Checkpointing, ProgressHook, Recipe, TrainResult, train

if TYPE_CHECKING:   # not at run time: training needs none of the sampling and tracking stack (the GPU checks)
    from bar.orchestration.stages.samples import SampleShard


# ----------------------------------------------------------------------------------------------------- codes
def obtain_codes(cfg: DictConfig, tokenizer: AnyTokenizer, train_set, device) -> CodesStore:
    """The pretokenized training set (each image and its horizontal flip; packed bits or float16 latents, in
    memory-mapped shards), built once per tokenizer signature by all ranks of the job together, each encoding its
    slice; every rank then reads it without loading it."""
    store, _ = load_or_rebuild(
        cfg.paths.cache, "codes", tokenizer_signature(cfg),
        lambda f: pretokenize(tokenizer, train_set, f, rank=distributed.rank(), world_size=distributed.world_size(),
                              batch_size=cfg.eval.batch_size, num_workers=cfg.data.num_workers, device=device),
        CodesStore, together=True)
    return store


# ----------------------------------------------------------------------------------------------------- training
def generator_recipe(cfg: DictConfig, device: torch.device, accum_steps: int = 1) -> Recipe:
    t = cfg.generator.train
    bf16 = torch.bfloat16 if device.type == "cuda" and t.bf16 else None
    return Recipe(steps=t.steps, lr=t.lr, min_lr=t.end_lr, warmup=t.warmup, weight_decay=t.weight_decay,
                  betas=tuple(t.betas), grad_clip=t.grad_clip, log_every=10, autocast_dtype=bf16,
                  device_type=device.type, accum_steps=accum_steps, seed=cfg.seed,
                  decays=decays if t.decay_rule == "release" else None, compile=cfg.model.compile)


def train_generator(cfg: DictConfig, model, codes: CodesStore, device: torch.device, checkpoint_dir: Path,
                    accum_steps: int = 1, on_checkpoint=None, extra_hooks=(), ddp: bool | None = None) -> TrainResult:
    """Data-parallel over the ranks of torch.distributed (DDP: each rank trains on its part of every global batch,
    split into `accum_steps` micro-batches); each item is drawn as the image or its flip at random (the release's
    two views); resumes from `checkpoint_dir` and checkpoints into it. `ddp` True: DDP at world size 1 too (needs a
    process group; benchmarks/gpu/cluster_checks.py); None: with more than one rank."""
    world, rank = distributed.world_size(), distributed.rank()
    torch.manual_seed(cfg.seed + rank)     # per-rank streams for what draws from the global RNG (dropout)
    model.to(device)

    def loss_fn(module, batch, step, generator):
        x, y = batch
        x, y = x.to(device, non_blocking=True), y.to(device)
        # the random draws are made eagerly, outside the (possibly compiled) module: model.compile=true then traces
        # one deterministic graph that does not recompile as the order annealing moves (bar.model.generator)
        draws = model.training_draws(x.shape[0], step, device, generator)
        return module(x, y, draws=draws)

    batches = codes_loader(codes, cfg.generator.train.batch_size, seed=cfg.seed, rank=rank, world_size=world)
    hook = Checkpointing(checkpoint_dir, cfg.launcher.checkpoint_every, cfg.launcher.keep_checkpoints, on_checkpoint,
                         minutes=cfg.launcher.checkpoint_minutes)
    progress = ProgressHook("train generator", cfg.generator.train.steps, cfg.generator.train.batch_size)
    try:
        return train(model, loss_fn, batches, generator_recipe(cfg, device, accum_steps),
                     distributed=world > 1 if ddp is None else ddp, hooks=[*extra_hooks, hook, progress])
    finally:
        batches.close()


def weights_fingerprint(model) -> str:
    """Short hash of the parameters' bytes: equal on every rank when data-parallel training kept them in sync."""
    digest = hashlib.sha256()
    for tensor in model.state_dict().values():
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()
                      if tensor.numel() else b"")
    return digest.hexdigest()[:16]


def save_generator(model, cfg_container: dict, path: Path) -> Path:
    """The trained generator with the config that made it, written atomically with a checksum."""
    return save_atomic({"state_dict": model.state_dict(), "config": cfg_container}, path)


# ----------------------------------------------------------------------------------------------------- scoring
def generation_metrics(evaluator, guided: SampleShard, plain: SampleShard | None, reference) -> dict[str, float]:
    """gFID, IS, precision, recall (sFID with the ADM protocol) of the guided samples of all ranks (and gFID of the
    unguided ones) against `reference`; this rank holds its shards. On rank 0; an empty dict on the others."""
    scores = evaluator.compare(guided.images, reference, "train", isc=True, prc=True, items=guided.items)
    unguided = evaluator.compare(plain.images, reference, "train", items=plain.items) if plain is not None else None
    if scores is None:
        return {}
    metrics = {"gfid": scores["fid"], "inception_score": scores["inception_score"], "precision": scores["precision"],
               "recall": scores["recall"]}
    if "sfid" in scores:
        metrics["sfid"] = scores["sfid"]
    if unguided is not None:
        metrics["gfid_nocfg"] = unguided["fid"]
    return metrics


def save_sample_grid(images: torch.Tensor, labels: torch.Tensor, num_classes: int, path: Path,
                     per_class: int = 8) -> bool:
    """One row per class (first 10 classes), upscaled so small images stay visible. False when there is nothing."""
    classes = range(min(num_classes, 10))
    per_class = min([per_class] + [int((labels == c).sum()) for c in classes])
    if per_class == 0:
        return False
    grid = torch.cat([images[labels == c][:per_class] for c in classes]).float() / 255
    if grid.shape[-1] < 64:
        grid = F.interpolate(grid, scale_factor=64 // grid.shape[-1], mode="nearest")
    save_image(grid, path, nrow=per_class, padding=2)
    return True


def load_generator_checkpoint(cfg: DictConfig, path: str | Path, device: torch.device):
    """A generator from `path`: this project's checkpoint (state_dict + config), or a state dict of the official BAR
    release (mapped by bar.model.release_keys). Returns (model, is_official)."""
    blob = read_generator_checkpoint(path)
    model = build_generator(cfg)
    if isinstance(blob, dict) and "state_dict" in blob and "config" in blob:
        model.load_state_dict(blob["state_dict"])
        return model.to(device).eval(), False
    load_official(model, blob.get("model", blob) if isinstance(blob, dict) else blob)
    return model.to(device).eval(), True
