"""End to end through the generator stage: codebook scaling with an infeasible softmax point, the continuous path,
sampling from a checkpoint, figures from the resulting store."""

import math
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, child_runs, run_cli


@pytest.fixture(scope="module")
def codebook_store(tmp_path_factory):
    outputs = tmp_path_factory.mktemp("codebook")
    proc = run_cli(["-m", "sweep=codebook_scaling", "profile=smoke", "tokenizer.bits=8,24",
                    "generator.memory_budget_gb=0.05"], outputs)
    return outputs, proc


@pytest.mark.cli
def test_codebook_scaling_finishes_every_point_as_finished_or_infeasible(codebook_store):
    outputs, proc = codebook_store
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "5 finished, 1 infeasible, 0 failed" in proc.stderr
    client, points, _ = child_runs(outputs, "codebook_scaling")
    by_name = {r.info.run_name: r for r in points}
    assert sorted(by_name) == sorted(f"{h}-{b}b" for h in ("mbm", "bitwise", "softmax") for b in (8, 24))
    wall = by_name["softmax-24b"]
    assert wall.data.tags["status"] == "infeasible" and wall.info.status == "FINISHED"
    assert wall.data.metrics["mem_estimate_gb"] > 0.05 and "gfid" not in wall.data.metrics
    assert "does not fit" in wall.data.tags["infeasible_reason"]
    for name, run in by_name.items():
        if name == "softmax-24b":
            continue
        m = run.data.metrics
        assert run.data.tags["status"] == "finished"
        for key in ("gfid", "gfid_nocfg", "inception_score", "precision", "recall", "sample_img_per_s",
                    "train_img_per_s", "mem_estimate_gb"):
            assert math.isfinite(m[key]), (name, key)
        assert "codebook_log2" not in m and name.endswith(f"-{run.data.params['tokenizer.bits']}b")  # log2 C: param
        assert len(client.get_metric_history(run.info.run_id, "train_loss")) >= 1
        assert "sample_grid.png" in {a.path for a in client.list_artifacts(run.info.run_id)}


def test_mbm_memory_estimate_is_flat_in_bits_while_softmax_explodes(codebook_store):
    outputs, _ = codebook_store
    _, points, _ = child_runs(outputs, "codebook_scaling")
    mem = {r.info.run_name: r.data.metrics["mem_estimate_gb"] for r in points}
    assert mem["mbm-24b"] < 1.5 * mem["mbm-8b"]
    assert mem["softmax-24b"] > 1000 * mem["softmax-8b"]


@pytest.mark.cli
def test_figures_from_the_sweep_store(codebook_store, tmp_path):
    outputs, _ = codebook_store
    proc = subprocess.run([sys.executable, str(ROOT / "analysis" / "make_figures.py"), "--sweep", "codebook_scaling",
                           "--tracking-uri", f"sqlite:///{outputs}/mlflow.db", "--out", str(tmp_path),
                           "--format", "png"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "codebook_scaling.png").stat().st_size > 5000
    csv = (tmp_path / "codebook_scaling.csv").read_text()
    assert "infeasible" in csv and "softmax" in csv
    assert (tmp_path / "REPORT.md").exists()


@pytest.mark.slow
def test_continuous_path_and_sampling_from_a_checkpoint(tmp_path):
    proc = run_cli(["-m", "sweep=bits_vs_gfid", "profile=smoke", "tokenizer.bits=8", "tokenizer.channels=2"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client, points, _ = child_runs(tmp_path, "bits_vs_gfid")
    by_name = {r.info.run_name: r for r in points}
    assert set(by_name) == {"mbm-8b", "diffusion-2c"}
    assert math.isfinite(by_name["diffusion-2c"].data.metrics["gfid"])
    assert by_name["diffusion-2c"].data.metrics["total_bits"] == by_name["mbm-8b"].data.metrics["total_bits"] * 4

    ckpt = by_name["mbm-8b"].data.params["generator.checkpoint"]
    sampled = run_cli(["profile=smoke", "tokenizer.bits=8",   # the point's tokenizer
                       "stage=sample", f"checkpoint={ckpt}", "generator.sample.num_samples=12",
                       "generator.sample.batch_size=5"], tmp_path)
    assert sampled.returncode == 0, sampled.stderr[-3000:]
    _, points, _ = child_runs(tmp_path, "default")
    run = points[0]
    assert run.data.tags["checkpoint_format"] == "bar" and run.data.metrics["sample_img_per_s"] > 0
    assert run.data.tags["decoded"] == "True"                      # this project's cached tokenizer decodes them
    import numpy as np
    assert np.load(run.data.params["samples.npz"])["arr_0"].shape == (12, 16, 16, 3)
    tokens = torch.load(run.data.params["samples.tokens"])
    assert tokens["tokens"].shape == (12, 16, 8) and tokens["tokens"].dtype == torch.uint8


@pytest.mark.cli
def test_bad_generator_config_fails_before_training(tmp_path):
    proc = run_cli(["profile=smoke", "tokenizer.bits=16", "generator.sample.allocation=[2,2,5]"], tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == "error: allocation [2,2,5] sums to 9, bits_per_token is 16"
    assert not (tmp_path / "cache").exists()
    proc = run_cli(["profile=smoke", "tokenizer=ae", "head=mbm"], tmp_path)
    assert proc.returncode == 2 and "use one of the heads ['diffusion']" in proc.stderr
    proc = run_cli(["profile=smoke", "stage=sample", "checkpoint=/no/such.pt"], tmp_path)
    assert proc.returncode == 2 and "stage=sample needs checkpoint=PATH" in proc.stderr
