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
def reconstruct(tokenizer: Tokenizer, dataset, device: torch.device, batch_size: int = 256):
    """(originals, reconstructions) of every image of `dataset`, both uint8 (N, C, H, W); each image decoded once."""
    images, labels = zip(*[dataset[i] for i in range(len(dataset))])
    images, labels = torch.stack(images), torch.tensor(labels)
    out = [float_to_images(tokenizer.decode(tokenizer.encode(images_to_float(images[i:i + batch_size].to(device)))))
           for i in range(0, len(images), batch_size)]
    return images, TensorImages(torch.cat(out).cpu(), labels, getattr(dataset, "num_classes", 0))


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
    if cfg.num_threads:
        # Small CPU models gain little from a second thread and lose 10x when another process holds a core.
        torch.set_num_threads(cfg.num_threads)
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
    originals, recon = reconstruct(tokenizer, val_set, device)
    metrics["rfid"] = evaluator.compare(images_only(recon), images_only(val_set), "val")["fid"]
    metrics["recon_mse"] = float(((recon.images.float() - originals.float()) / 255).pow(2).mean())
    run.log_metrics(metrics)
    with tempfile.TemporaryDirectory() as tmp:
        grid = Path(tmp) / "recon_grid.png"
        save_pairs_grid(originals, recon.images, grid)
        run.log_artifact(grid)
    if cfg.stage == "all":
        from bar.generator_stage import run_generator

        metrics.update(run_generator(cfg, tokenizer, train_set, evaluator, device, run))
    return metrics


def _try_lock(path: Path):
    """An exclusive, non-blocking lock held while a point runs (None if another job holds it)."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        return None
    return handle


def _plan(cfg: DictConfig, multirun: bool, sig: str, folder: Path) -> dict:
    """Rank 0: skip (finished before), resume (same MLflow run, killed or requeued), or start afresh."""
    import json

    from bar import tracking
    from bar.checkpoint import CheckpointDir

    uri = cfg.tracking.uri
    if multirun and not cfg.force:
        done = tracking.done_points(uri, cfg.experiment, signature=sig).get(sig)
        if done is not None:
            return {"skip": {"status": "skipped", "metric": float(done["metric"])},
                    "why": f"already {done['status']} in run {done['run_id']} (force=true re-runs it)"}
    record = folder / "run.json"
    previous = json.loads(record.read_text()) if record.is_file() else {}
    state = tracking.run_state(uri, previous["run_id"]) if previous.get("run_id") else None
    resume = None
    if state is not None and not cfg.force and state[1] == "running":
        resume = previous["run_id"]
    if cfg.force or (state is not None and state[1] in tracking.DONE_STATUSES):
        for sub in ("generator",):   # a re-run asked for: start training from scratch
            CheckpointDir(folder / sub).clear()
    return {"skip": None, "resume": resume}


def execute(cfg: DictConfig, multirun: bool) -> dict:
    """Run one point inside its MLflow run. Returns {"status": finished | infeasible | failed | skipped, "metric":
    headline} (gFID, or rFID for tokenizer-only points; NaN when there is none).

    Idempotent: a point's identity is its config signature, and its folder (bar.checkpoint.point_folder) keeps its
    MLflow run id and checkpoints. In a sweep, a point that already finished is skipped (force=true re-runs it); a
    point whose job was killed or requeued continues its own MLflow run from its last checkpoint. Several processes
    (SLURM tasks) run one point together: rank 0 decides and logs, the others log nothing.

    A user mistake is one line on stderr; any other error ends the run FAILED with the error tag, and in a sweep the
    remaining points go on."""
    import json
    import os
    import time

    from bar import distributed
    from bar import train as train_module
    from bar.checkpoint import point_folder
    from bar.tracking import NullRun

    started = time.time()
    try:
        validate_config(cfg)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2)
    name = point_name(cfg)
    sig = point_signature(cfg)
    tags = {"sweep": cfg.experiment, "signature": sig, "profile": cfg.profile.name}
    denv = distributed.setup(resolve_device(cfg.device).type)
    folder = point_folder(cfg)
    lock = None
    try:
        plan = None
        if denv.is_main:
            try:
                plan = _plan(cfg, multirun, sig, folder)
                if plan["skip"] is None:
                    lock = _try_lock(folder / ".lock")
                    if lock is None:
                        plan = {"skip": {"status": "skipped", "metric": math.nan},
                                "why": f"another job is running it now (lock {folder / '.lock'})"}
            except Exception as err:  # tracking store unreachable, ...: decide nothing, fail the point below
                plan = {"error": err}
        plan = distributed.broadcast_object(plan)
        if plan.get("error") is not None:
            raise plan["error"]
        if plan["skip"] is not None:
            log.info("%s: skipped, %s", name, plan["why"])
            print(f"{name}: skipped, {plan['why']}", file=sys.stderr)
            return plan["skip"]
        run_cm = PointRun(cfg.tracking.uri, cfg.experiment, name, tags, cfg.tracking.parent_run_id,
                          resume_run_id=plan["resume"]) if denv.is_main else None
        run_id = distributed.broadcast_object(run_cm.run_id if run_cm is not None else None)
        if run_cm is None:
            run_cm = NullRun(run_id)
            metrics = run_point(cfg, run_cm)
            return {"status": run_cm.status, "metric": float(metrics.get("gfid", metrics.get("rfid", math.nan)))}
        with run_cm as run:
            (folder / "run.json").write_text(json.dumps({"run_id": run.run_id, "signature": sig,
                                                         "experiment": cfg.experiment, "name": name}))
            if run.resumed:
                log.info("%s: resuming MLflow run %s", name, run.run_id)
            run.log_params(flatten(cfg))
            with tempfile.TemporaryDirectory() as tmp:
                (Path(tmp) / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
                run.log_artifact(Path(tmp) / "config.yaml")
            metrics = run_point(cfg, run)
            extra = {"world_size": denv.world_size}
            submitted = os.environ.get("BAR_SUBMITTED_AT")
            if submitted and not run.resumed:
                extra["launch_to_start_s"] = started - float(submitted)
                if train_module.FIRST_STEP_AT:
                    extra["launch_to_first_step_s"] = train_module.FIRST_STEP_AT - float(submitted)
            run.log_metrics(extra)
        if run.status in ("finished", "infeasible"):
            from bar.checkpoint import CheckpointDir

            CheckpointDir(folder / "generator").clear()   # the final weights are saved apart (generator.checkpoint)
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
    finally:
        if lock is not None:
            lock.close()
        if denv.world_size > 1:
            distributed.teardown()
    return {"status": "failed", "metric": math.nan}
