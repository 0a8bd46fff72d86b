import subprocess
import sys

import pytest
from conftest import ROOT
from omegaconf import OmegaConf
from omegaconf.errors import InterpolationKeyError

from bar import UserError
from bar.orchestration.config import available_sweeps, compose, point_signature, run_params, tokenizer_signature
from bar.orchestration.schema import LauncherConf
from bar.orchestration.validate import validate_config

PROFILES = ["tiny", "smoke", "paper", "small"]
PAPER_ONLY = {"release_eval"}


@pytest.mark.parametrize("sweep", available_sweeps())
@pytest.mark.parametrize("profile", PROFILES)
def test_every_sweep_composes_with_every_profile(sweep, profile):
    cfg = compose([f"sweep={sweep}", f"profile={profile}", "data.root=/data"])
    assert cfg.experiment == sweep and cfg.profile.name == profile
    if sweep in PAPER_ONLY and profile != "paper":   # the release's checkpoints exist for the paper's presets only
        with pytest.raises(InterpolationKeyError, match="release.generators"):
            OmegaConf.to_container(cfg, resolve=True)
        missing = f"checkpoint: Interpolation key 'release.generators.{cfg.model.preset}' not found"
        with pytest.raises(UserError, match=missing):
            validate_config(cfg)      # one line before any work, not a traceback
        return
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves


def test_sweep_files_say_what_varies():
    cfg = compose(["sweep=bits_vs_rfid"], hydra_node=True)
    grids = cfg.hydra.sweeper.grids
    bits = [int(b) for b in str(grids[0]["tokenizer.bits"]).split(",")]
    channels = [int(c) for c in str(grids[1]["tokenizer.channels"]).split(",")]
    assert {2, 4, 8, 12, 16, 24, 32} <= set(bits) and {1, 2, 4, 8} <= set(channels)
    assert cfg.hydra.sweeper._target_.endswith("BarSweeper")


def test_profiles_set_sizes():
    tiny, smoke, paper = (compose([f"profile={p}", "data.root=/data"]) for p in ("tiny", "smoke", "paper"))
    assert smoke.tokenizer.train.steps < tiny.tokenizer.train.steps < paper.tokenizer.train.steps
    assert paper.data.name == "imagefolder" and paper.data.resolution == 256 and paper.tokenizer.arch == "release"
    assert paper.eval.extractor == "inception" and tiny.eval.extractor == "classifier"


def _identities(*overrides):
    cfg = compose(["profile=smoke", *overrides])
    return point_signature(cfg), tokenizer_signature(cfg), run_params(cfg)


# what may differ between two attempts of one point: a relaunch with these re-runs nothing
NOT_RESULTS = [["paths.outputs=/elsewhere"], ["tracking.uri=sqlite:////x.db"], ["force=true"], ["dry_run=true"],
               ["data.num_workers=4"], ["num_threads=2"], ["launcher.checkpoint_every=7"],
               ["launcher.keep_checkpoints=5"], ["launcher.gpu_mem_gb=40"], ["launcher.gpu_tflops=312"],
               ["launcher.utilization=0.3"], ["launcher.sample_utilization=0.1"], ["launcher.submitted_at=1.5"],
               ["launcher=slurm"], ["launcher=local_parallel"], ["experiment=other"], ["point_label=x"]]


@pytest.mark.parametrize("overrides", NOT_RESULTS, ids=lambda o: o[0])
def test_what_is_not_a_result_leaves_signatures_and_params_alone(overrides):
    point, tokenizer, params = _identities(*overrides)
    base_point, base_tokenizer, base_params = _identities()
    assert point == base_point and tokenizer == base_tokenizer and params == base_params


@pytest.mark.parametrize("overrides,tokenizer_changes", [(["seed=1"], True), (["tokenizer.bits=8"], True),
                                                         (["data.split_seed=1"], True), (["head=bitwise"], False),
                                                         (["generator.train.order_anneal=[0.5,0.75]"], False)])
def test_a_result_key_changes_signatures_and_params(overrides, tokenizer_changes):
    point, tokenizer, params = _identities(*overrides)
    base_point, base_tokenizer, base_params = _identities()
    assert point != base_point and params != base_params
    assert (tokenizer != base_tokenizer) == tokenizer_changes


def test_params_are_what_the_signature_hashes():
    params = run_params(compose(["profile=smoke"]))
    assert "tokenizer.bits" in params and "generator.train.order_anneal" in params and "seed" in params
    assert not [k for k in params if k.split(".")[0] in ("launcher", "tracking", "paths", "hydra", "experiment")]
    assert "data.num_workers" not in params and "num_threads" not in params and "data.name" in params


def test_a_sweepers_config_hashes_like_the_jobs():
    """The sweeper plans points from configs that still carry the `hydra` node; the job's has none."""
    job = compose(["profile=smoke", "sweep=codebook_scaling"])
    sweeper = compose(["profile=smoke", "sweep=codebook_scaling"], hydra_node=True)
    assert "hydra" in sweeper and point_signature(job) == point_signature(sweeper)
    assert run_params(job) == run_params(sweeper)


@pytest.mark.parametrize("launcher", ["local", "local_parallel", "slurm"])
def test_every_launcher_takes_the_schema_defaults(launcher):
    values = compose([f"launcher={launcher}"]).launcher
    defaults = LauncherConf(name=launcher)
    assert {k: values[k] for k in values} == {k: getattr(defaults, k) for k in values}


def test_tokenizer_kinds_share_one_base():
    fsq, ae = compose(["tokenizer=fsq"]).tokenizer, compose(["tokenizer=ae"]).tokenizer
    differ = {k for k in fsq if fsq[k] != ae[k]}
    assert differ == {"kind", "bits", "channels", "loss"}
    assert {k for k in fsq.loss if fsq.loss[k] != ae.loss[k]} == {"kl"}


def test_tracking_uri_default_is_absolute_and_env_wins(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("BAR_OUTPUTS", raising=False)
    uri = compose([]).tracking.uri
    assert uri == f"sqlite:///{ROOT}/outputs/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert compose([]).tracking.uri == "http://127.0.0.1:5999"


def _cli(*args):
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.cli
def test_help_lists_sweeps_and_groups():
    proc = _cli("--help")
    assert proc.returncode == 0
    for line in ("sweep: " + ", ".join(available_sweeps()), "profile: paper, small, smoke, tiny", "tokenizer: ae, fsq"):
        assert line in proc.stdout


SIZES = {"data.num_classes", "tokenizer.size", "tokenizer.loss.gan_start", "tokenizer.train.steps",
         "tokenizer.train.schedule_steps", "tokenizer.train.batch_size", "tokenizer.train.warmup",
         "tokenizer.discriminator.warmup", "tokenizer.discriminator.total", "model.dim", "model.depth", "model.heads",
         "model.head_width", "model.head_depth", "model.class_repeat", "generator.train.steps",
         "generator.train.batch_size", "generator.train.warmup", "generator.sample.num_samples",
         "generator.sample.batch_size", "eval.batch_size", "head.width", "head.depth"}   # head's follow the model's


def test_the_rehearsal_shrink_changes_only_sizes():
    """`profile=paper +shrink=rehearsal` (the slurm tier's rehearsal, tests/orchestration/test_rehearsal.py) differs
    from profile=paper only in sizes: steps, widths, depths, batch, class and sample counts."""
    paper = run_params(compose(["profile=paper", "data.root=/data"]))
    shrunk = run_params(compose(["profile=paper", "+shrink=rehearsal", "data.root=/data"]))
    changed = {k for k in paper.keys() | shrunk.keys() if paper.get(k) != shrunk.get(k)}
    assert changed and changed <= SIZES, changed - SIZES
