"""Which sampling runs a point makes, decided in one place: the runner executes this plan and the cost model prices
it.

    gfid        guided at generator.sample.cfg_scale: after training (stage=all), or the samples of stage=sample
    gfid_nocfg  unguided (cfg_scale 1) after training, when generator.sample.nocfg and cfg_scale != 1
    periodic    the gfid run during training, at each of `evaluation_steps(eval.gfid_every, generator.train.steps)`
Every run samples generator.sample.num_samples class-balanced labels in batches of generator.sample.batch_size."""

from __future__ import annotations

from dataclasses import dataclass, replace

from omegaconf import DictConfig

from bar.training.loop import evaluation_steps


@dataclass(frozen=True)
class SamplingRun:
    metric: str          # what its samples measure: gfid | gfid_nocfg
    cfg_scale: float
    num_samples: int
    batch_size: int

    @property
    def copies(self) -> int:
        """Rows per sample in every forward pass: guidance runs the conditional and the unconditional half."""
        return 2 if self.cfg_scale != 1.0 else 1


@dataclass(frozen=True)
class SamplingPlan:
    final: tuple[SamplingRun, ...]      # after training (stage=all), or the samples of stage=sample
    periodic: SamplingRun | None        # during training, once at each of `evaluation_steps`
    evaluation_steps: range = range(0)

    def executed(self) -> list[SamplingRun]:
        """Every run in the order it happens: the periodic one at each evaluation step, then the final ones."""
        periodic = [self.periodic] * len(self.evaluation_steps) if self.periodic is not None else []
        return periodic + list(self.final)


def sampling_plan(cfg: DictConfig) -> SamplingPlan:
    """The point's sampling runs (see the module docstring); none for stage=tokenizer."""
    if cfg.stage == "tokenizer":
        return SamplingPlan((), None)
    s = cfg.generator.sample
    guided = SamplingRun("gfid", float(s.cfg_scale), int(s.num_samples), int(s.batch_size))
    if cfg.stage == "sample":
        return SamplingPlan((guided,), None)
    final: tuple[SamplingRun, ...] = (guided,)
    if s.nocfg and guided.cfg_scale != 1.0:
        final += (replace(guided, metric="gfid_nocfg", cfg_scale=1.0),)
    steps = evaluation_steps(cfg.eval.gfid_every, cfg.generator.train.steps)
    return SamplingPlan(final, guided if len(steps) else None, steps)
