"""stage=sample for the paper protocol: samples made in global batches over 2 gloo ranks, each batch written once;
a job killed midway and started again continues from the batches on disk and writes each sample exactly once; the
result is the `.npz` guided-diffusion's evaluator reads."""

import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import ROOT, child_runs, run_cli

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ranks(args, outputs):
    port = _free_port()
    env = {**os.environ, "BAR_OUTPUTS": str(outputs), "MLFLOW_TRACKING_URI": f"sqlite:///{outputs}/mlflow.db",
           "PYTHONWARNINGS": "ignore", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    return [subprocess.Popen([sys.executable, str(ROOT / "run.py"), *args], cwd=ROOT, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}) for r in range(2)]


def test_two_ranks_resume_a_killed_sampling_job_and_write_each_sample_once(tmp_path):
    trained = run_cli(["profile=smoke", "tokenizer.bits=8", "experiment=train"], tmp_path)
    assert trained.returncode == 0, trained.stderr[-2000:]
    _, (train_run,), _ = child_runs(tmp_path, "train")
    ckpt = train_run.data.params["generator.checkpoint"]
    args = ["profile=smoke", "tokenizer.bits=8", "stage=sample", f"checkpoint={ckpt}", "experiment=sample",
            "generator.sample.num_samples=40", "generator.sample.batch_size=2", "generator.sample.kv_cache=false"]
    first = _ranks(args, tmp_path)
    deadline = time.time() + 300
    batches = tmp_path / "points" / "sample"
    while time.time() < deadline and len(list(batches.glob("*/samples/batch-*.npz"))) < 4:
        time.sleep(0.05)
    for proc in first:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    before = {p.name: int(np.load(p)["attempt"]) for p in batches.glob("*/samples/batch-*.npz")}
    assert 4 <= len(before) < 20, len(before)            # killed midway
    second = _ranks(args, tmp_path)
    outs = [p.communicate(timeout=600)[0] for p in second]
    assert [p.returncode for p in second] == [0, 0], outs[0][-3000:] + outs[1][-3000:]
    _, runs, _ = child_runs(tmp_path, "sample")
    run = next(r for r in runs if r.data.tags["status"] == "finished")
    assert run.data.tags["resumes"] == "1"                  # the killed attempt's run, continued
    images = np.load(run.data.params["samples.npz"])["arr_0"]
    assert images.shape == (40, 16, 16, 3) and images.dtype == np.uint8
    tokens = __import__("torch").load(run.data.params["samples.tokens"])
    assert (tokens["labels"].numpy() == np.arange(40) % 10).all()
    # the batches written before the kill were kept, not made again: every sample exactly once
    assert run.data.metrics["samples_generated"] == 40 - 2 * len(before)
    # and the samples do not depend on the ranks or the interruption: one uninterrupted process makes the same
    single = run_cli([*args, "experiment=sample_one"], tmp_path)
    assert single.returncode == 0, single.stderr[-2000:]
    _, (one,), _ = child_runs(tmp_path, "sample_one")
    assert np.array_equal(np.load(one.data.params["samples.npz"])["arr_0"], images)
    assert not list(batches.glob("*/samples/batch-*.npz"))   # batch files are removed once the run has its npz
