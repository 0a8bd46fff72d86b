"""From the composed config to objects: the tokenizer, the generator (backbone + head), its sampling schedule.

Everything reads the one composed config (bar/conf + bar/orchestration/schema.py); there is no second registry of
presets.

    latent_shape(cfg) -> (kind, grid side, values per token)
    build_tokenizer(cfg) -> Tokenizer
    generator_config(cfg) -> GeneratorConfig          build_generator(cfg) -> BARGenerator
    order_anneal_steps(cfg) -> (start, end)           the random-order anneal in optimizer steps
    sampling_schedule(cfg, model) -> {"allocation": [...]} or {}      fit_allocation(shape, bits_per_step) -> list
Build under `torch.device("meta")` to size or validate a model without allocating it."""

from __future__ import annotations

import math
from pathlib import Path

from omegaconf import DictConfig

from bar import UserError
from bar.core.files import load_verified
from bar.model.generator import BARGenerator, GeneratorConfig
from bar.model.heads import HEADS, build_head
from bar.orchestration.config import resolved_dict
from bar.tokenizers.release import ReleaseTokenizer
from bar.tokenizers.tokenizer import Tokenizer, validate_tokenizer_config
from bar.tokenizers.tokenizer import latent_shape as tokenizer_latent_shape

AnyTokenizer = Tokenizer | ReleaseTokenizer   # what build_tokenizer gives: this project's family or the release's


def latent_shape(cfg: DictConfig) -> tuple[str, int, int]:
    """(kind, grid side, values per token) of the tokenizer config, without building it."""
    validate_tokenizer_config(cfg.tokenizer)
    return tokenizer_latent_shape(cfg.tokenizer, cfg.data.resolution)


def build_tokenizer(cfg: DictConfig, with_encoder: bool = True) -> AnyTokenizer:
    """The tokenizer's architecture (untrained): this project's conv / ViT family, or the release's BAR-FSQ."""
    tok = cfg.tokenizer
    if tok.arch == "release":
        return ReleaseTokenizer(tok.bits, cfg.data.resolution, tok.size, with_encoder=with_encoder,
                                channels=tok.channels if tok.kind == "ae" else None, kl=tok.kl)
    return Tokenizer(tok, cfg.data.in_channels, cfg.data.resolution)


def load_tokenizer_checkpoint(cfg: DictConfig, with_encoder: bool = True) -> AnyTokenizer:
    """`tokenizer.checkpoint`: the release's BAR-FSQ file (strict, key for key), or a tokenizer this project
    trained (bar's checksummed format)."""
    path = Path(str(cfg.tokenizer.checkpoint)).expanduser()
    if cfg.tokenizer.arch == "release":
        return ReleaseTokenizer.from_checkpoint(path, cfg.tokenizer.size, with_encoder=with_encoder)
    tokenizer = build_tokenizer(cfg)
    tokenizer.load_state_dict(load_verified(path)["state_dict"])
    return tokenizer.eval()


def head_options(cfg: DictConfig) -> dict:
    """The head node without its name: keyword options of the head's config dataclass."""
    options = resolved_dict(cfg.head)
    options.pop("name")
    return options


def order_anneal_steps(cfg: DictConfig) -> tuple[int, int]:
    """generator.train.order_anneal, fractions of generator.train.steps (checked by bar.orchestration.validate), as
    the optimizer steps between which the random-order probability falls from 1 to 0: round(fraction * steps)."""
    train = cfg.generator.train
    start, end = train.order_anneal
    return round(start * train.steps), round(end * train.steps)


def generator_config(cfg: DictConfig, checkpoint_blocks: bool = False) -> GeneratorConfig:
    kind, grid, dim = latent_shape(cfg)
    m = cfg.model
    token_kind = "continuous" if kind == "ae" else "bits"
    head_kind = HEADS[cfg.head.name][0].token_kind if cfg.head.name in HEADS else token_kind
    if head_kind != token_kind:
        fitting = sorted(n for n, (c, _) in HEADS.items() if c.token_kind == token_kind)
        raise UserError(f"head {cfg.head.name!r} predicts {head_kind} tokens but the tokenizer gives {token_kind} "
                        f"tokens; use one of the heads {fitting}")
    gen = GeneratorConfig(
        dim=m.dim, depth=m.depth, heads=m.heads, mlp_ratio=m.mlp_ratio, dropout=m.dropout,
        attn_dropout=m.attn_dropout, num_classes=cfg.data.num_classes, class_repeat=m.class_repeat,
        grid=(grid, grid), patch_size=m.patch_size, token_kind=token_kind, token_dim=dim,
        cond_width=cfg.head.width, label_dropout=m.label_dropout, order_anneal=order_anneal_steps(cfg),
        rope_theta=m.rope_theta, checkpoint_blocks=checkpoint_blocks)
    gen.validate()
    return gen


def build_generator(cfg: DictConfig, checkpoint_blocks: bool = False) -> BARGenerator:
    """The generator a point trains; `checkpoint_blocks` (from the memory plan) recomputes activations in backward."""
    gen = generator_config(cfg, checkpoint_blocks)
    head = build_head(cfg.head.name, gen.step_dim, **head_options(cfg))
    if gen.patch_size > 1:
        p, unit = gen.patch_size, "bits_per_token" if gen.token_kind == "bits" else "channels"
        what = "bits" if gen.token_kind == "bits" else "channels"
        head.token_dim_name = f"{what} per AR step ({gen.token_dim} {unit} x {p}x{p} tokens)"
    return BARGenerator(gen, head)


def fit_allocation(shape, bits_per_step: int) -> list[int]:
    """`shape` (an MBM unmasking schedule) if it sums to bits_per_step; otherwise the same shape scaled to sum to it
    (floors, remainder added to the last steps, kept non-decreasing and positive)."""
    alloc = list(shape)
    if sum(alloc) == bits_per_step:
        return alloc
    steps = min(len(alloc), bits_per_step)
    alloc = alloc[len(alloc) - steps:]
    total = sum(alloc)
    out = [max(1, math.floor(a * bits_per_step / total)) for a in alloc]
    while sum(out) > bits_per_step:          # can only happen through the max(1, .) floor
        i = max(range(steps), key=lambda j: (out[j], j))
        out[i] -= 1
    i = steps - 1
    while sum(out) < bits_per_step:
        out[i] += 1
        i = i - 1 if i > 0 else steps - 1
    return sorted(out)


def sampling_schedule(cfg: DictConfig, model: BARGenerator) -> dict:
    """The head's schedule options: for MBM the allocation (explicit, or the preset's shape fitted to the bits per AR
    step); nothing for heads without a schedule."""
    if "allocation" not in model.head.schedule_options:
        return {}
    s = cfg.generator.sample
    if s.allocation is not None:
        return {"allocation": list(s.allocation)}
    if s.allocation_shape is None:
        return {"allocation": None}
    return {"allocation": fit_allocation(s.allocation_shape, model.cfg.step_dim)}


def sampling_temperature(cfg: DictConfig, model: BARGenerator, schedule: dict) -> float:
    """The temperature the head's sampler is given. The MBM head anneals it linearly over its K unmasking steps
    (the release: T at the first step, T/K at the last), so on average it samples at (K+1)/(2K) x T, colder than the
    per-bit and softmax heads' exact sampling at T. generator.sample.temperature_is=mean asks for T on average: the
    start becomes 2K/(K+1) x T (1.6 x T at K = 4)."""
    s = cfg.generator.sample
    if s.temperature_is == "start" or "allocation" not in schedule:
        return float(s.temperature)
    steps = model.head.sampling_passes(allocation=schedule["allocation"])
    return float(s.temperature) * 2 * steps / (steps + 1)


def count_params(model) -> int:
    return sum(p.numel() for p in model.parameters())
