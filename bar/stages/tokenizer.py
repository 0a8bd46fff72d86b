"""Tokenizer stages: train once per tokenizer signature (then reuse from the cache), reconstruct the validation set,
measure rFID."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torchvision.utils import save_image

from bar.build import build_tokenizer
from bar.cache import get_or_build
from bar.config import tokenizer_signature
from bar.data import TensorImages, build_dataset, images_only
from bar.tokenizer import Tokenizer, float_to_images, images_to_float
from bar.train import Recipe, infinite_batches, train


def load_data(cfg: DictConfig):
    """(train split, validation split) of the configured dataset."""
    return build_dataset(cfg.data, "train"), build_dataset(cfg.data, "val")


def _tokenizer_loss(tokenizer: Tokenizer, weights, images_uint8: torch.Tensor, device) -> torch.Tensor:
    x = images_to_float(images_uint8.to(device))
    recon, aux = tokenizer(x)
    return weights.l1 * (recon - x).abs().mean() + weights.l2 * (recon - x).pow(2).mean() + weights.kl * aux


def train_tokenizer(cfg: DictConfig, train_set, device: torch.device, folder: Path) -> None:
    torch.manual_seed(cfg.seed)
    tokenizer = build_tokenizer(cfg).to(device)
    t = cfg.tokenizer.train
    recipe = Recipe(steps=t.steps, lr=t.lr, min_lr=t.min_lr, warmup=t.warmup, weight_decay=t.weight_decay,
                    betas=tuple(t.betas))
    result = train(tokenizer, lambda batch, step: _tokenizer_loss(tokenizer, cfg.tokenizer.loss, batch[0], device),
                   infinite_batches(train_set, t.batch_size, cfg.seed), recipe)
    torch.save({"state_dict": tokenizer.state_dict(), "history": result.history,
                "train_img_per_s": result.samples_per_s, "first_step_at": result.first_step_at, "config": OmegaConf.to_container(cfg.tokenizer)},
               folder / "tokenizer.pt")


def obtain_tokenizer(cfg: DictConfig, train_set, device: torch.device) -> tuple[Tokenizer, dict, bool]:
    """The tokenizer for this config: trained once per signature, then reused. Returns (model, checkpoint, built)."""
    folder, built = get_or_build(cfg.paths.cache, "tokenizer", tokenizer_signature(cfg),
                                 lambda f: train_tokenizer(cfg, train_set, device, f))
    ckpt = torch.load(folder / "tokenizer.pt", map_location=device, weights_only=False)
    tokenizer = build_tokenizer(cfg).to(device)
    tokenizer.load_state_dict(ckpt["state_dict"])
    tokenizer.eval()
    ckpt["path"] = str(folder / "tokenizer.pt")
    return tokenizer, ckpt, built


def latent_metrics(cfg: DictConfig, tokenizer: Tokenizer) -> dict[str, float]:
    """The latent's size on the paper's axes: total bits, and bits per token (discrete) or channels (continuous)."""
    metrics = {"total_bits": tokenizer.total_bits, "grid_tokens": tokenizer.grid ** 2}
    if cfg.tokenizer.kind == "fsq":
        metrics.update(bits_per_token=cfg.tokenizer.bits, codebook_log2=cfg.tokenizer.bits)
    else:
        metrics.update(channels=cfg.tokenizer.channels)
    return metrics


@torch.no_grad()
def reconstruct(tokenizer: Tokenizer, dataset, device: torch.device, batch_size: int = 256):
    """(originals, reconstructions) of every image of `dataset`, both uint8 (N, C, H, W); each image decoded once."""
    images, labels = zip(*[dataset[i] for i in range(len(dataset))])
    images, labels = torch.stack(images), torch.tensor(labels)
    out = [float_to_images(tokenizer.decode(tokenizer.encode(images_to_float(images[i:i + batch_size].to(device)))))
           for i in range(0, len(images), batch_size)]
    return images, TensorImages(torch.cat(out).cpu(), labels, getattr(dataset, "num_classes", 0))


def reconstruction_metrics(evaluator, originals: torch.Tensor, recon: TensorImages, val_set) -> dict[str, float]:
    return {"rfid": evaluator.compare(images_only(recon), images_only(val_set), "val")["fid"],
            "recon_mse": float(((recon.images.float() - originals.float()) / 255).pow(2).mean())}


def save_pairs_grid(originals: torch.Tensor, recons: torch.Tensor, path: Path, n: int = 32) -> None:
    """Rows alternate originals and reconstructions, upscaled so small images stay visible."""
    n = min(n, len(originals))
    pairs = torch.stack([originals[:n], recons[:n]], 1).flatten(0, 1).float() / 255
    if pairs.shape[-1] < 64:
        pairs = F.interpolate(pairs, scale_factor=64 // pairs.shape[-1], mode="nearest")
    save_image(pairs, path, nrow=16, padding=2)
