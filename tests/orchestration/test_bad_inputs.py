"""Nothing a user can type crashes, hangs or silently misleads: every bad input of the tables below is one line on
stderr naming the key, the value and what is allowed (exit code 2), within 30 s, with the MLflow store unchanged.

One table per class of input, each case checked in process (compose + plan, as run.py does: fast):
    CONFIG_CASES   choices, devices, tiling, batches against the data
    RANGE_CASES    every number and list length against its rule (bar.orchestration.rules.RANGES)
    FILE_CASES     file inputs opened far enough to know their kind, shape and size (checkpoints, tokenizers, the
                   frozen networks' weights, Inception weights, ADM reference batches)
    UNUSED_CASES   a setting the head, protocol or stage does not read: an error, or a warning (UNUSED_WARNINGS);
                   a preset's default that does not apply says nothing (SILENT_CASES)
    IMAGE_CASES    image folders: class folders without images, decompression bombs, unreadable images in workers
    STORE_CASES    MLflow stores and outputs folders
Every case also runs through the CLI (`slow`: a process start each); a few CLI cases stay in the `cli` tier for the
plumbing (one stderr line, exit codes, no traceback)."""

import hashlib
import logging
import os
import sqlite3
import stat
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from bar import UserError
from bar.orchestration.config import compose, point_signature
from bar.orchestration.planner import plan_point
from bar.orchestration.rules import check_value
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
    ("imagefolder-missing-root", ["data=imagefolder", "data.root=/no/such/folder"],
     "data folder /no/such/folder does not exist"),
    ("bad-stage", ["stage=train"], "stage='train' is not one of"),
    ("bad-extractor", ["eval.extractor=vgg"], "eval.extractor='vgg' is not one of"),
    ("bits-0", ["tokenizer.bits=0"], "tokenizer.bits=0 is out of range"),
    ("bits-300", ["tokenizer.bits=300"], "tokenizer.bits=300 is out of range"),
    ("channels-0", ["tokenizer=ae", "tokenizer.channels=0"], "tokenizer.channels=0"),
    ("inception-missing", ["eval.extractor=inception", "eval.inception_weights=/no/weights.pth"],
     "Inception weights not found"),
    ("allocation-sum", ["tokenizer.bits=16", "generator.sample.allocation=[2,2,5]"],
     "allocation [2,2,5] sums to 9, bits_per_token is 16"),
]
if not torch.cuda.is_available():
    CONFIG_CASES.append(("cuda-without-gpu", ["device=cuda"], "device=cuda but this machine has no usable CUDA GPU"))

# every number and list length the schema holds, against its one rule
RANGE_CASES = [
    ("betas-one", ["generator.train.betas=[0.9]"], "generator.train.betas=[0.9] must be two numbers in [0, 1)"),
    ("tokenizer-betas-three", ["tokenizer.train.betas=[0.9,0.99,0.999]"], "tokenizer.train.betas=[0.9, 0.99, 0.999]"),
    ("discriminator-beta-1", ["tokenizer.discriminator.betas=[1.0,0.5]"], "tokenizer.discriminator.betas=[1.0, 0.5]"),
    ("order-anneal-one", ["generator.train.order_anneal=[5]"], "generator.train.order_anneal=[5.0] must be two"),
    ("order-anneal-steps", ["generator.train.order_anneal=[1500,2250]"],
     "order_anneal=[1500.0, 2250.0] must be two fractions"),
    ("order-anneal-reversed", ["generator.train.order_anneal=[0.75,0.5]"], "0 <= start <= end <= 1"),
    ("order-anneal-half", ["generator.train.order_anneal=[0.5]"], "must be two fractions of generator.train.steps"),
    ("allocation-shape-empty", ["generator.sample.allocation_shape=[]"],
     "generator.sample.allocation_shape=[] must be a non-empty list of positive integers"),
    ("allocation-shape-zero", ["generator.sample.allocation_shape=[0,4]"], "allocation_shape=[0, 4] must be a non-"),
    ("allocation-empty", ["generator.sample.allocation=[]"], "allocation=[] must be a non-empty list"),
    ("seed-negative", ["seed=-1"], "seed=-1 must not be negative"),
    ("sample-seed-negative", ["generator.sample.seed=-1"], "generator.sample.seed=-1 must not be negative"),
    ("split-seed-negative", ["data.split_seed=-1"], "data.split_seed=-1 must not be negative"),
    ("val-size-0", ["data.val_size=0"], "data.val_size=0 must be at least 1"),
    ("num-workers-negative", ["data.num_workers=-1"], "data.num_workers=-1 must not be negative"),
    ("in-channels-2", ["data.in_channels=2"], "data.in_channels=2 is not one of 1, 3"),
    ("dropout-1.5", ["model.dropout=1.5"], "model.dropout=1.5 must be in [0, 1)"),
    ("label-dropout-1", ["model.label_dropout=1.0"], "model.label_dropout=1.0 must be in [0, 1)"),
    ("mlp-ratio-0", ["model.mlp_ratio=0"], "model.mlp_ratio=0.0 must be positive"),
    ("generator-lr-0", ["generator.train.lr=0"], "generator.train.lr=0.0 must be positive"),
    ("tokenizer-lr-negative", ["tokenizer.train.lr=-1"], "tokenizer.train.lr=-1.0 must be positive"),
    ("end-lr-negative", ["generator.train.end_lr=-1e-5"], "generator.train.end_lr=-1e-05 must not be negative"),
    ("ema-1.5", ["tokenizer.train.ema=1.5"], "tokenizer.train.ema=1.5 must be in [0, 1)"),
    ("schedule-steps-0", ["tokenizer.train.schedule_steps=0"], "tokenizer.train.schedule_steps=0 must be at least 1"),
    ("loss-negative", ["tokenizer.loss.l1=-1"], "tokenizer.loss.l1=-1.0 must not be negative"),
    ("memory-budget-negative", ["generator.memory_budget_gb=-1"], "generator.memory_budget_gb=-1.0 must be positive"),
    ("classifier-lr-0", ["eval.classifier.lr=0"], "eval.classifier.lr=0.0 must be positive"),
    ("utilization-0", ["launcher.utilization=0"], "launcher.utilization=0.0 must be in (0, 1]"),
    ("port-70000", ["tracking.port=70000"], "tracking.port=70000 must be in [1, 65535]"),
    ("head-fourier-0", ["head.fourier_freqs=0"], "head.fourier_freqs=0 must be at least 1"),
    ("diffusion-steps-0", ["tokenizer=ae", "head=diffusion", "head.sampling_steps=0"],
     "head.sampling_steps=0 must be at least 1"),
    ("diffusion-sampler", ["tokenizer=ae", "head=diffusion", "head.sampler=euler"], "head.sampler='euler' is not one"),
]


def _plan(overrides, tmp_path):
    cfg = compose(["profile=smoke", f"paths.outputs={tmp_path}", *overrides])
    return plan_point(cfg, skip_done=False)


def _one_line_error(overrides, message, outputs):
    with pytest.raises(UserError) as err:
        _plan(overrides, outputs)
    assert message in str(err.value) and "\n" not in str(err.value), str(err.value)


@pytest.mark.parametrize("case,overrides,message", CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_config_case_is_one_line_before_any_work(case, overrides, message, tmp_path):
    _one_line_error(overrides, message, tmp_path)
    assert not any(tmp_path.iterdir())        # nothing created, nothing trained


def test_the_classifier_batch_counts_only_where_a_classifier_is_trained():
    """eval.extractor=inception (the paper profile's) trains no classifier: its batch is not held against the
    training split (the profile=paper rehearsal on 32 images, tests/orchestration/test_rehearsal.py, failed on it)."""
    from bar.orchestration.validate import _check_batches

    big = ["profile=smoke", "eval.classifier.batch_size=5000"]
    _check_batches(compose([*big, "eval.extractor=inception"]), 1)
    with pytest.raises(UserError, match="eval.classifier.batch_size=5000 is larger than the training split"):
        _check_batches(compose(big), 1)


@pytest.mark.parametrize("case,overrides,message", RANGE_CASES, ids=[c[0] for c in RANGE_CASES])
def test_range_case_is_one_line_before_any_work(case, overrides, message, tmp_path):
    _one_line_error(overrides, message, tmp_path)
    assert not any(tmp_path.iterdir())


def test_a_negative_sweep_batch_is_refused_before_anything_is_launched(tmp_path, capsys):
    from bar.orchestration import sweeps

    base = ["profile=smoke", f"paths.outputs={tmp_path}", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db"]
    for size in (-5, 0):
        sweeper = SimpleNamespace(config=compose(base, hydra_node=True), grids=[], params={}, max_batch_size=size,
                                  hydra_context=None, launcher=None)
        with pytest.raises(SystemExit) as stop:
            sweeps.run_sweep(sweeper, ["tokenizer.bits=4,8"])
        lines = capsys.readouterr().err.strip().splitlines()
        assert stop.value.code == 2 and len(lines) == 1
        assert f"hydra.sweeper.max_batch_size={size} must be at least 1" in lines[0] and "-1" in lines[0]
    assert not any(tmp_path.iterdir())
    for whole_sweep in (-1, None, 1):                 # documented: -1 and null launch the whole sweep at once
        check_value("hydra.sweeper.max_batch_size", whole_sweep)


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


def _bomb_png(path: Path, width: int = 20_000, height: int = 10_000) -> Path:
    """A valid PNG header declaring 200 million pixels (PIL refuses anything over 2 x MAX_IMAGE_PIXELS), 100 bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


# the release's formats at a small size (sampling from them: tests/orchestration/test_release_eval.py)
PAPER_SMALL = ["profile=paper", "device=cpu", "model=bar_b", "model.compile=false", "model.dim=32", "model.depth=1",
               "model.heads=2", "model.head_width=32", "model.head_depth=1", "tokenizer.size=tiny"]


def _generator_checkpoint(folder: Path, overrides=()) -> Path:
    """A real checkpoint of this project's format (as the generator stage writes it), no training needed."""
    from omegaconf import OmegaConf

    from bar.orchestration.build import build_generator
    from bar.orchestration.stages.generator import save_generator

    cfg = compose(["profile=smoke", *overrides])
    folder.mkdir(parents=True, exist_ok=True)
    return save_generator(build_generator(cfg), OmegaConf.to_container(cfg, resolve=True), folder / "g.pt")


def _tokenizer_checkpoint(folder: Path, overrides=()) -> Path:
    """This project's tokenizer file, as the tokenizer stage writes it (untrained weights)."""
    from omegaconf import OmegaConf

    from bar.core.files import save_atomic
    from bar.orchestration.build import build_tokenizer

    cfg = compose(["profile=smoke", *overrides])
    blob = {"state_dict": build_tokenizer(cfg).state_dict(), "config": OmegaConf.to_container(cfg.tokenizer)}
    return save_atomic(blob, folder / "tokenizer.pt")


def _garbage(path: Path, size: int = 4096) -> Path:
    path.write_bytes(os.urandom(size))
    return path


def _truncated(source: Path, path: Path) -> Path:
    """A copy cut short, its checksum file copied along (bar.core.files keeps it beside the file)."""
    from bar.core.files import checksum_path

    path.write_bytes(source.read_bytes()[:-100])
    checksum_path(path).write_text(checksum_path(source).read_text())
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> SimpleNamespace:
    """Every input file the cases read, written once: this project's checkpoints (as its stages write them), the
    release's formats at a small size, Inception weights, ADM reference batches, and broken copies of them."""
    from bar.eval.adm import InceptionADM
    from bar.model.release_keys import to_release_state_dict
    from bar.orchestration.build import build_generator
    from release_files import release_state_dict

    root = tmp_path_factory.mktemp("inputs")
    f = SimpleNamespace(root=root, garbage=_garbage(root / "garbage.pt"))
    f.generator = _generator_checkpoint(root / "g")
    f.generator_bits8 = _generator_checkpoint(root / "g8", ["tokenizer.bits=8"])
    f.generator_head_depth2 = _generator_checkpoint(root / "gd2", ["model.head_depth=2"])
    f.generator_truncated = _truncated(f.generator, root / "g_truncated.pt")
    f.tokenizer = _tokenizer_checkpoint(root / "t")
    f.tokenizer_bits8 = _tokenizer_checkpoint(root / "t8", ["tokenizer.bits=8"])
    f.tokenizer_truncated = _truncated(f.tokenizer, root / "t_truncated.pt")
    f.tokenizer_stub = root / "tokenizer_stub.pt"
    torch.save({"state_dict": {"encoder.net.0.weight": torch.zeros(1)}, "config": {"kind": "fsq"}}, f.tokenizer_stub)
    f.release_generator = root / "bar_b.bin"
    torch.save(to_release_state_dict(build_generator(compose(PAPER_SMALL))), f.release_generator)
    f.release_tokenizer, f.release_tokenizer_10bits = root / "fsq16.bin", root / "fsq10.bin"
    torch.save(release_state_dict(bits=16, res=256), f.release_tokenizer)
    torch.save(release_state_dict(bits=10, res=256), f.release_tokenizer_10bits)
    f.inception, f.inception_partial = root / "inception.pth", root / "inception_partial.pth"
    torch.save(InceptionADM.random(0).net.state_dict(), f.inception)
    torch.save({"Conv2d_1a_3x3.conv.weight": torch.zeros(32, 3, 3, 3)}, f.inception_partial)
    f.vgg16_other = root / "vgg16_other.pth"
    torch.save({"features.0.weight": torch.zeros(3, 3, 3, 3)}, f.vgg16_other)
    f.reference, f.reference_8px = root / "ref.npz", root / "ref8.npz"
    np.savez(f.reference, arr_0=np.zeros((4, 16, 16, 3), np.uint8))
    np.savez(f.reference_8px, arr_0=np.zeros((4, 8, 8, 3), np.uint8))
    f.images = _folder(root / "images", 3)
    return f


SAMPLE = ["stage=sample", "generator.sample.num_samples=4", "generator.sample.batch_size=4"]
IMAGES = ["data=imagefolder", "data.resolution=16", "data.num_classes=3", "stage=tokenizer",
          "tokenizer.train.batch_size=2", "eval.classifier.batch_size=2"]


def _paper_sample(f, *overrides):
    return [*PAPER_SMALL, *SAMPLE, f"checkpoint={f.release_generator}", *overrides]


def _paper_tokenizer_training(f, *overrides):
    """The release's architecture trained on an image folder, no frozen network but SigLIP2."""
    return [*PAPER_SMALL, f"data.root={f.images}", f"data.val_root={f.images}",
            "data.num_classes=3", "data.resolution=32", "stage=tokenizer",
            "tokenizer.loss.perceptual=0", "tokenizer.loss.gram=0", "tokenizer.loss.gan=0", "eval.extractor=classifier",
            "tokenizer.train.batch_size=3", "eval.classifier.batch_size=3", *overrides]


# id -> files -> (overrides, what the one line must say)
FILE_CASES = {
    "checkpoint-garbage": lambda f: (SAMPLE + [f"checkpoint={f.garbage}"], "is not a readable torch"),
    "checkpoint-truncated": lambda f: (SAMPLE + [f"checkpoint={f.generator_truncated}"], "checksum mismatch"),
    "checkpoint-other-preset": lambda f: (SAMPLE + [f"checkpoint={f.generator}", "model=tiny"],
                                          "was trained with model.preset=smoke, this run has tiny"),
    "checkpoint-other-bits": lambda f: (SAMPLE + [f"checkpoint={f.generator_bits8}"],
                                        "was trained with tokenizer.bits=8, this run has 16"),
    "checkpoint-other-head-depth": lambda f: (SAMPLE + [f"checkpoint={f.generator_head_depth2}"],
                                              "was trained with model.head_depth=2, this run has 1"),
    "checkpoint-tokenizer": lambda f: (SAMPLE + [f"checkpoint={f.tokenizer_stub}"], "is a tokenizer checkpoint"),
    "release-checkpoint-other-size": lambda f: (_paper_sample(f, "model.dim=64"), "does not fit this model"),
    "tokenizer-garbage": lambda f: ([f"tokenizer.checkpoint={f.garbage}"], "is not a readable torch"),
    "tokenizer-truncated": lambda f: ([f"tokenizer.checkpoint={f.tokenizer_truncated}"], "checksum mismatch"),
    "tokenizer-is-a-generator": lambda f: ([f"tokenizer.checkpoint={f.generator}"], "is a generator checkpoint"),
    "tokenizer-other-bits": lambda f: ([f"tokenizer.checkpoint={f.tokenizer_bits8}"],
                                       "was trained with tokenizer.bits=8, this run has 16"),
    "tokenizer-is-the-release-s": lambda f: ([f"tokenizer.checkpoint={f.release_tokenizer}"],
                                             "tokenizer.arch=release"),
    "release-tokenizer-garbage": lambda f: (_paper_sample(f, f"tokenizer.checkpoint={f.garbage}"),
                                            "is not a readable torch"),
    "release-tokenizer-other-bits": lambda f: (_paper_sample(f, f"tokenizer.checkpoint={f.release_tokenizer_10bits}"),
                                               "(bits per token differ)"),
    "release-tokenizer-is-a-generator": lambda f: (_paper_sample(f, f"tokenizer.checkpoint={f.release_generator}"),
                                                   "is a generator checkpoint"),
    "siglip2-garbage": lambda f: (_paper_tokenizer_training(f, f"tokenizer.weights.siglip2={f.garbage}"),
                                  "tokenizer.weights.siglip2"),
    "siglip2-is-a-generator": lambda f: (
        _paper_tokenizer_training(f, f"tokenizer.weights.siglip2={f.release_generator}"), "is a generator checkpoint"),
    "vgg16-garbage": lambda f: (["tokenizer.loss.gram=1", f"tokenizer.weights.vgg16={f.garbage}"],
                                "tokenizer.weights.vgg16: cannot read"),
    "vgg16-other-network": lambda f: (["tokenizer.loss.gram=1", f"tokenizer.weights.vgg16={f.vgg16_other}"],
                                      "tokenizer.weights.vgg16"),
    "dino-garbage": lambda f: (["tokenizer.loss.gan=0.1", f"tokenizer.weights.dino_vits={f.garbage}"],
                               "tokenizer.weights.dino_vits: cannot read"),
    "inception-garbage": lambda f: (["eval.extractor=inception", f"eval.inception_weights={f.garbage}"],
                                    "is not a weights file"),
    "inception-missing-keys": lambda f: (["eval.extractor=inception", f"eval.inception_weights={f.inception_partial}"],
                                         "missing"),
    "reference-not-npz": lambda f: (SAMPLE + [f"checkpoint={f.generator}", f"tokenizer.checkpoint={f.tokenizer}",
                                              "eval.protocol=adm", f"eval.inception_weights={f.inception}",
                                              f"eval.reference={f.garbage}"], "is not an npz"),
    "reference-other-resolution": lambda f: (SAMPLE + [f"checkpoint={f.generator}",
                                                       f"tokenizer.checkpoint={f.tokenizer}", "eval.protocol=adm",
                                                       f"eval.inception_weights={f.inception}",
                                                       f"eval.reference={f.reference_8px}"], "8x8"),
}


@pytest.mark.parametrize("case", list(FILE_CASES))
def test_file_case_in_process(case, files, tmp_path):
    overrides, message = FILE_CASES[case](files)
    _one_line_error(overrides, message, tmp_path / "outputs")


def test_good_files_pass(files, tmp_path):
    """The good files of the cases above are accepted (what each bad case differs from)."""
    _plan(SAMPLE + [f"checkpoint={files.generator}", f"tokenizer.checkpoint={files.tokenizer}", "eval.protocol=adm",
                    f"eval.inception_weights={files.inception}", f"eval.reference={files.reference}"], tmp_path)
    _plan(_paper_sample(files, f"tokenizer.checkpoint={files.release_tokenizer}", "eval.protocol=fidelity"), tmp_path)
    _plan(_paper_tokenizer_training(files, f"tokenizer.weights.siglip2={files.release_tokenizer}"), tmp_path)
    _plan([f"tokenizer.checkpoint={files.tokenizer}"], tmp_path)


# ----------------------------------------------------------------------------------------------------- unused
# a setting nothing reads in this point: an error where the user asked for something that will not happen
UNUSED_CASES = {
    "reference-without-adm": lambda f: ([f"eval.reference={f.reference}"], "eval.protocol=adm"),
    "allocation-with-softmax": lambda f: (["head=softmax", "generator.sample.allocation=[8,8]"], "head=softmax"),
    "adm-without-a-decoder": lambda f: (SAMPLE + [f"checkpoint={f.generator}", "eval.protocol=adm",
                                                  f"eval.reference={f.reference}",
                                                  f"eval.inception_weights={f.inception}"], "no tokenizer"),
    "checkpoint-with-stage-all": lambda f: ([f"checkpoint={f.generator}"], "stage=sample"),
    "channels-with-fsq": lambda f: (["tokenizer.channels=4"], "tokenizer.channels=4"),
    "bits-with-ae": lambda f: (["tokenizer=ae", "head=diffusion", "tokenizer.bits=8"], "tokenizer.bits=8"),
    "kl-with-fsq": lambda f: (["tokenizer.kl=true"], "tokenizer.kl=True"),
    "size-with-conv": lambda f: (["tokenizer.size=tiny"], "tokenizer.size='tiny'"),
    "root-with-digits": lambda f: ([f"data.root={f.images}"], "data.root="),
    "val-size-with-imagefolder": lambda f: ([*IMAGES, f"data.root={f.images}", "data.val_size=2"], "data.val_size=2"),
    "adm-with-stage-tokenizer": lambda f: (["stage=tokenizer", "eval.protocol=adm", f"eval.reference={f.reference}",
                                            f"eval.inception_weights={f.inception}"], "eval.protocol='adm'"),
    "gfid-every-with-stage-tokenizer": lambda f: (["stage=tokenizer", "eval.gfid_every=2"], "eval.gfid_every=2"),
    "rfid-every-with-a-tokenizer-file": lambda f: ([f"tokenizer.checkpoint={f.tokenizer}", "eval.rfid_every=2"],
                                                   "eval.rfid_every=2"),
    "siglip2-with-conv": lambda f: ([f"tokenizer.weights.siglip2={f.release_tokenizer}"], "tokenizer.arch=release"),
}

# ... and a one-line warning where it is only ignored; never part of the signature (what the point computes)
UNUSED_WARNINGS = {
    "allocation-shape-with-softmax": (lambda f: ["head=softmax", "generator.sample.allocation_shape=[2,2]"],
                                      "generator.sample.allocation_shape=[2, 2]"),
    "frozen-network-not-used": (lambda f: [f"tokenizer.weights.dino_vits={f.garbage}"], "tokenizer.weights.dino_vits"),
    "inception-not-used": (lambda f: [f"eval.inception_weights={f.inception}"], "eval.inception_weights"),
    "sample-without-a-decoder": (lambda f: SAMPLE + [f"checkpoint={f.generator}"], "tokens only"),
}

# a preset's default that does not apply says nothing
SILENT_CASES = {"preset-allocation-shape-with-softmax": ["head=softmax"],
                "preset-allocation-shape-with-bitwise": ["head=bitwise"],
                "defaults": []}


@pytest.mark.parametrize("case", list(UNUSED_CASES))
def test_unused_setting_is_an_error(case, files, tmp_path):
    overrides, message = UNUSED_CASES[case](files)
    _one_line_error(overrides, message, tmp_path)


def _warnings(caplog, overrides, tmp_path) -> list[str]:
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="bar"):
        _plan(overrides, tmp_path)
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize("case", list(UNUSED_WARNINGS))
def test_ignored_setting_is_one_warning_and_not_in_the_signature(case, files, caplog, tmp_path):
    build, message = UNUSED_WARNINGS[case]
    overrides = build(files)
    warned = _warnings(caplog, overrides, tmp_path)
    assert len(warned) == 1 and message in warned[0] and "\n" not in warned[0], warned
    key = overrides[-1].split("=")[0]
    without = [o for o in overrides if not o.startswith(f"{key}=")]
    if key not in ("checkpoint",):     # the checkpoint is what a sample point draws from
        base = compose(["profile=smoke", f"paths.outputs={tmp_path}", *without])
        assert point_signature(compose(["profile=smoke", f"paths.outputs={tmp_path}", *overrides])) == \
            point_signature(base)


@pytest.mark.parametrize("case", list(SILENT_CASES))
def test_a_preset_default_that_does_not_apply_says_nothing(case, caplog, tmp_path):
    assert _warnings(caplog, SILENT_CASES[case], tmp_path) == []


# ----------------------------------------------------------------------------------------------------- image folders
def _bomb_folder(root: Path) -> Path:
    _folder(root, 2, per_class=4)
    _bomb_png(root / "c1" / "9.png")
    return root


def _subfolder_class(root: Path) -> Path:
    _folder(root, 3)
    (root / "c1" / "sub").mkdir()
    for image in sorted((root / "c1").glob("*.png")):
        image.rename(root / "c1" / "sub" / image.name)
    return root


def _empty_class(root: Path) -> Path:
    _folder(root, 2)
    (root / "c2").mkdir()
    return root


def _other_val_classes(root: Path) -> Path:
    _folder(root / "train", 3)
    _folder(root / "val", 3)
    (root / "val" / "c2").rename(root / "val" / "zebra")
    return root


# id -> (folder builder, extra overrides, what the one line must say)
IMAGE_CASES = {
    "empty-class-folder": (_empty_class, [], "c2 holds no images"),
    "class-images-in-a-sub-folder": (_subfolder_class, [], "c1/sub"),
    "val-root-other-classes": (_other_val_classes, ["data.root={root}/train", "data.val_root={root}/val"], "zebra"),
    "classes-fewer-than-folders": (lambda r: _folder(r, 3), ["data.num_classes=2"],
                                   "has 3 class folder(s) but data.num_classes=2"),
    "one-folder-default-classes": (lambda r: _folder(r, 1), ["data.num_classes=1000"],
                                   "has 1 class folder(s) but data.num_classes=1000"),
}


@pytest.mark.parametrize("case", list(IMAGE_CASES))
def test_image_folder_case_in_process(case, tmp_path):
    build, extra, message = IMAGE_CASES[case]
    root = build(tmp_path / "images")
    overrides = [*IMAGES, f"data.root={root}", *[e.format(root=root) for e in extra]]
    _one_line_error(overrides, message, tmp_path / "outputs")


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("bad", ["bomb", "corrupt"])
def test_an_unreadable_image_is_one_line_naming_it_from_any_worker(bad, num_workers, tmp_path):
    from bar.data.datasets import ImageFolderImages
    from bar.data.loader import image_loader

    root = _bomb_folder(tmp_path / "images") if bad == "bomb" else _folder(tmp_path / "images", 2, 4, corrupt=True)
    images = ImageFolderImages(root, 16)
    loader = image_loader(images, len(images), num_workers=num_workers, flip=False)
    try:
        with pytest.raises(UserError) as err:
            next(loader)
    finally:
        loader.close()
    name = "c1/9.png" if bad == "bomb" else "c0/0.png"
    assert str(err.value).startswith("cannot read image") and name in str(err.value), str(err.value)
    assert "\n" not in str(err.value)


# ----------------------------------------------------------------------------------------------------- stores
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


# ----------------------------------------------------------------------------------------------------- the CLI
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
    flags = [a for a in args if a.startswith("-")]           # Hydra's flags (-m) come before the overrides
    proc = run_cli([*flags, "profile=smoke", *[a for a in args if a not in flags]], outputs, env_extra=env,
                   timeout=120)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == code, proc.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.stderr[-3000:]
    assert "Traceback" not in proc.stdout + proc.stderr
    # before any work: nothing cached, no run touched, and no progress line of a stage (not timed: CI is shared)
    assert _digest(outputs) == before and not (outputs / "cache").exists()
    assert " step (" not in proc.stderr and "img/s" not in proc.stderr


@pytest.mark.cli
@pytest.mark.parametrize("case", ["steps-0", "negative-cfg", "batch-over-dataset"])
def test_cli_prints_one_line(case, tmp_path):
    overrides, message = next((o, m) for c, o, m in CONFIG_CASES if c == case)
    _check_cli(overrides, message, tmp_path)


@pytest.mark.cli
@pytest.mark.parametrize("case", ["betas-one", "seed-negative"])
def test_cli_range_case_prints_one_line(case, tmp_path):
    overrides, message = next((o, m) for c, o, m in RANGE_CASES if c == case)
    _check_cli(overrides, message, tmp_path)


@pytest.mark.cli
def test_cli_negative_sweep_batch_is_one_line_and_launches_nothing(tmp_path):
    _check_cli(["-m", "sweep=smoke", "hydra.sweeper.max_batch_size=-3"], "hydra.sweeper.max_batch_size=-3", tmp_path)


@pytest.mark.cli
@pytest.mark.parametrize("case", ["tokenizer-garbage", "checkpoint-other-head-depth"])
def test_cli_file_case_prints_one_line(case, files, tmp_path):
    overrides, message = FILE_CASES[case](files)
    _check_cli(overrides, message, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("case,overrides,message", CONFIG_CASES + RANGE_CASES,
                         ids=[c[0] for c in CONFIG_CASES + RANGE_CASES])
def test_every_config_case_through_the_cli(case, overrides, message, tmp_path):
    _check_cli(overrides, message, tmp_path)


STORE_CASES = ["store-unwritable", "store-under-a-file", "store-corrupt", "server-down", "outputs-a-file",
               "outputs-readonly"]


@pytest.mark.slow
@pytest.mark.parametrize("case", list(FILE_CASES) + list(UNUSED_CASES))
def test_every_file_and_unused_case_through_the_cli(case, files, tmp_path):
    overrides, message = {**FILE_CASES, **UNUSED_CASES}[case](files)
    _check_cli(overrides, message, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("case", STORE_CASES)
def test_every_store_case_through_the_cli(case, tmp_path):
    if case.startswith(("store-unwritable", "outputs-readonly")) and os.geteuid() == 0:
        pytest.skip("root writes anywhere: a read-only folder cannot be simulated")
    overrides, message, env = _store_cases(tmp_path)[case]
    _check_cli(overrides, message, tmp_path, env)


@pytest.mark.cli
def test_launcher_without_m_and_dry_run_without_m(tmp_path):
    _check_cli(["launcher=slurm"], "launcher=slurm launches sweeps: add -m", tmp_path)
    proc = run_cli(["profile=smoke", "dry_run=true"], tmp_path)
    assert proc.returncode == 0 and "dry run, would run" in proc.stderr and "micro-batch 8" in proc.stderr
    assert not (tmp_path / "cache").exists() and not (tmp_path / "mlflow.db").exists()


@pytest.mark.cli
@pytest.mark.parametrize("num_workers", [0, 2])
def test_unreadable_image_is_one_line_naming_the_file(num_workers, tmp_path):
    root = _folder(tmp_path / "images", 2, per_class=4, corrupt=True)
    proc = run_cli(["profile=smoke", "data=imagefolder", f"data.root={root}", "data.num_classes=2",
                    "data.resolution=16", "stage=tokenizer", "tokenizer.train.batch_size=8",
                    "eval.classifier.batch_size=8", f"data.num_workers={num_workers}"], tmp_path / "out",
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


# moved from tests/orchestration/test_config.py: the entry point's own cases (sweep names, -m, single runs)
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
@pytest.mark.cli
def test_cli_bad_input_is_one_line_and_nothing_runs(args, message, tmp_path):
    proc = _cli(*args) if "sweep=no_such_sweep" in args else _cli(*args, f"paths.outputs={tmp_path}")
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: ") and message in lines[-1], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "cache").exists()  # nothing trained
