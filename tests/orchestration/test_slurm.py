"""On a real SLURM (a single-node cluster on this machine, started by .ci/slurm_up.sh): a sweep through
launcher=slurm, a 2-task data-parallel job, a job requeued mid-training that resumes, and a second launch that runs
nothing. Skipped when SLURM is not installed or not running."""

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from bar.core.files import read_generator_checkpoint
from conftest import ROOT, child_runs, run_cli

pytestmark = pytest.mark.slurm


def _cluster_up() -> bool:
    if not shutil.which("sinfo") or not shutil.which("sbatch"):
        return False
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return any(state.strip() in ("idle", "mixed", "allocated", "completing") for state in out.splitlines())


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    if not _cluster_up():
        pytest.skip("no running SLURM cluster (sinfo missing or no node up): run `bash .ci/slurm_up.sh`")
    return tmp_path_factory.mktemp("slurm")


def test_sweep_on_slurm_then_second_launch_runs_nothing(outputs):
    start = time.time()
    proc = run_cli(["-m", "sweep=smoke", "profile=smoke", "launcher=slurm"], outputs, timeout=600)
    wall = time.time() - start
    assert proc.returncode == 0, proc.stderr[-4000:]
    client, points, parents = child_runs(outputs, "smoke")
    assert sorted(r.info.run_name for r in points) == ["ae-1c", "fsq-4b", "fsq-8b"]
    assert len(parents) == 1
    for run in points:
        assert run.info.status == "FINISHED" and run.data.tags["status"] == "finished"
        assert run.data.tags["slurm_job_id"]                       # it ran inside a SLURM job
        assert run.data.metrics["launch_to_first_step_s"] > 0
    assert len({r.data.tags["slurm_job_id"] for r in points}) == 3
    print(f"\nsmoke sweep on slurm: {wall:.1f} s wall; launch to first step: "
          + ", ".join(f"{r.data.metrics['launch_to_first_step_s']:.1f}" for r in points) + " s")

    again = run_cli(["-m", "sweep=smoke", "profile=smoke", "launcher=slurm"], outputs, timeout=600)
    assert again.returncode == 0, again.stderr[-4000:]
    assert "3 already done: nothing to run" in again.stderr
    assert "submitted" not in again.stderr                         # no job reached SLURM
    _, points_after, parents_after = child_runs(outputs, "smoke")
    assert len(points_after) == 3 and len(parents_after) == 1


def test_two_task_job_trains_data_parallel(outputs):
    proc = run_cli(["-m", "profile=smoke", "experiment=ddp", "launcher=slurm", "hydra.launcher.tasks_per_node=2",
                    "generator.sample.nocfg=false"], outputs, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    _, points, _ = child_runs(outputs, "ddp")
    assert len(points) == 1
    run = points[0]
    assert run.data.tags["status"] == "finished" and run.data.metrics["world_size"] == 2
    prints = run.data.tags["weights_by_rank"].split(",")
    assert len(prints) == 2 and prints[0] == prints[1] and run.data.tags["ranks_in_sync"] == "True"
    job = run.data.tags["slurm_job_id"]
    logs = list(outputs.glob(f"multirun/ddp/*/.submitit/{job}/{job}_*_log.err"))
    assert len(logs) == 2                                           # both tasks ran


def _job_ids() -> list[str]:
    out = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout
    return [line.strip() for line in out.splitlines() if line.strip()]


def test_requeued_job_resumes_from_its_checkpoint(outputs):
    args = ["profile=smoke", "generator.train.steps=200", "launcher.checkpoint_every=20",
            "generator.sample.nocfg=false", "generator.sample.num_samples=20"]
    before = set(_job_ids())
    env = {**os.environ, "BAR_OUTPUTS": str(outputs), "MLFLOW_TRACKING_URI": f"sqlite:///{outputs}/mlflow.db",
           "PYTHONWARNINGS": "ignore"}
    launch = subprocess.Popen([sys.executable, str(ROOT / "run.py"), "-m", "experiment=requeue", "launcher=slurm",
                               *args], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and launch.poll() is None:
            if list(outputs.glob("points/requeue/*/generator/ckpt-*.pt")):
                break
            time.sleep(0.1)
        assert launch.poll() is None, launch.stdout.read()[-3000:]
        jobs = [j for j in _job_ids() if j not in before]
        assert len(jobs) == 1, jobs
        job = jobs[0]
        subprocess.run(["scontrol", "requeue", job], check=True)
        # SLURM makes a requeued job eligible only after a delay (~2 min): let it start now
        for _ in range(100):
            state = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T %r"], capture_output=True, text=True).stdout
            if "PENDING" in state:
                subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], capture_output=True)
                break
            time.sleep(0.2)
        out = launch.communicate(timeout=600)[0]
    finally:
        if launch.poll() is None:
            launch.send_signal(signal.SIGINT)
            launch.wait(30)
    assert launch.returncode == 0, out[-4000:]

    client, points, _ = child_runs(outputs, "requeue")
    assert len(points) == 1                                          # one MLflow run across both attempts
    run = points[0]
    tags = run.data.tags
    assert run.info.status == "FINISHED" and tags["status"] == "finished"
    assert tags["resumes"] == "1" and tags["stopped_by_signal"] == str(int(signal.SIGTERM))
    assert 20 <= int(tags["resumed_from_step"]) < 200                # continued from its checkpoint
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")]
    assert sorted(steps) == list(range(10, 201, 10))                  # no gaps, no duplicates

    reference = run_cli(["experiment=requeue_reference", *args], outputs, timeout=600)   # uninterrupted, in process
    assert reference.returncode == 0, reference.stderr[-4000:]
    _, ref_points, _ = child_runs(outputs, "requeue_reference")
    weights = [read_generator_checkpoint(r.data.params["generator.checkpoint"])["state_dict"]
               for r in (run, ref_points[0])]
    for key in weights[0]:
        assert torch.equal(weights[0][key], weights[1][key]), key


def test_timeout_signal_checkpoints_and_submitit_requeues(outputs):
    """submitit's own protocol for a time limit: SLURM sends USR2 `signal_delay_s` before the limit; the point
    checkpoints at the end of its step, submitit's handler requeues the job, the new attempt resumes the same run."""
    args = ["profile=smoke", "generator.train.steps=200", "launcher.checkpoint_every=20",
            "generator.sample.nocfg=false", "generator.sample.num_samples=20"]
    before = set(_job_ids())
    env = {**os.environ, "BAR_OUTPUTS": str(outputs), "MLFLOW_TRACKING_URI": f"sqlite:///{outputs}/mlflow.db",
           "PYTHONWARNINGS": "ignore"}
    launch = subprocess.Popen([sys.executable, str(ROOT / "run.py"), "-m", "experiment=timeout", "launcher=slurm",
                               *args], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and launch.poll() is None:
            if list(outputs.glob("points/timeout/*/generator/ckpt-*.pt")):
                break
            time.sleep(0.1)
        assert launch.poll() is None, launch.stdout.read()[-3000:]
        jobs = [j for j in _job_ids() if j not in before]
        assert len(jobs) == 1, jobs
        job = jobs[0]
        subprocess.run(["scancel", "--signal=USR2", job], check=True)
        for _ in range(300):   # the requeued job waits for SLURM's requeue delay: let it start now
            state = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True).stdout
            if "PENDING" in state:
                subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], capture_output=True)
                break
            time.sleep(0.2)
        out = launch.communicate(timeout=600)[0]
    finally:
        if launch.poll() is None:
            launch.send_signal(signal.SIGINT)
            launch.wait(30)
    assert launch.returncode == 0, out[-4000:]

    client, points, _ = child_runs(outputs, "timeout")
    assert len(points) == 1
    run = points[0]
    tags = run.data.tags
    assert run.info.status == "FINISHED" and tags["status"] == "finished"
    assert tags["resumes"] == "1" and tags["stopped_by_signal"] == str(int(signal.SIGUSR2))
    assert 20 <= int(tags["resumed_from_step"]) < 200
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")]
    assert sorted(steps) == list(range(10, 201, 10))
    reference = run_cli(["experiment=timeout_reference", *args], outputs, timeout=600)
    assert reference.returncode == 0, reference.stderr[-4000:]
    _, ref_points, _ = child_runs(outputs, "timeout_reference")
    weights = [read_generator_checkpoint(r.data.params["generator.checkpoint"])["state_dict"]
               for r in (run, ref_points[0])]
    for key in weights[0]:
        assert torch.equal(weights[0][key], weights[1][key]), key
