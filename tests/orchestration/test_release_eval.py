"""From the release's files to the paper's protocol, without downloads: a release-format generator checkpoint and
tokenizer (small sizes, the release's key names), the ADM reference batch layout and a weights file of the Inception
architecture go through `stage=sample` (release generator -> release tokenizer -> ADM .npz -> gFID / sFID / IS /
precision / recall); `sweep=release_eval` picks each preset's checkpoint, tokenizer and reference."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from bar.eval.adm import InceptionADM
from bar.orchestration.build import build_generator
from bar.orchestration.config import compose
from bar.model.release_keys import to_release_state_dict
from conftest import child_runs, run_cli
from release_files import release_state_dict, write_release_standins

SMALL = ["model.compile=false", "model.dim=32", "model.depth=1", "model.heads=2", "model.head_width=32",
         "model.head_depth=1"]


def test_release_eval_sweep_picks_each_preset_s_files():
    paths = [f"release.generators.{p}=/g/{p}.bin" for p in ("bar_b", "bar_b2", "bar_b4", "bar_l", "bar_l_512")]
    paths += [f"release.tokenizers.{t}=/t/{t}.bin" for t in ("bar_fsq_16bits", "bar_fsq_16bits_ft",
                                                               "bar_fsq_10bits_res512")]
    paths += ["release.references.imagenet256=/r/256.npz", "release.references.imagenet512=/r/512.npz"]
    for model, tok, ref in (("bar_b", "bar_fsq_16bits_ft", "256"), ("bar_b4", "bar_fsq_16bits", "256"),
                            ("bar_l", "bar_fsq_16bits_ft", "256")):
        cfg = compose(["sweep=release_eval", f"model={model}", *paths])
        assert (cfg.checkpoint, cfg.tokenizer.checkpoint) == (f"/g/{model}.bin", f"/t/{tok}.bin")
        assert cfg.eval.protocol == "adm" and cfg.eval.reference == f"/r/{ref}.npz" and cfg.stage == "sample"
    grids = compose(["sweep=release_eval"], hydra_node=True).hydra.sweeper.grids
    assert str(grids[0]["model"]) == "bar_b4,bar_b2,bar_b,bar_l" and grids[1]["model"] == "bar_l_512"


class _Loader:
    """What the sweep driver needs of Hydra's config loader: each point composed as run.py would."""

    def __init__(self, base):
        self.base = base

    def load_sweep_config(self, master_config, sweep_overrides):
        return compose(self.base + list(sweep_overrides), hydra_node=True)


def test_release_eval_dry_run_needs_no_data_and_plans_sampling_per_gpu(tmp_path, capsys):
    """As the README launches it (launcher=slurm, 8 GPUs), with full-size stand-ins of the release's files and no
    data folder: per point the sampling batch and memory per GPU (BAR-L-512's batch split to fit 80 GB in fp32), its
    sampling GPU-hours, no tokenizer training, short run names."""
    from bar.orchestration import sweeps

    base = ["sweep=release_eval", "launcher=slurm", "hydra.launcher.gpus_per_node=8", "dry_run=true",
            f"paths.outputs={tmp_path / 'out'}", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
            *write_release_standins(tmp_path)]
    cfg = compose(base, hydra_node=True)
    assert cfg.data.name == "imagefolder" and cfg.data.root is None          # no data anywhere
    grids = OmegaConf.to_container(cfg.hydra.sweeper.grids, resolve=True)   # as Hydra hands them to the sweeper
    sweeper = SimpleNamespace(config=cfg, grids=grids, params={}, max_batch_size=None, launcher=None,
                              hydra_context=SimpleNamespace(config_loader=_Loader(base)))
    assert sweeps.run_sweep(sweeper, []) == []
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ")}
    assert len(rows) == 5 and not any("/" in name for name in rows), rows
    for row in rows.values():
        assert "sample batch" in row and "GiB/dev" in row and "sampling ~" in row, row
        assert float(row.split("sampling ~")[1].split()[0]) > 0, row
    assert "sample batch 250," in rows["bar_b-sample"]
    l512 = rows["bar_l_512-sample-resolution=512-reference=VIRTUAL_imagenet512"]   # the reference: its file's stem
    assert "sample batch 100 (250 does not fit)" in l512
    totals = next(line for line in out.splitlines() if line.startswith("GPU-hours:"))
    assert "0 distinct tokenizer(s) 0 + generator training 0 + sampling" in totals
    assert not (tmp_path / "out").exists() and not (tmp_path / "mlflow.db").exists()


@pytest.mark.slow
def test_release_files_through_stage_sample_to_adm_metrics(tmp_path):
    cfg = compose(["profile=paper", "data.root=/unused", "model=bar_b", *SMALL])
    torch.save(to_release_state_dict(build_generator(cfg)), tmp_path / "bar_b.bin")
    torch.save(release_state_dict(bits=16, res=256), tmp_path / "bar_fsq_16bits_ft.bin")
    torch.save(InceptionADM.random(0).net.state_dict(), tmp_path / "inception.pth")
    reference = (np.random.default_rng(0).random((24, 256, 256, 3)) * 255).astype(np.uint8)
    np.savez(tmp_path / "VIRTUAL_ref.npz", arr_0=reference)
    proc = run_cli(["stage=sample", "profile=paper", "device=cpu", "model=bar_b", *SMALL, "tokenizer.size=tiny",
                    f"checkpoint={tmp_path / 'bar_b.bin'}", f"tokenizer.checkpoint={tmp_path / 'bar_fsq_16bits_ft.bin'}",
                    "eval.protocol=adm", f"eval.reference={tmp_path / 'VIRTUAL_ref.npz'}",
                    f"eval.inception_weights={tmp_path / 'inception.pth'}", "eval.batch_size=8",
                    "generator.sample.num_samples=12", "generator.sample.batch_size=6"], tmp_path / "out", timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _, (run,), _ = child_runs(tmp_path / "out", "default")
    assert run.data.tags["checkpoint_format"] == "official" and run.data.tags["fid_extractor"] == "adm:VIRTUAL_ref.npz"
    samples = np.load(run.data.params["samples.npz"])["arr_0"]
    assert samples.shape == (12, 256, 256, 3) and samples.dtype == np.uint8
    for key in ("gfid", "sfid", "inception_score", "precision", "recall", "sample_img_per_s"):
        assert np.isfinite(run.data.metrics[key]), key


RELEASE_PATHS = [f"release.generators.{p}=/g/{p}.bin" for p in ("bar_b", "bar_b2", "bar_b4", "bar_l", "bar_l_512")] + \
    [f"release.tokenizers.{t}=/t/{t}.bin" for t in ("bar_fsq_16bits", "bar_fsq_16bits_ft", "bar_fsq_10bits_res512")] + \
    ["release.references.imagenet256=/r/256.npz", "release.references.imagenet512=/r/512.npz"]


@pytest.mark.parametrize("extra,precision,autocast,tf32", [([], "tf32", None, True),
                                                          (["generator.sample.precision=bf16"], "bf16",
                                                           torch.bfloat16, True),
                                                          (["generator.sample.precision=fp32"], "fp32", None, False)])
@pytest.mark.filterwarnings("ignore:CUDA is not available")   # bf16 autocast for CUDA, on a machine without one
def test_release_eval_samples_in_fp32_with_tf32_and_bf16_only_when_asked(extra, precision, autocast, tf32):
    """The release samples without autocast, TF32 allowed (sample_imagenet.py); the sampler a release_eval point
    builds does the same on a GPU, restores the switches after, and logs the precision as a param."""
    from bar.orchestration import runner
    from bar.orchestration.config import run_params
    from bar.orchestration.stages import samples

    cfg = compose(["sweep=release_eval", "model=bar_b", *RELEASE_PATHS, *SMALL, *extra])
    with torch.device("meta"):
        model = build_generator(cfg)
    cuda = torch.device("cuda")
    sampler = runner._sampler(cfg, model, None, runner.sampling_schedule(cfg, model), cuda)
    assert sampler.precision == precision and run_params(cfg)["generator.sample.precision"] == precision
    assert samples.precision_settings(sampler.precision, cuda) == (autocast, tf32)
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = not tf32
    try:
        with samples.precision_context(sampler.precision, cuda):
            assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (tf32, tf32)
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (not tf32, not tf32)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def test_other_sweeps_keep_bf16_sampling_and_cpu_samples_in_fp32(monkeypatch):
    """Outside release_eval the default stays bf16 autocast on GPUs; on CPU the sampling call sees no autocast and
    the TF32 switches untouched, whatever is asked."""
    from bar.orchestration.stages import samples

    assert compose(["profile=paper", "data.root=/unused"]).generator.sample.precision == "bf16"
    assert compose(["profile=smoke"]).generator.sample.precision == "bf16"
    seen = []

    def generate(model, labels_B, **kwargs):
        seen.append((torch.is_autocast_enabled("cpu"), torch.backends.cuda.matmul.allow_tf32,
                     torch.backends.cudnn.allow_tf32))
        return torch.zeros(len(labels_B), 4, 2, dtype=torch.uint8)

    monkeypatch.setattr(samples, "generate", generate)
    switches = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    for precision in ("bf16", "tf32", "fp32"):
        sampler = samples.Sampler(torch.nn.Identity(), None, {}, 1.0, seed=0, kv_cache=True, compile=False,
                                  precision=precision, device=torch.device("cpu"))
        samples.sample_batch(sampler, torch.arange(3), 2.0, 0)
        assert samples.effective_precision(precision, sampler.device) == "fp32"
    assert seen == [(False, *switches)] * 3


def test_under_the_adm_protocol_gfid_is_tagged_with_the_adm_evaluator(monkeypatch):
    """stage=all tags rFID's judge first (the fidelity protocol's Inception; the tokenizer stage keeps it in
    `rfid_extractor` too); gFID scored under eval.protocol=adm replaces `fid_extractor` with the ADM evaluator's tag
    (the protocol and its reference batch)."""
    from bar.eval.fidelity import ADMEvaluator
    from bar.orchestration import runner
    from bar.orchestration.sampling_plan import SamplingPlan, SamplingRun
    from bar.orchestration.stages import samples
    from bar.orchestration.tracking import NullRun

    class Tags(NullRun):
        def __init__(self):
            super().__init__("tags")
            self.tags: dict = {"fid_extractor": "inception-v3-compat:inception"}

        def set_tags(self, tags):
            self.tags.update(tags)

    tag = ADMEvaluator.tag.fget(SimpleNamespace(reference=SimpleNamespace(path="/r/VIRTUAL_imagenet256_labeled.npz")))
    assert tag == "adm:VIRTUAL_imagenet256_labeled.npz"
    shard = samples.SampleShard(torch.zeros(4, 3, 8, 8, dtype=torch.uint8), torch.arange(4), 1.0)
    monkeypatch.setattr(samples, "sample_shard", lambda *args: shard)
    monkeypatch.setattr(runner.gen_stage, "generation_metrics", lambda *args: {"gfid": 1.0})
    monkeypatch.setattr(runner.gen_stage, "save_sample_grid", lambda *args: False)
    cfg = compose(["profile=smoke", "eval.protocol=adm", "eval.reference=/r/VIRTUAL_imagenet256_labeled.npz"])
    run = Tags()
    runner._sample_and_score(cfg, SamplingPlan((SamplingRun("gfid", 2.0, 4, 4),), None), None, None, run,
                             SimpleNamespace(tag=tag))
    assert run.tags["fid_extractor"] == "adm:VIRTUAL_imagenet256_labeled.npz"


def test_a_swept_file_names_its_run_by_its_stem():
    from bar.orchestration.config import point_name
    from bar.orchestration.sweeps import point_label

    cfg = compose(["profile=smoke", "stage=sample", "checkpoint=/ckpt/runs/bar_b_patch4.bin"])
    label = point_label(cfg, ["checkpoint=/ckpt/runs/bar_b_patch4.bin", "tokenizer.bits=8"], {"checkpoint"})
    assert label == f"{point_name(cfg)}-checkpoint=bar_b_patch4" and "/" not in label
