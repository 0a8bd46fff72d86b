"""Generator stages: pretokenize the training set once per tokenizer, train the AR generator on the codes, sample
with CFG (sharded over ranks), decode, measure gFID / IS / precision / recall; sampling from a saved checkpoint."""

from __future__ import annotations

import hashlib
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torchvision.utils import save_image

from bar import distributed
from bar.build import build_generator
from bar.cache import get_or_build
from bar.config import tokenizer_signature
from bar.data import TensorImages, images_only
from bar.official import load_official
from bar.sampling import generate
from bar.tokenizer import Tokenizer, float_to_images, images_to_float
from bar.train import Checkpointing, Recipe, TrainResult, infinite_batches, train


# ----------------------------------------------------------------------------------------------------- codes
@torch.no_grad()
def encode_dataset(tokenizer: Tokenizer, dataset, device: torch.device, batch_size: int = 256):
    """Every image and its horizontal flip as tokens: (2N, L, k|d) and labels (2N,)."""
    tokens, labels = [], []
    for start in range(0, len(dataset), batch_size):
        items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        images = images_to_float(torch.stack([x for x, _ in items]).to(device))
        y = torch.tensor([label for _, label in items])
        for view in (images, images.flip(-1)):
            tokens.append(tokenizer.encode(view).cpu())
            labels.append(y)
    return torch.cat(tokens), torch.cat(labels)


def obtain_codes(cfg: DictConfig, tokenizer: Tokenizer, train_set, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Pretokenized training set, cached once per tokenizer signature."""
    def build(folder: Path):
        tokens, labels = encode_dataset(tokenizer, train_set, device)
        torch.save({"tokens": tokens, "labels": labels}, folder / "codes.pt")

    folder, _ = get_or_build(cfg.paths.cache, "codes", tokenizer_signature(cfg), build)
    codes = torch.load(folder / "codes.pt", weights_only=True)
    return codes["tokens"], codes["labels"]


# ----------------------------------------------------------------------------------------------------- training
def generator_recipe(cfg: DictConfig, device: torch.device) -> Recipe:
    t = cfg.generator.train
    bf16 = torch.bfloat16 if device.type == "cuda" and t.bf16 else None
    return Recipe(steps=t.steps, lr=t.lr, min_lr=t.end_lr, warmup=t.warmup, weight_decay=t.weight_decay,
                  betas=tuple(t.betas), grad_clip=t.grad_clip, log_every=10, autocast_dtype=bf16,
                  device_type=device.type)


def train_generator(cfg: DictConfig, model, tokens: torch.Tensor, labels: torch.Tensor, device: torch.device,
                    checkpoint_dir: Path, on_checkpoint=None) -> TrainResult:
    """Data-parallel over the ranks of torch.distributed when there are several (each rank trains on its shard of
    every global batch, gradients averaged); resumes from `checkpoint_dir` and checkpoints into it."""
    world, rank = distributed.world_size(), distributed.rank()
    torch.manual_seed(cfg.seed + rank)     # per-rank random streams (masks, orders); rank 0 = the 1-process run
    model.to(device)
    step_model = torch.compile(model) if cfg.model.compile else model

    def loss_fn(batch, step):
        x, y = batch
        return step_model.training_loss(x.to(device, non_blocking=True), y.to(device), step)

    batches = infinite_batches((tokens, labels), cfg.generator.train.batch_size, cfg.seed, rank, world)
    hook = Checkpointing(checkpoint_dir, cfg.launcher.checkpoint_every, cfg.launcher.keep_checkpoints, on_checkpoint)
    return train(model, loss_fn, batches, generator_recipe(cfg, device), distributed=world > 1, hooks=[hook])


def weights_fingerprint(model) -> str:
    """Short hash of the parameters' bytes: equal on every rank when data-parallel training kept them in sync."""
    digest = hashlib.sha256()
    for tensor in model.state_dict().values():
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()
                      if tensor.numel() else b"")
    return digest.hexdigest()[:16]


def save_generator(model, cfg_container: dict, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": model.state_dict(), "config": cfg_container}, path)
    return path


# ----------------------------------------------------------------------------------------------------- sampling
def balanced_labels(num_samples: int, num_classes: int) -> torch.Tensor:
    """As in the paper's protocol: the same number of samples per class."""
    return torch.arange(num_samples) % num_classes


@torch.no_grad()
def sample_images(model, tokenizer: Tokenizer | None, labels: torch.Tensor, *, schedule: dict, temperature: float,
                  cfg_scale: float, batch_size: int, seed: int, kv_cache: bool,
                  device: torch.device) -> tuple[torch.Tensor, float]:
    """Generated uint8 images for `labels` and the throughput in images per second (tokens + decoding); with no
    tokenizer, the generated tokens and tokens per second. With several ranks each generates every world_size-th
    label (seed + rank) and all get the gathered results."""
    model.eval()
    world = distributed.world_size()
    mine = labels[distributed.shard_indices(len(labels))] if world > 1 else labels
    generator = torch.Generator(device=device).manual_seed(seed + distributed.rank())
    schedule = {k: v for k, v in schedule.items() if v is not None}
    images = []
    start = time.perf_counter()
    for i in range(0, len(mine), batch_size):
        tokens = generate(model, mine[i:i + batch_size].to(device), cfg_scale=cfg_scale, temperature=temperature,
                          kv_cache=kv_cache, generator=generator, **schedule)
        images.append((float_to_images(tokenizer.decode(tokens)) if tokenizer is not None else tokens).cpu())
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    out = torch.cat(images) if images else torch.empty(0)
    if world > 1:
        out = distributed.gather_shards(out, len(labels))
        seconds = max(distributed.all_gather_objects(seconds))
    return out, len(labels) / seconds if seconds else math.nan


def generation_metrics(evaluator, images: torch.Tensor, plain: torch.Tensor | None, labels: torch.Tensor,
                       reference, num_classes: int) -> dict[str, float]:
    """gFID, IS, precision, recall of the guided samples (and gFID of the unguided ones) against `reference`."""
    scores = evaluator.compare(images_only(TensorImages(images, labels, num_classes)), images_only(reference), "train",
                               isc=True, prc=True)
    metrics = {"gfid": scores["fid"], "inception_score": scores["inception_score"], "precision": scores["precision"],
               "recall": scores["recall"]}
    if plain is not None:
        metrics["gfid_nocfg"] = evaluator.compare(images_only(TensorImages(plain, labels, num_classes)),
                                                  images_only(reference), "train")["fid"]
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
    release (mapped by bar.official). Returns (model, is_official)."""
    blob = torch.load(path, map_location="cpu", weights_only=False)
    model = build_generator(cfg)
    if isinstance(blob, dict) and "state_dict" in blob and "config" in blob:
        model.load_state_dict(blob["state_dict"])
        return model.to(device).eval(), False
    load_official(model, blob.get("model", blob) if isinstance(blob, dict) else blob)
    return model.to(device).eval(), True
