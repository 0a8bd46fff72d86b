"""Generator stages of a sweep point: pretokenize once per tokenizer, train the AR generator on codes, sample with
CFG, decode, measure (gFID, IS, precision/recall, throughput)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from bar.cache import get_or_build
from bar.config import tokenizer_signature
from bar.data import TensorImages, images_only
from bar.memory import estimate_train_memory
from bar.presets import allocation_for, build_generator, get_preset
from bar.sampling import generate
from bar.tokenizer import Tokenizer, float_to_images, images_to_float, latent_shape
from bar.train import TrainResult, infinite_batches, train


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


# ----------------------------------------------------------------------------------------------------- settings
@dataclass
class GeneratorSettings:
    """The preset's settings with the config's non-null values on top."""
    steps: int
    batch_size: int
    lr: float
    end_lr: float
    warmup: int
    weight_decay: float
    betas: tuple
    grad_clip: float
    cfg_scale: float
    temperature: float
    allocation: list[int] | None


def settings(cfg: DictConfig, model) -> GeneratorSettings:
    pre = get_preset(cfg.model.preset)
    t, s = cfg.generator.train, cfg.generator.sample
    pick = lambda value, default: default if value is None else value  # noqa: E731
    allocation = None
    if "allocation" in model.head.schedule_options:
        allocation = list(s.allocation) if s.allocation is not None else allocation_for(pre, model.cfg.step_dim)
    return GeneratorSettings(
        steps=pick(t.steps, pre.train_steps), batch_size=pick(t.batch_size, pre.batch_size), lr=pick(t.lr, pre.lr),
        end_lr=pick(t.end_lr, pre.end_lr), warmup=pick(t.warmup, pre.warmup_steps),
        weight_decay=pick(t.weight_decay, pre.weight_decay), betas=tuple(pick(t.betas, pre.betas)),
        grad_clip=pick(t.grad_clip, pre.grad_clip), cfg_scale=pick(s.cfg_scale, pre.cfg_scale),
        temperature=pick(s.temperature, pre.temperature), allocation=allocation)


def make_generator(cfg: DictConfig):
    """The generator for this config's tokenizer shape (build it under `torch.device("meta")` to validate cheaply)."""
    kind, grid, dim = latent_shape(cfg.tokenizer, cfg.data.resolution)
    overrides = dict(OmegaConf.to_container(cfg.model.overrides, resolve=True) or {})
    overrides["token_kind"] = "continuous" if kind == "ae" else "bits"  # a head that cannot take them says so
    overrides.update({f"head_{k}": v for k, v in (OmegaConf.to_container(cfg.head.options, resolve=True) or {}).items()})
    if cfg.generator.train.order_anneal is not None:
        overrides["order_anneal"] = tuple(cfg.generator.train.order_anneal)
    return build_generator(cfg.model.preset, bits_per_token=dim, grid=(grid, grid), patch_size=cfg.model.patch_size,
                           head=cfg.head.name, num_classes=cfg.data.num_classes, **overrides)


def check_generator_config(cfg: DictConfig) -> None:
    """Build the model on the meta device and check the sampling schedule: one-line UserErrors, no compute."""
    with torch.device("meta"):
        model = make_generator(cfg)
    st = settings(cfg, model)
    model.head.check_schedule(**({"allocation": st.allocation} if st.allocation is not None else {}))


# ----------------------------------------------------------------------------------------------------- training
def train_generator(cfg: DictConfig, model, tokens: torch.Tensor, labels: torch.Tensor, st: GeneratorSettings,
                    device: torch.device, checkpoint_dir: str | Path | None = None, on_checkpoint=None) -> TrainResult:
    """Data-parallel over the ranks of torch.distributed when there are several (each rank trains on its shard of
    every global batch, gradients averaged); resumes from `checkpoint_dir` and checkpoints into it."""
    from bar import distributed

    world, rank = distributed.world_size(), distributed.rank()
    torch.manual_seed(cfg.seed + rank)     # per-rank random streams (masks, orders); rank 0 = the 1-process run
    model.to(device)
    step_model = torch.compile(model) if cfg.model.compile and hasattr(torch, "compile") else model
    bf16 = torch.bfloat16 if device.type == "cuda" and cfg.generator.train.bf16 else None

    def loss_fn(batch, step):
        x, y = batch
        return step_model.training_loss(x.to(device, non_blocking=True), y.to(device), step)

    launcher = cfg.get("launcher") or {}
    return train(model, loss_fn, infinite_batches((tokens, labels), st.batch_size, cfg.seed, rank, world),
                 steps=st.steps, lr=st.lr, min_lr=st.end_lr, warmup=st.warmup, weight_decay=st.weight_decay,
                 betas=st.betas, grad_clip=st.grad_clip, autocast_dtype=bf16, device_type=device.type, log_every=10,
                 checkpoint_dir=checkpoint_dir, checkpoint_every=int(launcher.get("checkpoint_every", 0) or 0),
                 keep_checkpoints=int(launcher.get("keep_checkpoints", 2) or 2), distributed=world > 1,
                 on_checkpoint=on_checkpoint)


def weights_fingerprint(model) -> str:
    """Short hash of the parameters' bytes: equal on every rank when data-parallel training kept them in sync."""
    import hashlib

    digest = hashlib.sha256()
    for tensor in model.state_dict().values():
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()
                      if tensor.numel() else b"")
    return digest.hexdigest()[:16]


# ----------------------------------------------------------------------------------------------------- sampling
def balanced_labels(num_samples: int, num_classes: int) -> torch.Tensor:
    """As in the paper's protocol: the same number of samples per class."""
    return torch.arange(num_samples) % num_classes


@torch.no_grad()
def sample_images(model, tokenizer: Tokenizer | None, labels: torch.Tensor, st: GeneratorSettings, batch_size: int,
                  cfg_scale: float, seed: int, kv_cache: bool, device: torch.device) -> tuple[torch.Tensor, float]:
    """Generated uint8 images for `labels` and the throughput in images per second (tokens + decoding); with no
    tokenizer, the generated tokens and tokens per second. With several ranks each generates every world_size-th
    label (seed + rank) and all get the gathered results."""
    from bar import distributed

    model.eval()
    world = distributed.world_size()
    mine = labels[distributed.shard_indices(len(labels))] if world > 1 else labels
    generator = torch.Generator(device=device).manual_seed(seed + distributed.rank())
    schedule = {"allocation": st.allocation} if st.allocation is not None else {}
    images = []
    start = time.perf_counter()
    for i in range(0, len(mine), batch_size):
        tokens = generate(model, mine[i:i + batch_size].to(device), cfg_scale=cfg_scale, temperature=st.temperature,
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


def memory_estimate_gb(cfg: DictConfig, meta_model, st: GeneratorSettings, device: torch.device) -> float:
    """Estimated peak memory of one training step (parameters, AdamW state, activations, head logits)."""
    bf16 = device.type == "cuda" and cfg.generator.train.bf16
    return estimate_train_memory(meta_model, st.batch_size, bytes_per_act=2 if bf16 else 4) / 2 ** 30


def run_generator(cfg: DictConfig, tokenizer: Tokenizer, train_set, evaluator, device, run) -> dict[str, float]:
    """Pretokenize, train, sample, evaluate; logs through `run` and returns the metrics. A model whose estimated
    training memory exceeds `generator.memory_budget_gb` is not built: the point is marked infeasible."""
    with torch.device("meta"):
        meta_model = make_generator(cfg)            # sized without allocating: a 2^32-way softmax stays on paper
    st = settings(cfg, meta_model)
    run.log_params({"generator.resolved." + k: v for k, v in vars(st).items()})
    metrics = {"mem_estimate_gb": memory_estimate_gb(cfg, meta_model, st, device),
               "generator_params": sum(p.numel() for p in meta_model.parameters())}
    if metrics["mem_estimate_gb"] > cfg.generator.memory_budget_gb:
        run.mark("infeasible")
        run.set_tags({"infeasible_reason": f"estimated training memory {metrics['mem_estimate_gb']:.3g} GB exceeds "
                                           f"generator.memory_budget_gb={cfg.generator.memory_budget_gb}"})
        run.log_metrics(metrics)
        return metrics

    from bar import distributed
    from bar.checkpoint import point_folder

    tokens, labels = obtain_codes(cfg, tokenizer, train_set, device)
    torch.manual_seed(cfg.seed)   # the same initial weights whether or not the tokenizer was just trained
    model = make_generator(cfg)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    main = distributed.is_main()
    result = train_generator(cfg, model, tokens, labels, st, device, checkpoint_dir=point_folder(cfg) / "generator",
                             on_checkpoint=lambda r: run.append_history("train_loss", r.history))
    run.append_history("train_loss", result.history)
    metrics.update(train_img_per_s=result.samples_per_s, train_loss=result.history[-1][1])
    if result.start_step:
        run.set_tags({"resumed_from_step": str(result.start_step)})
    if distributed.world_size() > 1:
        prints = distributed.all_gather_objects(weights_fingerprint(model))
        run.set_tags({"weights_by_rank": ",".join(prints), "ranks_in_sync": str(len(set(prints)) == 1)})
    if device.type == "cuda":
        metrics["peak_mem_gb"] = torch.cuda.max_memory_allocated(device) / 2 ** 30
    ckpt_dir = Path(cfg.paths.outputs) / "checkpoints" / run.run_id
    if main:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        torch.save({"state_dict": model.state_dict(), "config": OmegaConf.to_container(cfg, resolve=True)},
                   ckpt_dir / "generator.pt")
    run.log_params({"generator.checkpoint": str(ckpt_dir / "generator.pt")})

    scfg = cfg.generator.sample
    sample_labels = balanced_labels(scfg.num_samples, cfg.data.num_classes)
    images, metrics["sample_img_per_s"] = sample_images(model, tokenizer, sample_labels, st, scfg.batch_size,
                                                        st.cfg_scale, scfg.seed, scfg.kv_cache, device)
    plain = None
    if scfg.nocfg and st.cfg_scale != 1.0:   # every rank samples its shard; rank 0 evaluates
        plain, _ = sample_images(model, tokenizer, sample_labels, st, scfg.batch_size, 1.0, scfg.seed,
                                 scfg.kv_cache, device)
    if not main:
        return metrics
    generated = TensorImages(images, sample_labels, cfg.data.num_classes)
    reference = train_set
    scores = evaluator.compare(images_only(generated), images_only(reference), "train", isc=True, prc=True)
    metrics.update(gfid=scores["fid"], inception_score=scores["inception_score"], precision=scores["precision"],
                   recall=scores["recall"])
    if plain is not None:
        metrics["gfid_nocfg"] = evaluator.compare(images_only(TensorImages(plain, sample_labels, cfg.data.num_classes)),
                                                  images_only(reference), "train")["fid"]
    run.log_metrics(metrics)
    _log_sample_grid(images, sample_labels, cfg.data.num_classes, run)
    return metrics


def load_generator_checkpoint(cfg: DictConfig, path: str | Path, device: torch.device):
    """A generator from `path`: this project's checkpoint (state_dict + config), or a state dict of the official BAR
    release (mapped by bar.official). Returns (model, is_official)."""
    from bar.official import load_official

    blob = torch.load(path, map_location="cpu", weights_only=False)
    model = make_generator(cfg)
    if isinstance(blob, dict) and "state_dict" in blob and "config" in blob:
        model.load_state_dict(blob["state_dict"])
        return model.to(device).eval(), False
    load_official(model, blob.get("model", blob) if isinstance(blob, dict) else blob)
    return model.to(device).eval(), True


def run_sampling(cfg: DictConfig, device, run) -> dict[str, float]:
    """stage=sample: generate tokens from a checkpoint, save them, report throughput. Decoding and gFID need the
    tokenizer the checkpoint was trained with, so they happen in run_point only for this project's checkpoints."""
    model, official = load_generator_checkpoint(cfg, cfg.checkpoint, device)
    st = settings(cfg, model)
    scfg = cfg.generator.sample
    labels = balanced_labels(scfg.num_samples, cfg.data.num_classes)
    tokens, per_s = sample_images(model, None, labels, st, scfg.batch_size, st.cfg_scale, scfg.seed, scfg.kv_cache,
                                  device)
    out = Path(cfg.paths.outputs) / "samples" / run.run_id
    out.mkdir(parents=True, exist_ok=True)
    torch.save({"tokens": tokens, "labels": labels}, out / "tokens.pt")
    run.set_tags({"checkpoint_format": "official" if official else "bar"})
    run.log_params({"samples.tokens": str(out / "tokens.pt")})
    metrics = {"sample_tokens_per_s": per_s, "generator_params": sum(p.numel() for p in model.parameters())}
    run.log_metrics(metrics)
    return metrics


def _log_sample_grid(images: torch.Tensor, labels: torch.Tensor, num_classes: int, run, per_class: int = 8) -> None:
    """One row per class (first 10 classes), upscaled so small images stay visible."""
    import tempfile

    import torch.nn.functional as F
    from torchvision.utils import save_image

    classes = range(min(num_classes, 10))
    per_class = min([per_class] + [int((labels == c).sum()) for c in classes])
    if per_class == 0:
        return
    rows = [images[labels == c][:per_class] for c in classes]
    grid = torch.cat(rows).float() / 255
    if grid.shape[-1] < 64:
        grid = F.interpolate(grid, scale_factor=64 // grid.shape[-1], mode="nearest")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sample_grid.png"
        save_image(grid, path, nrow=per_class, padding=2)
        run.log_artifact(path)
