"""The sampling a point makes is one SamplingPlan: the runner executes it and the dry run's cost model prices it, so
the cost model counts exactly the samples, guidance copies and evaluations a run makes."""

import math
from collections import Counter

import pytest

from bar.orchestration import runner
from bar.orchestration.config import compose
from bar.orchestration.cost import generator_flops, point_cost, tokenizer_flops
from bar.orchestration.planner import plan_point
from bar.orchestration.sampling_plan import sampling_plan
from bar.orchestration.stages import samples
from bar.orchestration.tracking import NullRun


def test_the_plan_says_which_sampling_runs_a_point_makes():
    plan = sampling_plan(compose(["profile=smoke", "eval.gfid_every=2", "generator.train.steps=7"]))
    assert [(r.metric, r.cfg_scale, r.copies) for r in plan.final] == [("gfid", 2.0, 2), ("gfid_nocfg", 1.0, 1)]
    assert list(plan.evaluation_steps) == [2, 4, 6] and plan.periodic == plan.final[0]
    assert [r.metric for r in plan.executed()] == ["gfid"] * 4 + ["gfid_nocfg"]
    unguided = sampling_plan(compose(["profile=smoke", "generator.sample.cfg_scale=1.0"]))
    assert [r.metric for r in unguided.executed()] == ["gfid"]         # nothing to compare gfid_nocfg with
    assert [r.metric for r in sampling_plan(compose(["profile=smoke", "generator.sample.nocfg=false"])).final] == \
        ["gfid"]
    assert [r.metric for r in sampling_plan(compose(["profile=smoke", "stage=sample", "eval.gfid_every=2"]))
            .executed()] == ["gfid"]
    assert sampling_plan(compose(["profile=smoke", "stage=tokenizer"])).executed() == []


class _RecordingRun(NullRun):
    def __init__(self):
        super().__init__("recording")
        self.logged: list[tuple[str, int]] = []

    def log_metrics(self, metrics, step: int = 0) -> None:
        self.logged += [(key, step) for key, value in metrics.items() if value is not None]


@pytest.mark.parametrize("nocfg", [True, False])
def test_the_cost_model_prices_what_the_runner_executes(tmp_path, monkeypatch, nocfg):
    cfg = compose(["profile=smoke", "eval.gfid_every=2", f"generator.sample.nocfg={nocfg}",
                   "generator.sample.batch_size=16", f"paths.outputs={tmp_path}",
                   f"tracking.uri=sqlite:///{tmp_path}/mlflow.db"])
    ran = []                                   # (cfg_scale, images) of every batch the generator was asked for
    sample_batch = samples.sample_batch

    def recording(sampler, labels_B, cfg_scale, j):
        ran.append((cfg_scale, len(labels_B)))
        return sample_batch(sampler, labels_B, cfg_scale, j)

    monkeypatch.setattr(samples, "sample_batch", recording)
    run = _RecordingRun()
    runner.run_stages(cfg, run, plan_point(cfg, skip_done=False))

    cost = point_cost(cfg, train_images=100, val_images=10)
    made, priced = Counter(), Counter()
    for scale, images in ran:
        made[scale] += images
    for sampling_run in cost.sampling:
        priced[sampling_run.cfg_scale] += sampling_run.num_samples
    steps, num_samples = cfg.generator.train.steps, cfg.generator.sample.num_samples
    assert made == priced == Counter({2.0: 3 * num_samples, **({1.0: num_samples} if nocfg else {})})
    evaluated = [step for key, step in run.logged if key == "gfid" and 0 < step < steps]
    assert evaluated == list(sampling_plan(cfg).evaluation_steps) == [2, 4]
    assert ("gfid_nocfg", 0) in run.logged if nocfg else ("gfid_nocfg", 0) not in run.logged

    gen, decode = generator_flops(cfg), tokenizer_flops(cfg)["decode"]
    allocation = runner.sampling_schedule(cfg, runner.build_generator(cfg))["allocation"]
    assert gen["passes"] == len(allocation) > 1                          # MBM: one head pass per unmasking step
    per_copy = gen["forward"] + (gen["passes"] - 1) * gen["head"]
    executed = sum(images * (per_copy * (2 if scale != 1.0 else 1) + decode) for scale, images in ran)
    assert math.isclose(cost.generator["sample"], executed, rel_tol=1e-12)


BAR_L_512 = ["sweep=release_eval", "model=bar_l_512", "tokenizer.bits=10", "data.resolution=512",
             "release.generators.bar_l_512=/g.bin", "release.tokenizers.bar_fsq_10bits_res512=/t.bin",
             "release.references.imagenet512=/r.npz"]


def test_bar_l_512_samples_in_the_largest_batch_that_fits_one_gpu():
    """BAR-L-512's static KV cache at batch 250 with CFG is ~80 GiB in bf16 (twice that in fp32): the plan samples in
    the largest divisor of the 50,000 samples that fits the GPU (launcher.gpu_mem_gb), and says so."""
    import torch

    from bar.orchestration.build import build_generator
    from bar.orchestration.memory import gib, kv_cache_bytes

    cfg = compose(BAR_L_512)
    with torch.device("meta"):
        model = build_generator(cfg)
    assert 78 < gib(kv_cache_bytes(model.cfg, 2 * 250, 2)) < 83
    expected = {(): 100, ("generator.sample.precision=bf16",): 125, ("launcher.gpu_mem_gb=141",): 125,
                ("generator.sample.batch_size=50",): 50}
    for extra, batch in expected.items():
        plan = sampling_plan(compose(BAR_L_512 + list(extra)))
        (run,), memory = plan.final, plan.memory
        assert run.batch_size == memory.batch_size == batch and 50_000 % batch == 0, extra
        assert memory.feasible and memory.est_gb_per_gpu <= memory.usable_gb and memory.copies == 2
        assert memory.split == (memory.requested == 250 and batch < 250), extra
