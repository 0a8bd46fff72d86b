"""Tokenizer stages: train once per tokenizer signature (all ranks of the job together, resumable), reuse from the
cache afterwards, reconstruct the validation set (each rank its shard), measure rFID (features gathered)."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torchvision.utils import save_image

from bar.core import distributed
from bar.orchestration.build import AnyTokenizer, build_tokenizer, load_tokenizer_checkpoint
from bar.data.cache import load_or_rebuild, verified_entry, work_path
from bar.core.files import load_verified, save_atomic
from bar.orchestration.config import tokenizer_signature
from bar.data.datasets import TensorImages, build_dataset
from bar.data.loader import image_loader
from bar.tokenizers.release import ReleaseTokenizer
from bar.data.images import float_to_images, images_to_float
from bar.training.ema import EMA, EMAHook
from bar.training.discriminator import DiscriminatorTrainer
from bar.tokenizers.losses.combined import TokenizerLoss, build_tokenizer_loss
from bar.training.tokenizer_hooks import CheckpointingWithExtras, DiscriminatorHook, Stateful, tokenizer_param_groups
from bar.tokenizers.augment import augment
from bar.training.loop import PeriodicEval, ProgressHook, Recipe, TrainHook, train


def load_data(cfg: DictConfig):
    """(train split, validation split) of the configured dataset."""
    return build_dataset(cfg.data, "train"), build_dataset(cfg.data, "val")


def training_loss_fn(cfg: DictConfig, loss: TokenizerLoss, device: torch.device):
    """The training loss of one batch: (augmented) images -> reconstruction -> the recipe's weighted parts."""
    resolution, augmenting = cfg.data.resolution, cfg.tokenizer.train.augment
    distill = loss.weights.distillation > 0

    def loss_fn(module, batch, step, generator):
        images = batch[0].to(device, non_blocking=True)
        x = augment(images, resolution, generator) if augmenting else images_to_float(images)
        if distill:
            recon, aux, pred, target = module(x, with_features=True)
            total, _ = loss(x, recon, step, pred, target)
        else:
            recon, aux = module(x)
            total, _ = loss(x, recon, step)
        return total + cfg.tokenizer.loss.kl * aux
    return loss_fn


def tokenizer_recipe(cfg: DictConfig, device: torch.device) -> Recipe:
    t = cfg.tokenizer.train
    bf16 = torch.bfloat16 if device.type == "cuda" and t.bf16 else None
    return Recipe(steps=t.steps, lr=t.lr, min_lr=t.min_lr, warmup=t.warmup, weight_decay=t.weight_decay,
                  betas=tuple(t.betas), grad_clip=t.grad_clip, autocast_dtype=bf16, device_type=device.type,
                  seed=cfg.seed, schedule_steps=t.schedule_steps,
                  param_groups=lambda m: tokenizer_param_groups(m, t.lr, t.encoder_lr_mult, t.weight_decay))


def recipe_hooks(cfg: DictConfig, tokenizer, loss: TokenizerLoss, device, work: Path,
                 rfid_of: Callable[[AnyTokenizer], float | None] | None = None
                 ) -> tuple[list[TrainHook], EMA | None, PeriodicEval | None]:
    """EMA, discriminator, periodic rFID (eval.rfid_every, with `rfid_of`) and checkpointing hooks of the recipe
    (what the config turns on); returns (hooks, ema, the periodic rFID hook)."""
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
        images_of = (lambda b: augment(b[0].to(device), cfg.data.resolution)) if t.augment else \
            (lambda b: images_to_float(b[0].to(device)))
        d_hook = DiscriminatorHook(trainer, images_of, lambda model, x: model(x)[0])
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
    hooks.append(CheckpointingWithExtras(work / "ckpt", extras, cfg.launcher.checkpoint_every,
                                         cfg.launcher.keep_checkpoints))
    hooks.append(ProgressHook("train tokenizer", t.steps, t.batch_size))
    return hooks, ema, periodic


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
    t = cfg.tokenizer.train
    batches = image_loader(train_set, t.batch_size, seed=cfg.seed, rank=distributed.rank(),
                           world_size=distributed.world_size(), num_workers=cfg.data.num_workers, flip=False)
    hooks, ema, periodic = recipe_hooks(cfg, tokenizer, loss, device, work, rfid_of)
    try:
        result = train(tokenizer, training_loss_fn(cfg, loss, device), batches, tokenizer_recipe(cfg, device),
                       distributed=distributed.world_size() > 1, hooks=hooks)
    finally:
        batches.close()
    if ema is not None:
        ema.copy_to(tokenizer)
    if distributed.is_main():
        save_atomic({"state_dict": tokenizer.state_dict(), "history": result.history,
                     "train_img_per_s": result.samples_per_s, "first_step_at": result.first_step_at,
                     "rfid_history": periodic.history if periodic is not None else [],
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
def reconstruct(tokenizer: AnyTokenizer, dataset, device: torch.device,
                batch_size: int = 256) -> tuple[torch.Tensor, TensorImages]:
    """(originals, reconstructions) of this rank's shard of `dataset` (items rank::world), both uint8 (n, C, H, W);
    each image decoded once."""
    indices = distributed.shard_indices(len(dataset)).tolist()
    items, item_labels = zip(*[dataset[i] for i in indices])
    images, labels = torch.stack(items), torch.tensor(item_labels)
    out = [float_to_images(tokenizer.decode(tokenizer.encode(images_to_float(images[i:i + batch_size].to(device)))))
           for i in range(0, len(images), batch_size)]
    return images, TensorImages(torch.cat(out).cpu(), labels, getattr(dataset, "num_classes", 0))


def reconstruction_metrics(evaluator, originals: torch.Tensor, recon: TensorImages, val_set) -> dict[str, float]:
    """rFID of the reconstructions of every rank against the validation set, and their mean squared error; on rank 0
    (an empty dict on the others)."""
    squared = distributed.all_gather_objects(
        (float(((recon.images.float() - originals.float()) / 255).pow(2).sum()), originals.numel()))
    scores = evaluator.compare(recon.images, val_set, "val")
    if scores is None:
        return {}
    return {"rfid": scores["fid"], "recon_mse": sum(s for s, _ in squared) / sum(n for _, n in squared)}


def save_pairs_grid(originals: torch.Tensor, recons: torch.Tensor, path: Path, n: int = 32) -> None:
    """Rows alternate originals and reconstructions, upscaled so small images stay visible."""
    n = min(n, len(originals))
    pairs = torch.stack([originals[:n], recons[:n]], 1).flatten(0, 1).float() / 255
    if pairs.shape[-1] < 64:
        pairs = F.interpolate(pairs, scale_factor=64 // pairs.shape[-1], mode="nearest")
    save_image(pairs, path, nrow=16, padding=2)
