import subprocess
import sys

import pytest
from omegaconf import OmegaConf
from omegaconf.errors import InterpolationKeyError

from bar import UserError
from bar.orchestration.config import available_sweeps, compose, point_signature, tokenizer_signature
from bar.orchestration.validate import validate_config
from conftest import ROOT

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


def test_signatures_ignore_paths_and_tracking_but_not_results():
    base = compose(["profile=smoke"])
    moved = compose(["profile=smoke", "paths.outputs=/elsewhere", "tracking.uri=sqlite:////x.db", "force=true"])
    assert point_signature(base) == point_signature(moved)
    assert tokenizer_signature(base) == tokenizer_signature(moved)
    assert tokenizer_signature(base) != tokenizer_signature(compose(["profile=smoke", "tokenizer.bits=8"]))
    assert tokenizer_signature(base) != tokenizer_signature(compose(["profile=smoke", "seed=1"]))


def test_tracking_uri_default_is_absolute_and_env_wins(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("BAR_OUTPUTS", raising=False)
    uri = compose([]).tracking.uri
    assert uri == f"sqlite:///{ROOT}/outputs/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert compose([]).tracking.uri == "http://127.0.0.1:5999"


@pytest.mark.parametrize("overrides,message", [
    (["tokenizer.bits=0"], "tokenizer.bits=0 is out of range"),
    (["tokenizer.bits=300"], "tokenizer.bits=300 is out of range"),
    (["data=imagefolder", "data.root=/no/such/folder"], "data folder /no/such/folder does not exist"),
    (["eval.extractor=inception", "eval.inception_weights=/no/weights.pth"], "Inception weights not found"),
    (["tokenizer=ae", "tokenizer.channels=0"], "tokenizer.channels=0"),
])
def test_bad_config_is_one_line_error(overrides, message):
    with pytest.raises(UserError) as err:
        validate_config(compose(overrides))
    assert message in str(err.value) and "\n" not in str(err.value)


def _cli(*args):
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize("args,message", [
    (["-m", "sweep=no_such_sweep"], "unknown sweep 'no_such_sweep'"),
    (["tokenizer.bits=300", "profile=smoke"], "tokenizer.bits=300 is out of range"),
    (["-m", "sweep=bits_vs_rfid", "profile=smoke", "tokenizer.bits=0"], "tokenizer.bits=0 is out of range"),
    (["data=imagefolder", "data.root=/no/such/folder"], "data folder /no/such/folder does not exist"),
    (["eval.extractor=inception", "eval.inception_weights=/missing.pth"], "Inception weights not found"),
])
def test_cli_bad_input_is_one_line_and_nothing_runs(args, message, tmp_path):
    proc = _cli(*args, f"paths.outputs={tmp_path}") if not args[0].startswith("-") or "sweep=no_such_sweep" not in args \
        else _cli(*args)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: ") and message in lines[-1], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "cache").exists()  # nothing trained


def test_help_lists_sweeps_and_groups():
    proc = _cli("--help")
    assert proc.returncode == 0
    for line in ("sweep: " + ", ".join(available_sweeps()), "profile: paper, small, smoke, tiny", "tokenizer: ae, fsq"):
        assert line in proc.stdout
