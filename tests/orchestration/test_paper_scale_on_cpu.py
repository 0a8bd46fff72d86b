"""The paper profile's code path on CPU, with only the sizes shrunk: a synthetic 256x256 image folder, 2 gloo ranks
(the torchrun environment) x 2 accumulation steps. It runs pretokenization in shards -> DDP training -> sharded
sampling -> gathered features -> metrics, and its generator's weights equal a 1-rank, 4-accumulation-step run on the
same global batch (same tokenizer and codes, from the cache)."""

import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from bar.core.files import read_generator_checkpoint
from conftest import ROOT, child_runs

pytestmark = pytest.mark.slow

SHRUNK = ["profile=paper", "device=cpu", "num_threads=1", "data.num_classes=4",
          # tokenizer: the release's BAR-FSQ structure (SigLIP2 encoder, ViT decoder), tiny, and its recipe (EMA,
          # encoder LR x0.1, crop + flip, SigLIP2-feature distillation) but the losses that need downloaded networks
          "tokenizer.size=tiny", "tokenizer.bits=8", "tokenizer.loss.perceptual=0", "tokenizer.loss.gram=0",
          "tokenizer.loss.gan=0", "tokenizer.train.steps=4", "tokenizer.train.batch_size=8", "tokenizer.train.warmup=1",
          # generator: BAR-B's recipe, tiny
          "model.dim=32", "model.depth=2", "model.heads=2", "model.head_width=32", "model.head_depth=1",
          "model.compile=false",            # compiled paths: tests/model/test_fast_paths.py (a cold compile takes minutes)
          "model.class_repeat=2", "generator.train.steps=3", "generator.train.batch_size=8",
          "generator.train.warmup=1", "generator.train.micro_batch_size=2",
          "generator.sample.num_samples=8", "generator.sample.batch_size=4", "generator.sample.nocfg=false",
          # offline evaluation (no Inception weights or ADM reference batch here)
          "eval.protocol=fidelity", "eval.extractor=classifier", "eval.batch_size=8", "eval.classifier.width=4", "eval.classifier.steps=4",
          "eval.classifier.batch_size=8", "launcher.checkpoint_every=2"]


def _image_folder(root):
    rng = np.random.default_rng(0)
    for c in range(4):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(6):
            pixels = (rng.random((256, 256, 3)) * 64 + c * 48 + np.linspace(0, 60, 256)[:, None, None])
            Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(root / f"class{c}" / f"{i}.jpg")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(outputs, **extra):
    return {**os.environ, "BAR_OUTPUTS": str(outputs), "MLFLOW_TRACKING_URI": f"sqlite:///{outputs}/mlflow.db",
            "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1", **extra}


def test_two_ranks_two_accumulation_steps_equal_one_rank_four(tmp_path):
    _image_folder(tmp_path / "images")
    args = [sys.executable, str(ROOT / "run.py"), *SHRUNK, f"data.root={tmp_path / 'images'}",
            f"data.val_root={tmp_path / 'images'}"]
    port = _free_port()
    ranks = [subprocess.Popen(args + ["experiment=two_ranks"], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True,
                              env=_env(tmp_path, RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE="2",
                                       MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)))
             for r in range(2)]
    outs = [p.communicate(timeout=900)[0] for p in ranks]
    assert [p.returncode for p in ranks] == [0, 0], outs[0][-3000:] + outs[1][-3000:]
    one = subprocess.run(args + ["experiment=one_rank"], cwd=ROOT, capture_output=True, text=True, timeout=900,
                         env=_env(tmp_path))
    assert one.returncode == 0, one.stderr[-3000:]

    codes = list((tmp_path / "cache" / "codes").glob("*/shard-*.json"))
    assert sorted(p.name for p in codes) == ["shard-00000-of-00002.json", "shard-00001-of-00002.json"]
    _, (two,), _ = child_runs(tmp_path, "two_ranks")
    _, (single,), _ = child_runs(tmp_path, "one_rank")
    assert two.data.metrics["world_size"] == 2 and single.data.metrics["world_size"] == 1
    assert two.data.params["generator.resolved.accum_steps"] == "2"
    assert single.data.params["generator.resolved.accum_steps"] == "4"
    assert single.data.tags["tokenizer_reused"] == "True"          # the same tokenizer and codes
    for run in (two, single):
        assert np.isfinite(run.data.metrics["gfid"]) and np.isfinite(run.data.metrics["rfid"])
    weights = [read_generator_checkpoint(r.data.params["generator.checkpoint"])["state_dict"]
               for r in (two, single)]
    for key in weights[0]:
        assert torch.allclose(weights[0][key], weights[1][key], atol=1e-6, rtol=1e-5), key
