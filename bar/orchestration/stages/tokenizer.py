"""Tokenizer stages: train once per tokenizer signature (all ranks of the job together, resumable), reuse from the
cache afterwards, reconstruct the validation set (each rank its shard), measure rFID (features gathered)."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Subset
from torchvision.utils import save_image

from bar.core import distributed
from bar.core.vocabulary import TOKENIZER_LOSS_PART
from bar.orchestration.build import AnyTokenizer, build_tokenizer, load_tokenizer_checkpoint
from bar.data.cache import load_or_rebuild, verified_entry, work_path
from bar.core.files import load_verified, save_atomic
from bar.orchestration.config import tokenizer_signature
from bar.data.datasets import build_dataset
from bar.data.loader import ResumableLoader, image_loader
from bar.data.views import train_view_loader
from bar.tokenizers.release import ReleaseTokenizer
from bar.data.images import float_to_images, images_to_float
from bar.training.ema import EMA, EMAHook
from bar.training.discriminator import DiscriminatorTrainer
from bar.tokenizers.losses.combined import TokenizerLoss, build_tokenizer_loss
from bar.training.tokenizer_hooks import CheckpointingWithExtras, DiscriminatorHook, Stateful, tokenizer_param_groups
from bar.training.loop import PeriodicEval, ProgressHook, Recipe, TrainHook, train
from bar.training.running_metrics import RunningMetrics


def load_data(cfg: DictConfig):
    """(train split, validation split) of the configured dataset."""
    return build_dataset(cfg.data, "train"), build_dataset(cfg.data, "val")


def training_loss_fn(cfg: DictConfig, loss: TokenizerLoss, device: torch.device,
                     metrics: RunningMetrics | None = None):
    """The training loss of one batch: images (augmented by the loader: `training_batches`) -> reconstruction -> the
    recipe's weighted parts (each also to `metrics`: `loss_parts`)."""
    distill = loss.weights.distillation > 0

    def loss_fn(module, batch, step, generator):
        x = images_to_float(batch[0].to(device, non_blocking=True))
        if distill:
            recon, aux, pred, target = module(x, with_features=True)
            total, parts = loss(x, recon, step, pred, target)
        else:
            recon, aux = module(x)
            total, parts = loss(x, recon, step)
        if metrics is not None:
            metrics.add(loss_parts(cfg, loss, parts, aux, step))
        return total + cfg.tokenizer.loss.kl * aux
    return loss_fn


def loss_parts(cfg: DictConfig, loss: TokenizerLoss, parts: dict[str, torch.Tensor], aux: torch.Tensor,
               step: int) -> dict[str, torch.Tensor]:
    """The parts the recipe turns on, unweighted, as tokenizer_loss_<part>: the GAN's from its start step, the KL
    where the autoencoder has one (a part that is off is a constant 0, not worth a curve)."""
    on = {name: value for name, value in parts.items()
          if getattr(loss.weights, name) > 0 and (name != "gan" or loss.gan_active(step))}
    tok = cfg.tokenizer
    if tok.kind == "ae" and tok.kl and tok.loss.kl > 0:
        on["kl"] = aux.detach()
    return {TOKENIZER_LOSS_PART + name: value for name, value in on.items()}


def tokenizer_recipe(cfg: DictConfig, device: torch.device) -> Recipe:
    t = cfg.tokenizer.train
    bf16 = torch.bfloat16 if device.type == "cuda" and t.bf16 else None
    return Recipe(steps=t.steps, lr=t.lr, min_lr=t.min_lr, warmup=t.warmup, weight_decay=t.weight_decay,
                  betas=tuple(t.betas), grad_clip=t.grad_clip, autocast_dtype=bf16, device_type=device.type,
                  seed=cfg.seed, schedule_steps=t.schedule_steps,
                  param_groups=lambda m: tokenizer_param_groups(m, t.lr, t.encoder_lr_mult, t.weight_decay))


def recipe_hooks(cfg: DictConfig, tokenizer, loss: TokenizerLoss, device, work: Path,
                 rfid_of: Callable[[AnyTokenizer], float | None] | None = None,
                 metrics: RunningMetrics | None = None) -> tuple[list[TrainHook], EMA | None, PeriodicEval | None]:
    """EMA, discriminator, periodic rFID (eval.rfid_every, with `rfid_of`), `metrics` (the loss parts' and the
    discriminator's) and checkpointing hooks of the recipe (what the config turns on); returns (hooks, ema, the
    periodic rFID hook)."""
    t = cfg.tokenizer.train
    hooks: list[TrainHook] = []
    extras: dict[str, Stateful] = {}       # hook states the checkpoints carry
    gan_start = cfg.tokenizer.loss.gan_start if loss.weights.gan > 0 else None
    ema = EMA(tokenizer, t.ema) if t.ema else None
    if ema is not None:
        ema_hook = EMAHook(ema, extra_update_from=gan_start)
        hooks.append(ema_hook)
        extras["ema"] = ema_hook
    if loss.discriminator is not None:
        assert gan_start is not None, "build_tokenizer_loss builds a discriminator only for a GAN weight > 0"
        d = cfg.tokenizer.discriminator
        trainer = DiscriminatorTrainer(loss.discriminator, start=gan_start, lr=d.lr, min_lr=d.min_lr,
                                       warmup=d.warmup, total=d.total, betas=tuple(d.betas),
                                       weight_decay=d.weight_decay, grad_clip=d.grad_clip,
                                       distributed=distributed.world_size() > 1)
        def images_of(batch) -> torch.Tensor:         # augmented by the loader, as for the G step
            return images_to_float(batch[0].to(device))
        d_hook = DiscriminatorHook(trainer, images_of, lambda model, x: model(x)[0], metrics=metrics)
        hooks.append(d_hook)
        extras["discriminator"] = d_hook
    periodic = None
    if cfg.eval.rfid_every and rfid_of is not None:
        def evaluate(model, step):
            with ema.applied(model) if ema is not None else nullcontext():   # the weights the run will keep
                return rfid_of(model)
        periodic = PeriodicEval(cfg.eval.rfid_every, t.steps, evaluate)
        hooks.append(periodic)
        extras["rfid"] = periodic
    if metrics is not None:                # after the hooks that add to it, before the checkpoint that saves it
        hooks.append(metrics)
        extras["metrics"] = metrics
    hooks.append(CheckpointingWithExtras(work / "ckpt", extras, cfg.launcher.checkpoint_every,
                                         cfg.launcher.keep_checkpoints, minutes=cfg.launcher.checkpoint_minutes))
    hooks.append(ProgressHook("train tokenizer", t.steps, t.batch_size))
    return hooks, ema, periodic


def training_batches(cfg: DictConfig, train_set) -> ResumableLoader:
    """This rank's part of every global batch: with tokenizer.train.augment the release's training view of each image
    (shorter side resized, random crop, flip: bar.data.views), else the dataset's images as they are."""
    t = cfg.tokenizer.train
    where = dict(seed=cfg.seed, rank=distributed.rank(), world_size=distributed.world_size(),
                 num_workers=cfg.data.num_workers)
    if t.augment:
        return train_view_loader(train_set, t.batch_size, cfg.data.resolution, **where)
    return image_loader(train_set, t.batch_size, flip=False, **where)


def new_tokenizer(cfg: DictConfig, device: torch.device):
    """The untrained tokenizer; the release's architecture starts from SigLIP2 weights when tokenizer.weights.siglip2
    names a release tokenizer checkpoint."""
    torch.manual_seed(cfg.seed)
    tokenizer = build_tokenizer(cfg)
    if isinstance(tokenizer, ReleaseTokenizer) and cfg.tokenizer.weights.siglip2:   # tokenizer.arch=release
        tokenizer.init_siglip(Path(str(cfg.tokenizer.weights.siglip2)).expanduser())
    return tokenizer.to(device)


def train_tokenizer(cfg: DictConfig, train_set, device: torch.device, folder: Path, work: Path,
                    rfid_of: Callable[[AnyTokenizer], float | None] | None = None) -> None:
    """The release's recipe (the parts the config turns on): every rank trains on its part of each global batch
    (DDP); checkpoints in `work` let the next job that builds this tokenizer resume; rank 0 writes the result (the
    EMA copy when there is one) into `folder`, with the rFID history when eval.rfid_every asks for one."""
    tokenizer = new_tokenizer(cfg, device)
    loss = build_tokenizer_loss(cfg.tokenizer.loss, cfg.tokenizer.weights).to(device)
    batches = training_batches(cfg, train_set)
    recipe = tokenizer_recipe(cfg, device)
    metrics = RunningMetrics(recipe)           # loss parts and discriminator statistics, at the loss's steps
    hooks, ema, periodic = recipe_hooks(cfg, tokenizer, loss, device, work, rfid_of, metrics)
    try:
        result = train(tokenizer, training_loss_fn(cfg, loss, device, metrics), batches, recipe,
                       distributed=distributed.world_size() > 1, hooks=hooks)
    finally:
        batches.close()
    if ema is not None:
        ema.copy_to(tokenizer)
    if distributed.is_main():
        save_atomic({"state_dict": tokenizer.state_dict(), "history": result.history,
                     "train_img_per_s": result.samples_per_s, "first_step_at": result.first_step_at,
                     "rfid_history": periodic.history if periodic is not None else [],
                     "metric_history": metrics.history,
                     "config": OmegaConf.to_container(cfg.tokenizer)}, folder / "tokenizer.pt")


def obtain_tokenizer(cfg: DictConfig, train_set, device: torch.device,
                     rfid_of: Callable[[AnyTokenizer], float | None] | None = None) -> tuple[AnyTokenizer, dict, bool]:
    """The tokenizer for this config: `tokenizer.checkpoint` when given (e.g. the release's), else trained once per
    signature and then reused. `rfid_of(tokenizer)` scores it during training when eval.rfid_every is set. Returns
    (model, checkpoint record, built now)."""
    if cfg.tokenizer.checkpoint:
        tokenizer = load_tokenizer_checkpoint(cfg).to(device).eval()
        return tokenizer, {"path": str(cfg.tokenizer.checkpoint), "history": []}, False
    sig = tokenizer_signature(cfg)
    work = work_path(cfg.paths.cache, "tokenizer", sig)
    def load(folder: Path) -> dict:
        ckpt = load_verified(folder / "tokenizer.pt", map_location=device)
        ckpt["path"] = str(folder / "tokenizer.pt")
        return ckpt

    ckpt, built = load_or_rebuild(cfg.paths.cache, "tokenizer", sig,
                                  lambda f: train_tokenizer(cfg, train_set, device, f, work, rfid_of), load,
                                  together=True)
    tokenizer = build_tokenizer(cfg).to(device)
    tokenizer.load_state_dict(ckpt["state_dict"])
    tokenizer.eval()
    return tokenizer, ckpt, built


def sampling_tokenizer(cfg: DictConfig, device: torch.device):
    """The tokenizer that decodes a checkpoint's samples, without training one: tokenizer.checkpoint (decoder only
    for the release's), else this project's cached tokenizer for the config, else None (tokens only). A cached
    tokenizer that fails its checksum is removed and reported (UserError): it cannot be trained here."""
    if cfg.tokenizer.checkpoint:
        return load_tokenizer_checkpoint(cfg, with_encoder=False).to(device).eval()
    entry = verified_entry(cfg.paths.cache, "tokenizer", tokenizer_signature(cfg))   # one that fails: a UserError
    if entry is None:
        return None
    tokenizer = build_tokenizer(cfg).to(device)
    tokenizer.load_state_dict(load_verified(entry / "tokenizer.pt", map_location=device)["state_dict"])
    return tokenizer.eval()


def latent_metrics(tokenizer: AnyTokenizer) -> dict[str, float]:
    """The latent's size facts the config does not hold: total bits (h * w * bits per token, or h * w * 16 * channels)
    and tokens in the grid. Bits per token (log2 C) and channels are the params tokenizer.bits / tokenizer.channels,
    logged once (CONVENTIONS.md)."""
    return {"total_bits": tokenizer.total_bits, "grid_tokens": tokenizer.grid ** 2}


@torch.no_grad()
def reconstruction_scores(tokenizer: AnyTokenizer, val_set, evaluator, device: torch.device, *, batch_size: int,
                          workers: int = 0, keep: int = 32) -> tuple[dict[str, float], torch.Tensor, torch.Tensor]:
    """rFID and mean squared error of the tokenizer's reconstructions of the validation set, streamed: each rank
    decodes its shard (items rank::world) batch by batch with `workers` loader workers and keeps only each batch's
    features and squared error, so no rank holds its share of the images (~160k at ImageNet scale). Returns (the
    metrics on rank 0, {} on the others; the first `keep` originals and reconstructions of this rank, uint8)."""
    shard = Subset(val_set, distributed.shard_indices(len(val_set)).tolist())
    features: list[dict[str, torch.Tensor]] = []
    squared, count = 0.0, 0
    kept: list[tuple[torch.Tensor, torch.Tensor]] = []
    for images, _ in DataLoader(shard, batch_size=batch_size, num_workers=workers):
        recon = float_to_images(tokenizer.decode(tokenizer.encode(images_to_float(images.to(device))))).cpu()
        features.append(evaluator.batch_features(recon))
        squared += float(((recon.float() - images.float()) / 255).pow(2).sum())
        count += images.numel()
        if sum(o.shape[0] for o, _ in kept) < keep:
            kept.append((images[:keep], recon[:keep]))
    totals = distributed.all_gather_objects((squared, count))
    scores = evaluator.score({k: torch.cat([f[k] for f in features]) for k in features[0]}, val_set, "val")
    metrics = {} if scores is None else {"rfid": scores["fid"],
                                         "recon_mse": sum(s for s, _ in totals) / sum(n for _, n in totals)}
    originals, recons = (torch.cat(part)[:keep] for part in zip(*kept))
    return metrics, originals, recons


def save_pairs_grid(originals: torch.Tensor, recons: torch.Tensor, path: Path, n: int = 32) -> None:
    """Rows alternate originals and reconstructions, upscaled so small images stay visible."""
    n = min(n, len(originals))
    pairs = torch.stack([originals[:n], recons[:n]], 1).flatten(0, 1).float() / 255
    if pairs.shape[-1] < 64:
        pairs = F.interpolate(pairs, scale_factor=64 // pairs.shape[-1], mode="nearest")
    save_image(pairs, path, nrow=16, padding=2)
