"""Nothing a user can type crashes, hangs or silently misleads: every bad input of the list below is one line on
stderr naming the key, the value and what is allowed (exit code 2), within 30 s, with the MLflow store unchanged.

The config-level cases run in process (compose + plan, as run.py does, fast); every case also runs through the CLI
(`slow`: a process start each), and a few CLI cases stay in the default suite for the plumbing (one stderr line,
exit codes, no traceback)."""

import hashlib
import os
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bar import UserError
from bar.orchestration.config import compose
from bar.orchestration.planner import plan_point
from conftest import ROOT, run_cli

# (id, overrides, what the one line must say)
CONFIG_CASES = [
    ("steps-0", ["generator.train.steps=0"], "generator.train.steps=0 must be at least 1"),
    ("batch-0", ["generator.train.batch_size=0"], "generator.train.batch_size=0 must be at least 1"),
    ("num-samples-0", ["generator.sample.num_samples=0"], "generator.sample.num_samples=0 must be at least 1"),
    ("sample-batch-0", ["generator.sample.batch_size=0"], "generator.sample.batch_size=0 must be at least 1"),
    ("tokenizer-steps-0", ["tokenizer.train.steps=0"], "tokenizer.train.steps=0 must be at least 1"),
    ("resolution-15", ["data.resolution=15"], "data.resolution=15 is not a multiple of the tokenizer's stride"),
    ("device-typo", ["device=cpux"], "device='cpux' is not a device"),
    ("negative-cfg", ["generator.sample.cfg_scale=-1"], "generator.sample.cfg_scale=-1.0 must not be negative"),
    ("negative-temperature", ["generator.sample.temperature=-0.5"], "generator.sample.temperature=-0.5 must not be"),
    ("batch-over-dataset", ["generator.train.batch_size=5000"], "larger than the training split (1500 images)"),
    ("tokenizer-batch-over-dataset", ["tokenizer.train.batch_size=2000"], "tokenizer.train.batch_size=2000 is larger"),
    ("imagefolder-no-root", ["data=imagefolder"], "data=imagefolder needs data.root"),
    ("bad-stage", ["stage=train"], "stage='train' is not one of"),
    ("bad-extractor", ["eval.extractor=vgg"], "eval.extractor='vgg' is not one of"),
    ("bits-300", ["tokenizer.bits=300"], "tokenizer.bits=300 is out of range"),
    ("allocation-sum", ["tokenizer.bits=16", "generator.sample.allocation=[2,2,5]"],
     "allocation [2,2,5] sums to 9, bits_per_token is 16"),
]
if not torch.cuda.is_available():
    CONFIG_CASES.append(("cuda-without-gpu", ["device=cuda"], "device=cuda but this machine has no usable CUDA GPU"))


def _plan(overrides, tmp_path):
    cfg = compose(["profile=smoke", f"paths.outputs={tmp_path}", *overrides])
    return plan_point(cfg, skip_done=False)


@pytest.mark.parametrize("case,overrides,message", CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_config_case_is_one_line_before_any_work(case, overrides, message, tmp_path):
    with pytest.raises(UserError) as err:
        _plan(overrides, tmp_path)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert not any(tmp_path.iterdir())        # nothing created, nothing trained


# ----------------------------------------------------------------------------------------------------- files
def _folder(root: Path, classes: int, per_class: int = 3, corrupt: bool = False) -> Path:
    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray((rng.random((40, 40, 3)) * 255).astype(np.uint8)).save(root / f"c{c}" / f"{i}.png")
    if corrupt:
        (root / "c0" / "0.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    return root


def _generator_checkpoint(tmp_path, preset_overrides=()) -> Path:
    """A real checkpoint of this project's format (as the generator stage writes it), no training needed."""
    from omegaconf import OmegaConf

    from bar.orchestration.build import build_generator
    from bar.orchestration.stages.generator import save_generator

    cfg = compose(["profile=smoke", *preset_overrides])
    return save_generator(build_generator(cfg), OmegaConf.to_container(cfg, resolve=True), tmp_path / "g.pt")


def _file_cases(tmp_path: Path) -> dict:
    """id -> (overrides, message, env): cases that need files written first."""
    ckpt = _generator_checkpoint(tmp_path)
    (tmp_path / "b8").mkdir()
    other_bits = _generator_checkpoint(tmp_path / "b8", ["tokenizer.bits=8"])
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(ckpt.read_bytes()[:-100])
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(os.urandom(4096))
    tokenizer = tmp_path / "tokenizer.pt"
    torch.save({"state_dict": {"encoder.net.0.weight": torch.zeros(1)}, "config": {"kind": "fsq"}}, tokenizer)
    weights = tmp_path / "inception.pth"
    weights.write_bytes(os.urandom(1000))
    sample = ["stage=sample", "generator.sample.num_samples=4", "generator.sample.batch_size=4"]
    folder = lambda name, n, **kw: _folder(tmp_path / name, n, **kw)   # noqa: E731
    return {
        "checkpoint-garbage": (sample + [f"checkpoint={garbage}"], "is not a readable torch checkpoint", {}),
        "checkpoint-truncated": (sample + [f"checkpoint={truncated}"], "checksum mismatch", {}),
        "checkpoint-other-preset": (sample + [f"checkpoint={ckpt}", "model=tiny"],
                                    "was trained with model.preset=smoke, this run has tiny", {}),
        "checkpoint-other-bits": (sample + [f"checkpoint={other_bits}"],
                                  "was trained with tokenizer.bits=8, this run has 16", {}),
        "checkpoint-tokenizer": (sample + [f"checkpoint={tokenizer}"], "is a tokenizer checkpoint", {}),
        "inception-garbage": (["eval.extractor=inception", f"eval.inception_weights={weights}"],
                              "is not a weights file", {}),
        "classes-fewer-than-folders": (["data=imagefolder", f"data.root={folder('three', 3)}", "data.num_classes=2",
                                        "data.resolution=16"], "has 3 class folder(s) but data.num_classes=2", {}),
        "one-folder-default-classes": (["data=imagefolder", f"data.root={folder('one', 1)}", "data.resolution=16"],
                                       "has 1 class folder(s) but data.num_classes=1000", {}),
    }


def _store_cases(tmp_path: Path) -> dict:
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    readonly.chmod(stat.S_IRUSR | stat.S_IXUSR)
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(b"this is not sqlite" * 100)
    return {
        "store-unwritable": ([], "is not writable", {"MLFLOW_TRACKING_URI": f"sqlite:///{readonly}/sub/m.db"}),
        "store-under-a-file": ([], f"{a_file} is a file", {"MLFLOW_TRACKING_URI": f"sqlite:///{a_file}/m.db"}),
        "store-corrupt": ([], "is not an sqlite database", {"MLFLOW_TRACKING_URI": f"sqlite:///{corrupt}"}),
        "server-down": (["tracking=server", "tracking.port=9"], "does not answer", {}),
        "outputs-a-file": ([], "Not a directory", {"BAR_OUTPUTS": str(a_file / "out")}),
        "outputs-readonly": ([], "is not writable", {"BAR_OUTPUTS": str(readonly / "out")}),
    }


def _digest(outputs: Path) -> str | None:
    db = outputs / "mlflow.db"
    if not db.exists():
        return None
    with sqlite3.connect(db) as conn:
        rows = conn.execute("select run_uuid, status from runs order by run_uuid").fetchall()
    return hashlib.sha256(repr(rows).encode()).hexdigest()


def _check_cli(args, message, tmp_path, env=None, code=2):
    outputs = tmp_path / "outputs"
    outputs.mkdir(exist_ok=True)
    before = _digest(outputs)
    start = time.time()
    proc = run_cli(["profile=smoke", *args], outputs, env_extra=env, timeout=120)
    took = time.time() - start
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == code, proc.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.stderr[-3000:]
    assert "Traceback" not in proc.stdout + proc.stderr
    assert took < 30, f"{took:.0f} s"
    assert _digest(outputs) == before and not (outputs / "cache").exists()


@pytest.mark.cli
@pytest.mark.parametrize("case", ["steps-0", "negative-cfg", "batch-over-dataset"])
def test_cli_prints_one_line(case, tmp_path):
    overrides, message = next((o, m) for c, o, m in CONFIG_CASES if c == case)
    _check_cli(overrides, message, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("case,overrides,message", CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_every_config_case_through_the_cli(case, overrides, message, tmp_path):
    _check_cli(overrides, message, tmp_path)


FILE_CASES = ["checkpoint-garbage", "checkpoint-truncated", "checkpoint-other-preset", "checkpoint-other-bits",
              "checkpoint-tokenizer", "inception-garbage", "classes-fewer-than-folders", "one-folder-default-classes"]
STORE_CASES = ["store-unwritable", "store-under-a-file", "store-corrupt", "server-down", "outputs-a-file",
               "outputs-readonly"]


@pytest.mark.parametrize("case", FILE_CASES)
def test_file_case_in_process(case, tmp_path):
    overrides, message, _ = _file_cases(tmp_path)[case]
    with pytest.raises(UserError) as err:
        _plan(overrides, tmp_path / "outputs")
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.slow
@pytest.mark.parametrize("case", FILE_CASES + STORE_CASES)
def test_file_and_store_cases_through_the_cli(case, tmp_path):
    if case.startswith(("store-unwritable", "outputs-readonly")) and os.geteuid() == 0:
        pytest.skip("root writes anywhere: a read-only folder cannot be simulated")
    cases = {**_file_cases(tmp_path), **_store_cases(tmp_path)} if case in STORE_CASES else _file_cases(tmp_path)
    overrides, message, env = cases[case]
    _check_cli(overrides, message, tmp_path, env)


def test_store_checks_in_process(tmp_path):
    from bar.orchestration import tracking

    for case in ("store-under-a-file", "store-corrupt", "server-down"):
        (tmp_path / case).mkdir()
        overrides, message, env = _store_cases(tmp_path / case)[case]
        uri = env.get("MLFLOW_TRACKING_URI") or "http://127.0.0.1:9"
        start = time.time()
        with pytest.raises(UserError) as err:
            tracking.check_store(uri)
        assert message in str(err.value) and "\n" not in str(err.value) and time.time() - start < 10


@pytest.mark.cli
def test_launcher_without_m_and_dry_run_without_m(tmp_path):
    _check_cli(["launcher=slurm"], "launcher=slurm launches sweeps: add -m", tmp_path)
    proc = run_cli(["profile=smoke", "dry_run=true"], tmp_path)
    assert proc.returncode == 0 and "dry run, would run" in proc.stderr and "micro-batch 8" in proc.stderr
    assert not (tmp_path / "cache").exists() and not (tmp_path / "mlflow.db").exists()


@pytest.mark.cli
def test_unreadable_image_is_one_line_naming_the_file(tmp_path):
    root = _folder(tmp_path / "images", 2, per_class=4, corrupt=True)
    proc = run_cli(["profile=smoke", "data=imagefolder", f"data.root={root}", "data.num_classes=2",
                    "data.resolution=16", "stage=tokenizer", "tokenizer.train.batch_size=8",
                    "eval.classifier.batch_size=8"], tmp_path / "out",
                   timeout=120)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error")]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
    assert "cannot read image" in lines[0] and "c0/0.png" in lines[0]
    assert "Traceback" not in proc.stderr


@pytest.mark.cli
def test_make_figures_on_a_corrupt_store_is_one_line(tmp_path):
    corrupt = tmp_path / "m.db"
    corrupt.write_bytes(b"garbage" * 200)
    proc = subprocess.run([sys.executable, str(ROOT / "analysis" / "make_figures.py"), "--tracking-uri",
                           f"sqlite:///{corrupt}", "--out", str(tmp_path / "figs")], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "not an sqlite database" in lines[0], proc.stderr[-2000:]
