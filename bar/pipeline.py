"""The stages of one sweep point, in order: tokenizer (train or reuse) -> rFID -> [generator stages].

Each stage is a function with plain inputs and outputs; only `execute` talks to the tracking layer."""

from __future__ import annotations

import logging
import math
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from bar import UserError
from bar.cache import get_or_build
from bar.config import flatten, point_name, point_signature, tokenizer_signature, validate_config
from bar.data import TensorImages, build_dataset, images_only
from bar.evaluate import Evaluator
from bar.tokenizer import Tokenizer, float_to_images, images_to_float
from bar.tracking import PointRun
from bar.train import infinite_batches, resolve_device, train

log = logging.getLogger("bar")


# ----------------------------------------------------------------------------------------------------- tokenizer
def _tokenizer_loss(tokenizer: Tokenizer, weights, images_uint8: torch.Tensor, device) -> torch.Tensor:
    x = images_to_float(images_uint8.to(device))
    recon, aux = tokenizer(x)
    return weights.l1 * (recon - x).abs().mean() + weights.l2 * (recon - x).pow(2).mean() + weights.kl * aux


def train_tokenizer(cfg: DictConfig, train_set, device: torch.device, folder: Path) -> None:
    torch.manual_seed(cfg.seed)
    tokenizer = Tokenizer(cfg.tokenizer, cfg.data.in_channels, cfg.data.resolution).to(device)
    tcfg = cfg.tokenizer.train
    result = train(tokenizer, lambda batch, step: _tokenizer_loss(tokenizer, cfg.tokenizer.loss, batch[0], device),
                   infinite_batches(train_set, tcfg.batch_size, cfg.seed), steps=tcfg.steps, lr=tcfg.lr,
                   min_lr=tcfg.min_lr, warmup=tcfg.warmup, weight_decay=tcfg.weight_decay, betas=tcfg.betas)
    torch.save({"state_dict": tokenizer.state_dict(), "history": result.history,
                "train_img_per_s": result.samples_per_s, "config": OmegaConf.to_container(cfg.tokenizer)},
               folder / "tokenizer.pt")


def obtain_tokenizer(cfg: DictConfig, train_set, device: torch.device) -> tuple[Tokenizer, dict, bool]:
    """The tokenizer for this config: trained once per signature, then reused. Returns (model, checkpoint, built)."""
    folder, built = get_or_build(cfg.paths.cache, "tokenizer", tokenizer_signature(cfg),
                                 lambda f: train_tokenizer(cfg, train_set, device, f))
    ckpt = torch.load(folder / "tokenizer.pt", map_location=device, weights_only=False)
    tokenizer = Tokenizer(cfg.tokenizer, cfg.data.in_channels, cfg.data.resolution).to(device)
    tokenizer.load_state_dict(ckpt["state_dict"])
    tokenizer.eval()
    ckpt["path"] = str(folder / "tokenizer.pt")
    return tokenizer, ckpt, built


@torch.no_grad()
def reconstruct(tokenizer: Tokenizer, dataset, device: torch.device, batch_size: int = 256) -> TensorImages:
    images, labels = zip(*[dataset[i] for i in range(len(dataset))])
    images, labels = torch.stack(images), torch.tensor(labels)
    out = [float_to_images(tokenizer.decode(tokenizer.encode(images_to_float(images[i:i + batch_size].to(device)))))
           for i in range(0, len(images), batch_size)]
    return TensorImages(torch.cat(out).cpu(), labels, getattr(dataset, "num_classes", 0))


def save_pairs_grid(originals: torch.Tensor, recons: torch.Tensor, path: Path, n: int = 32) -> None:
    """Rows alternate originals and reconstructions, upscaled so small images stay visible."""
    from torchvision.utils import save_image

    n = min(n, len(originals))
    pairs = torch.stack([originals[:n], recons[:n]], 1).flatten(0, 1).float() / 255
    if pairs.shape[-1] < 64:
        pairs = F.interpolate(pairs, scale_factor=64 // pairs.shape[-1], mode="nearest")
    save_image(pairs, path, nrow=16, padding=2)


# ----------------------------------------------------------------------------------------------------- one point
def latent_metrics(cfg: DictConfig, tokenizer: Tokenizer) -> dict[str, float]:
    metrics = {"total_bits": tokenizer.total_bits, "grid_tokens": tokenizer.grid ** 2}
    if cfg.tokenizer.kind == "fsq":
        metrics.update(bits_per_token=cfg.tokenizer.bits, codebook_log2=cfg.tokenizer.bits)
    else:
        metrics.update(channels=cfg.tokenizer.channels)
    return metrics


def run_point(cfg: DictConfig, run: PointRun) -> dict[str, float]:
    """All stages of one point; logs through `run` and returns the headline metrics."""
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    if cfg.stage == "sample":
        from bar.generator_stage import run_sampling

        return run_sampling(cfg, device, run)
    train_set, val_set = build_dataset(cfg.data, "train"), build_dataset(cfg.data, "val")

    tokenizer, ckpt, built = obtain_tokenizer(cfg, train_set, device)
    metrics = latent_metrics(cfg, tokenizer)
    run.set_tags({"tokenizer_reused": str(not built), "tokenizer_signature": tokenizer_signature(cfg)})
    run.log_params({"tokenizer.checkpoint": ckpt["path"]})
    run.log_history("tokenizer_loss", ckpt["history"])
    if built:
        metrics["tokenizer_train_img_per_s"] = ckpt["train_img_per_s"]

    evaluator = Evaluator(cfg, train_set, device)
    run.set_tags({"fid_extractor": evaluator.tag})
    recon = reconstruct(tokenizer, val_set, device)
    metrics["rfid"] = evaluator.compare(images_only(recon), images_only(val_set), "val")["fid"]
    metrics["recon_mse"] = float(((recon.images.float() - torch.stack([val_set[i][0] for i in range(len(val_set))])
                                   .float()) / 255).pow(2).mean())
    run.log_metrics(metrics)
    with tempfile.TemporaryDirectory() as tmp:
        grid = Path(tmp) / "recon_grid.png"
        save_pairs_grid(torch.stack([val_set[i][0] for i in range(min(32, len(val_set)))]), recon.images, grid)
        run.log_artifact(grid)
    if cfg.stage == "all":
        from bar.generator_stage import run_generator

        metrics.update(run_generator(cfg, tokenizer, train_set, evaluator, device, run))
    return metrics


def execute(cfg: DictConfig, multirun: bool) -> dict:
    """Run one point inside its MLflow run. Returns {"status": finished | infeasible | failed, "metric": headline}
    (gFID, or rFID for tokenizer-only points; NaN when there is none).

    A user mistake is one line on stderr; any other error ends the run FAILED with the error tag, and in a sweep the
    remaining points go on."""
    try:
        validate_config(cfg)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2)
    name = point_name(cfg)
    tags = {"sweep": cfg.experiment, "signature": point_signature(cfg), "profile": cfg.profile.name}
    try:
        with PointRun(cfg.tracking.uri, cfg.experiment, name, tags, cfg.tracking.parent_run_id) as run:
            run.log_params(flatten(cfg))
            with tempfile.TemporaryDirectory() as tmp:
                (Path(tmp) / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
                run.log_artifact(Path(tmp) / "config.yaml")
            metrics = run_point(cfg, run)
        log.info("%s %s: %s", name, run.status, ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
        return {"status": run.status, "metric": float(metrics.get("gfid", metrics.get("rfid", math.nan)))}
    except UserError as err:  # found only at run time (e.g. a corrupt input): still one line
        print(f"error: {err}", file=sys.stderr)
        if not multirun:
            raise SystemExit(2)
    except Exception as err:
        if not multirun:
            raise
        log.exception("%s failed (recorded in MLflow as FAILED; the sweep goes on): %s", name, err)
    return {"status": "failed", "metric": math.nan}
