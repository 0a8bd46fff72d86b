"""End to end: the smoke bits_vs_rfid sweep into a temporary MLflow store, failures, reuse."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from conftest import child_runs, run_cli


@pytest.mark.cli
def test_smoke_sweep_logs_one_finished_run_per_point(smoke_sweep):
    outputs, proc = smoke_sweep
    assert proc.returncode == 0, proc.stderr[-3000:]
    client, points, parents = child_runs(outputs, "bits_vs_rfid")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    names = sorted(r.info.run_name for r in points)
    assert names == sorted([f"fsq-{b}b" for b in (2, 4, 8, 12, 16, 24, 32)] + [f"ae-{c}c" for c in (1, 2, 4, 8)])
    for run in points:
        tags, metrics, params = run.data.tags, run.data.metrics, run.data.params
        assert run.info.status == "FINISHED" and tags["status"] == "finished"
        assert tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert tags["sweep"] == "bits_vs_rfid" and tags["profile"] == "smoke" and len(tags["signature"]) == 12
        assert tags["git_sha"] and tags["fid_extractor"].startswith("bar-classifier:")
        assert math.isfinite(metrics["rfid"]) and metrics["total_bits"] > 0
        kind = params["tokenizer.kind"]
        assert not {"bits_per_token", "codebook_log2", "channels"} & set(metrics)  # the size per token is the param
        if kind == "fsq":
            assert metrics["total_bits"] == 16 * int(params["tokenizer.bits"])
        else:
            assert metrics["total_bits"] == 16 * 16 * int(params["tokenizer.channels"])
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"config.yaml", "recon_grid.png"} <= artifacts
        assert len(client.get_metric_history(run.info.run_id, "tokenizer_loss")) >= 1
    # every point carries one extractor: numbers are comparable within the sweep
    assert len({r.data.tags["fid_extractor"] for r in points}) == 1


@pytest.mark.cli
def test_failed_point_is_recorded_and_the_sweep_goes_on(tmp_path):
    # a corrupt image is found only when the job reads it (plan-time checks never decode the images): a genuine
    # failure inside the job, while the same sweep's other point trains on a clean folder
    good, bad = (_image_folder(tmp_path / name) for name in ("good", "bad"))
    (bad / "c0" / "0.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    proc = run_cli(["-m", "profile=smoke", "experiment=failing", "data=imagefolder", f"data.root={good},{bad}",
                    "data.num_classes=2", "data.resolution=16", "stage=tokenizer", "tokenizer.train.batch_size=8",
                    "eval.classifier.batch_size=8"], tmp_path / "out")
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "1 finished, 0 infeasible, 1 failed" in proc.stderr
    client, points, parents = child_runs(tmp_path / "out", "failing")
    by_status = {r.data.tags["status"]: r for r in points}
    assert set(by_status) == {"failed", "finished"}
    failed = by_status["failed"]
    assert failed.info.status == "FAILED" and "cannot read image" in failed.data.tags["error"]
    assert failed.data.params["data.root"] == str(bad) and "\n" not in failed.data.tags["error"]
    assert math.isfinite(by_status["finished"].data.metrics["rfid"])
    assert parents[0].info.status == "FAILED"


def _image_folder(root, classes: int = 2, per_class: int = 4):
    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray((rng.random((40, 40, 3)) * 255).astype(np.uint8)).save(root / f"c{c}" / f"{i}.png")
    return root


@pytest.mark.cli
def test_local_points_of_a_batch_run_at_the_same_time(tmp_path):
    """launcher=local with hydra.sweeper.max_batch_size=2 (what make demo runs): both points' processes, forked from
    the one preloaded server, run together; the sweep counts them once, after the batch."""
    proc = run_cli(["-m", "profile=smoke", "experiment=together", "stage=tokenizer", "tokenizer.bits=4,8",
                    "hydra.sweeper.max_batch_size=2"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _, points, _ = child_runs(tmp_path, "together")
    first, second = sorted(points, key=lambda r: r.info.start_time)
    assert first.info.status == second.info.status == "FINISHED"
    assert second.info.start_time < first.info.end_time       # the second started before the first ended
    assert "2/2 points done" in proc.stderr and "1/2 points done" not in proc.stderr


@pytest.mark.slow
def test_second_run_with_same_tokenizer_trains_nothing(tmp_path):
    first = run_cli(["profile=smoke", "tokenizer.bits=4"], tmp_path)
    second = run_cli(["profile=smoke", "tokenizer.bits=4"], tmp_path)
    assert first.returncode == 0 and second.returncode == 0, second.stderr[-3000:]
    _, points, _ = child_runs(tmp_path, "default")
    runs = sorted(points, key=lambda r: r.info.start_time)
    assert [r.data.tags["tokenizer_reused"] for r in runs] == ["False", "True"]
    assert "tokenizer_train_img_per_s" in runs[0].data.metrics and "tokenizer_train_img_per_s" not in runs[1].data.metrics
    assert runs[0].data.metrics["rfid"] == runs[1].data.metrics["rfid"]   # same tokenizer, same reconstructions


@pytest.mark.cli
def test_dry_run_lists_points_and_submits_nothing(tmp_path):
    proc = run_cli(["-m", "sweep=bits_vs_rfid", "profile=smoke", "dry_run=true"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "11 points" in proc.stdout and "fsq-32b" in proc.stdout and "ae-8c" in proc.stdout
    assert not (tmp_path / "cache").exists()


@pytest.mark.cli
def test_an_infeasible_point_is_recorded_without_launching_a_job(tmp_path):
    proc = run_cli(["-m", "profile=smoke", "experiment=wall", "head=softmax", "tokenizer.bits=24"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "0 finished, 1 infeasible, 0 failed" in proc.stderr and "Launching" not in proc.stderr + proc.stdout
    client, points, parents = child_runs(tmp_path, "wall")
    (run,) = points
    assert run.info.status == "FINISHED" and run.data.tags["status"] == "infeasible"
    assert "does not fit" in run.data.tags["infeasible_reason"] and run.data.metrics["mem_estimate_gb"] > 1
    assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id and run.data.params["head.name"] == "softmax"
    assert "config.yaml" in {a.path for a in client.list_artifacts(run.info.run_id)}
    again = run_cli(["-m", "profile=smoke", "experiment=wall", "head=softmax", "tokenizer.bits=24"], tmp_path)
    assert "1 already done" in again.stderr and len(child_runs(tmp_path, "wall")[1]) == 1


class _Loader:
    """What the sweep driver needs of Hydra's config loader: each point composed as run.py would."""

    def __init__(self, base):
        self.base = base

    def load_sweep_config(self, master_config, sweep_overrides):
        from bar.orchestration.config import compose

        return compose(self.base + list(sweep_overrides), hydra_node=True)


class _NoLauncher:
    def launch(self, job_overrides, initial_job_idx):
        raise AssertionError(f"a job was launched: {job_overrides}")


def test_the_driver_records_an_infeasible_point_through_tracking_alone(tmp_path, monkeypatch):
    """No job, no runner: the runner's entry points fail if called, and the point's run still appears, complete."""
    from bar.orchestration import runner, sweeps
    from bar.orchestration.config import compose

    def no_runner(*args, **kwargs):
        raise AssertionError("the runner was called")

    monkeypatch.setattr(runner, "execute", no_runner)
    monkeypatch.setattr(runner, "run_stages", no_runner)
    base = ["profile=smoke", "experiment=wall", f"paths.outputs={tmp_path}",
            f"tracking.uri=sqlite:///{tmp_path}/mlflow.db"]
    sweeper = SimpleNamespace(config=compose(base, hydra_node=True), grids=[], params={}, max_batch_size=None,
                              hydra_context=SimpleNamespace(config_loader=_Loader(base)), launcher=_NoLauncher())
    sweeps.run_sweep(sweeper, ["generator.memory_budget_gb=0.0001", "tokenizer.bits=4,8"])
    client, points, parents = child_runs(tmp_path, "wall")
    assert sorted(r.info.run_name for r in points) == ["mbm-4b", "mbm-8b"] and parents[0].info.status == "FINISHED"
    for run in points:
        assert run.info.status == "FINISHED" and run.data.tags["status"] == "infeasible"
        assert "does not fit" in run.data.tags["infeasible_reason"] and run.data.metrics["mem_estimate_gb"] > 0.0001
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id and len(run.data.tags["signature"]) == 12
        assert run.data.params["tokenizer.bits"] in ("4", "8") and run.data.params["generator.memory_budget_gb"]
        assert "config.yaml" in {a.path for a in client.list_artifacts(run.info.run_id)}
        record = tmp_path / "points" / "wall" / run.data.tags["signature"] / "run.json"
        assert record.is_file() and run.info.run_id in record.read_text()   # the next launch finds it done
