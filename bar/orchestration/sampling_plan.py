"""Which sampling runs a point makes, decided in one place: the runner executes this plan and the cost model prices
it.

    gfid        guided at generator.sample.cfg_scale: after training (stage=all), or the samples of stage=sample
    gfid_nocfg  unguided (cfg_scale 1) after training, when generator.sample.nocfg and cfg_scale != 1
    periodic    the gfid run during training, at each of `evaluation_steps(eval.gfid_every, generator.train.steps)`
Every run samples generator.sample.num_samples class-balanced labels in batches of generator.sample.batch_size, or,
when that batch would not fit one device's memory at generator.sample.precision (`sampling_memory`: weights, static
KV cache, decoding; bar.orchestration.memory.plan_sampling_batch), of the largest divisor of num_samples that does.
The samples follow the batch a run uses (bar.orchestration.stages.samples), and the runner records it."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from omegaconf import DictConfig, OmegaConf

from bar.core.distributed import resolve_device
from bar.orchestration.build import build_generator, build_tokenizer
from bar.orchestration.config import signature
from bar.orchestration.memory import HEADROOM, RESERVE_GB, SamplingMemory, plan_sampling_batch
from bar.orchestration.planner import memory_budget_gb
from bar.training.loop import evaluation_steps


@dataclass(frozen=True)
class SamplingRun:
    metric: str          # what its samples measure: gfid | gfid_nocfg
    cfg_scale: float
    num_samples: int
    batch_size: int      # images per global batch: generator.sample.batch_size, or smaller to fit (sampling_memory)

    @property
    def copies(self) -> int:
        """Rows per sample in every forward pass: guidance runs the conditional and the unconditional half."""
        return 2 if self.cfg_scale != 1.0 else 1


@dataclass(frozen=True)
class SamplingPlan:
    final: tuple[SamplingRun, ...]      # after training (stage=all), or the samples of stage=sample
    periodic: SamplingRun | None        # during training, once at each of `evaluation_steps`
    evaluation_steps: range = range(0)
    memory: SamplingMemory | None = None   # the first final run's (guided: the most rows) memory per device

    def executed(self) -> list[SamplingRun]:
        """Every run in the order it happens: the periodic one at each evaluation step, then the final ones."""
        periodic = [self.periodic] * len(self.evaluation_steps) if self.periodic is not None else []
        return periodic + list(self.final)


def sampling_plan(cfg: DictConfig) -> SamplingPlan:
    """The point's sampling runs (see the module docstring); none for stage=tokenizer."""
    if cfg.stage == "tokenizer":
        return SamplingPlan((), None)
    s = cfg.generator.sample
    scale = float(s.cfg_scale)
    memory = sampling_memory(cfg, 2 if scale != 1.0 else 1)
    guided = SamplingRun("gfid", scale, int(s.num_samples), memory.batch_size)
    if cfg.stage == "sample":
        return SamplingPlan((guided,), None, memory=memory)
    final: tuple[SamplingRun, ...] = (guided,)
    if s.nocfg and guided.cfg_scale != 1.0:
        final += (replace(guided, metric="gfid_nocfg", cfg_scale=1.0, batch_size=sampling_memory(cfg, 1).batch_size),)
    steps = evaluation_steps(cfg.eval.gfid_every, cfg.generator.train.steps)
    return SamplingPlan(final, guided if len(steps) else None, steps, memory)


def sampling_bytes_per_value(cfg: DictConfig) -> int:
    """2 under bf16 autocast on GPUs (generator.sample.precision=bf16), else 4: fp32 (TF32 or not) and CPU runs."""
    gpu = resolve_device(cfg.device).type == "cuda"
    return 2 if gpu and cfg.generator.sample.precision == "bf16" else 4


_PLANNED: dict[str, SamplingMemory] = {}   # by what determines them: the runner and the dry run ask again


def sampling_memory(cfg: DictConfig, copies: int) -> SamplingMemory:
    """One device's memory while it samples a batch with `copies` rows per image, at generator.sample.batch_size or
    the batch that fits the point's budget (bar.orchestration.planner.memory_budget_gb; GPU margins as training's).
    Models are built on the meta device: nothing is allocated. stage=sample decodes with the tokenizer's decoder
    side; stage=all also keeps the training state alive (periodic gFID)."""
    gpu = resolve_device(cfg.device).type == "cuda"
    budget, nbytes = memory_budget_gb(cfg), sampling_bytes_per_value(cfg)
    key = signature({k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("model", "head", "tokenizer", "data")}
                    | {"sample": OmegaConf.to_container(cfg.generator.sample, resolve=True), "stage": cfg.stage,
                       "copies": copies, "budget": round(budget, 1), "gpu": gpu})
    if key not in _PLANNED:
        with torch.device("meta"):
            model = build_generator(cfg)
            tokenizer = build_tokenizer(cfg, with_encoder=cfg.stage != "sample")
        s = cfg.generator.sample
        _PLANNED[key] = plan_sampling_batch(
            model, tokenizer, int(s.batch_size), int(s.num_samples), copies, budget,
            headroom=HEADROOM if gpu else 0.0, reserve_gb=RESERVE_GB if gpu else 0.0, bytes_per_value=nbytes,
            resolution=int(cfg.data.resolution), kv_cache=bool(s.kv_cache), training_state=cfg.stage == "all")
    return _PLANNED[key]
