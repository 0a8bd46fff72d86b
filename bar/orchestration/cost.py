"""The dry run's cost model: accelerator-hours of a sweep, each distinct piece of work counted once.

FLOPs come from counting the models' own forward passes on the meta device (torch's FlopCounterMode: nothing is
allocated, a 2^32-way softmax included) and are turned into hours at `launcher.gpu_tflops` x `launcher.utilization`
(training, tokenizer work) or x `launcher.sample_utilization` (AR sampling: one small step per token, latency-bound;
the default 0.025 gives BAR-B 26 img/s, BAR-L 14, BAR-B/4 276 on a 989-TFLOP/s GPU, against the release's
measured 24.33, 10.65 and 445):

    tokenizer   training 3 x forward x steps x batch; pretokenization (the encoder over every view the code store
                keeps: image + flip); rFID reconstructions at the evaluation schedule and at the end.
                Counted once per tokenizer signature, and not at all when already in the cache; training only when
                the point trains one (not with tokenizer.checkpoint), nothing for stage=sample.
    generator   training 3 x forward x steps x global batch (x 4/3 with activation checkpointing).
    sampling    every run of the point's SamplingPlan (bar.orchestration.sampling_plan: guided, unguided for
                gfid_nocfg, periodic): per image the backbone over its sequence + the head's passes per AR step
                (`TokenHead.sampling_passes`), x 2 with CFG, plus decoding.
Infeasible points and points already done cost nothing and are listed apart by the dry run."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.flop_counter import FlopCounterMode

from bar.data.codes import VIEWS
from bar.orchestration.build import build_generator, build_tokenizer, sampling_schedule
from bar.orchestration.config import data_identity, signature, tokenizer_signature
from bar.orchestration.rules import trains_tokenizer
from bar.orchestration.sampling_plan import SamplingPlan, SamplingRun, sampling_plan
from bar.training.loop import evaluation_steps

TRAIN_FACTOR = 3.0              # forward + backward ~ 3 forward passes
CHECKPOINTING_FACTOR = 4 / 3    # activation checkpointing repeats the forward pass


def _forward_flops(fn) -> float:
    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


_COUNTED: dict[str, dict[str, float]] = {}   # FLOP counts by what determines them (a sweep repeats architectures)


@torch.no_grad()
def tokenizer_flops(cfg: DictConfig) -> dict[str, float]:
    """Forward FLOPs of one image through the whole tokenizer and through its encoder and decoder, and its sizes
    (`tokenizer_sizes`)."""
    key = signature({"tokenizer": OmegaConf.to_container(cfg.tokenizer, resolve=True), "data": data_identity(cfg)})
    if key not in _COUNTED:
        _COUNTED[key] = _count_tokenizer(cfg)
    return _COUNTED[key]


def _count_tokenizer(cfg: DictConfig) -> dict[str, float]:
    r, c = cfg.data.resolution, cfg.data.in_channels
    with torch.device("meta"):
        tok = build_tokenizer(cfg)
        if cfg.tokenizer.arch == "release":    # transformers' SigLIP2 reads a tensor value: it cannot run on meta
            return _release_tokenizer_flops(tok) | tokenizer_sizes(tok)
        x = torch.zeros(1, c, r, r)
        forward, encode = _forward_flops(lambda: tok(x)), _forward_flops(lambda: tok.encode(x))
        return {"forward": forward, "encode": encode, "decode": forward - encode} | tokenizer_sizes(tok)


def tokenizer_sizes(tok) -> dict[str, float]:
    """Its parameters (all, and those it trains), tokens per image and values per token: what its checkpoints and
    its code store hold (bar.orchestration.resources)."""
    return {"params": float(sum(p.numel() for p in tok.parameters())),
            "trainable": float(sum(p.numel() for p in tok.parameters() if p.requires_grad)),
            "tokens": float(tok.grid ** 2), "latent_dim": float(tok.latent_dim)}


def _release_tokenizer_flops(tok) -> dict[str, float]:
    """2 x parameters x tokens per pass (transformer layers dominate): the trainable encoder copy and the decoder in
    training, plus the frozen SigLIP2 tower's forward for the distillation targets."""
    tokens = tok.grid ** 2
    count = lambda module: sum(p.numel() for p in module.parameters())   # noqa: E731
    encoder = count(tok.encoder.trainable_encoder) + count(tok.quantize.in_proj)
    decoder = count(tok.decoder) - count(tok.decoder.clip_projector) + count(tok.quantize.out_proj)
    frozen = count(tok.encoder.siglip.encoder)
    return {"forward": 2 * tokens * (encoder + decoder + frozen / TRAIN_FACTOR), "encode": 2 * tokens * encoder,
            "decode": 2 * tokens * decoder}


@torch.no_grad()
def generator_flops(cfg: DictConfig) -> dict[str, float]:
    """Forward FLOPs per image of teacher-forced training (backbone + head on every AR step) and of the head alone,
    and the head's passes per AR step when sampling (`passes`)."""
    key = signature({k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("model", "head", "tokenizer", "data")}
                    | {"sample": OmegaConf.to_container(cfg.generator.sample, resolve=True)})
    if key not in _COUNTED:
        _COUNTED[key] = _count_generator(cfg)
    return _COUNTED[key]


@torch.no_grad()
def _count_generator(cfg: DictConfig) -> dict[str, float]:
    with torch.device("meta"):
        model = build_generator(cfg)
        g = model.cfg
        tokens = torch.zeros(1, g.grid[0] * g.grid[1], g.token_dim, dtype=torch.uint8 if g.token_kind == "bits"
                             else torch.float32)
        labels = torch.zeros(1, dtype=torch.long)
        forward = _forward_flops(lambda: model.training_loss(tokens, labels, None))
        cond = torch.zeros(1, g.steps, model.head.width)
        head = _forward_flops(lambda: model.head.loss(cond, model.group(tokens)))
        schedule = {k: v for k, v in sampling_schedule(cfg, model).items() if v is not None}
        passes = model.head.sampling_passes(**schedule)
    return {"forward": forward, "head": head, "passes": float(passes),
            "params": float(sum(p.numel() for p in model.parameters()))}


@dataclass
class PointCost:
    tokenizer_key: str                                     # tokenizer signature: its work is shared
    tokenizer: dict[str, float] = field(default_factory=dict)   # FLOPs: train, pretokenize, reconstruct
    generator: dict[str, float] = field(default_factory=dict)   # FLOPs: train, sample
    sampling: list[SamplingRun] = field(default_factory=list)   # the sampling runs priced, in the order they run

    @property
    def generator_flops(self) -> float:
        return sum(self.generator.values())


def point_cost(cfg: DictConfig, train_images: int = 0, val_images: int = 0, *,
               checkpointing: bool = False) -> PointCost:
    """The FLOPs of one point's work: its tokenizer's (shared by the points with its signature) and its own.
    stage=sample reads no data (the image counts are unused) and only samples and decodes."""
    tok = tokenizer_flops(cfg)
    if cfg.stage == "sample":
        plan = sampling_plan(cfg)
        return PointCost(tokenizer_signature(cfg), {}, {"sample": sampling_flops(plan, generator_flops(cfg),
                                                                                  tok["decode"])}, plan.executed())
    t = cfg.tokenizer.train
    trains = trains_tokenizer(cfg)   # a tokenizer.checkpoint is loaded: only its reconstructions are scored
    reconstructions = 1 + (len(evaluation_steps(cfg.eval.rfid_every, t.steps)) if trains else 0)
    cost = PointCost(tokenizer_signature(cfg), {"train": TRAIN_FACTOR * tok["forward"] * t.steps * t.batch_size
                                                if trains else 0.0,
                                                "reconstruct": tok["forward"] * val_images * reconstructions})
    if cfg.stage != "all":
        return cost
    cost.tokenizer["pretokenize"] = tok["encode"] * train_images * VIEWS
    gen, g = generator_flops(cfg), cfg.generator.train
    factor = TRAIN_FACTOR * (CHECKPOINTING_FACTOR if checkpointing else 1.0)
    plan = sampling_plan(cfg)
    cost.sampling = plan.executed()
    cost.generator = {"train": factor * gen["forward"] * g.steps * g.batch_size,
                      "sample": sampling_flops(plan, gen, tok["decode"])}
    return cost


def sampling_flops(plan: SamplingPlan, gen: dict[str, float], decode: float) -> float:
    """Every run the plan executes: per image the backbone over its sequence with one head pass per AR step, the
    head's further passes, both for each guidance copy; then decoding."""
    per_copy = gen["forward"] + (gen["passes"] - 1) * gen["head"]
    return sum(r.num_samples * (per_copy * r.copies + decode) for r in plan.executed())


def gpu_hours(flops: float, cfg: DictConfig, sampling: bool = False) -> float:
    utilization = cfg.launcher.sample_utilization if sampling else cfg.launcher.utilization
    return flops / (float(cfg.launcher.gpu_tflops) * 1e12 * float(utilization)) / 3600


def point_hours(cost: PointCost, cfg: DictConfig) -> float:
    """The generator's share of a point (its tokenizer is shared: counted by `sweep_hours`)."""
    return gpu_hours(cost.generator.get("train", 0.0), cfg) + gpu_hours(cost.generator.get("sample", 0.0), cfg, True)


def sweep_hours(costs: list[PointCost], cfg: DictConfig, cached_tokenizers: set[str]) -> dict[str, float]:
    """GPU-hours of the points to run: each distinct tokenizer once (none if already cached), every generator."""
    tokenizers = {c.tokenizer_key: c.tokenizer for c in costs
                  if c.tokenizer and c.tokenizer_key not in cached_tokenizers}   # stage=sample: none
    tok = gpu_hours(sum(sum(parts.values()) for parts in tokenizers.values()), cfg)
    train = gpu_hours(sum(c.generator.get("train", 0.0) for c in costs), cfg)
    sample = gpu_hours(sum(c.generator.get("sample", 0.0) for c in costs), cfg, sampling=True)
    return {"tokenizers": tok, "distinct_tokenizers": len(tokenizers), "generator_training": train,
            "sampling": sample, "total": tok + train + sample}
