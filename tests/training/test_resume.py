"""Checkpoints: atomic writes with a checksum, corrupt-last fallback, exact resume of the training loop, and a killed
point that continues its own MLflow run."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from bar.training.checkpoints import CheckpointDir
from bar.core.files import CorruptCheckpoint, load_verified, save_atomic, read_generator_checkpoint
from bar.training import signals
from bar.training.signals import act_on_stop, before_acting_on_stop, clear_stop, request_stop, submitit_signal
from bar.orchestration.tracking import PointRun
from bar.training.loop import Checkpointing, Recipe, infinite_batches, train

from conftest import ROOT, child_runs


def _problem(seed=0):
    torch.manual_seed(seed)
    x = torch.randn(96, 6)
    y = (x @ torch.randn(6, 1)).squeeze(1) + 0.1 * torch.randn(96)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Dropout(0.2), torch.nn.Linear(16, 1))

    def loss_fn(module, batch, step, generator):
        xb, yb = batch
        return (module(xb).squeeze(1) - yb).pow(2).mean()   # dropout: uses the global RNG, which must be restored

    return model, loss_fn, (x, y)


def _run(tmp_path, steps=30, stop_at=None, ckpt=True, every=7):
    model, loss_fn, data = _problem()
    seen = []

    def loss_and_stop(module, batch, step, generator):
        if stop_at is not None and step == stop_at:
            request_stop(signal.SIGTERM)
        seen.append(step)
        return loss_fn(module, batch, step, generator)

    try:
        hooks = [Checkpointing(tmp_path / "ckpt", every)] if ckpt else []
        result = train(model, loss_and_stop, infinite_batches(data, 16, seed=3),
                       Recipe(steps=steps, lr=1e-2, warmup=3, log_every=5), hooks=hooks)
    finally:
        clear_stop()
    return model, result, seen


def test_atomic_save_roundtrip_and_checksum(tmp_path):
    path = save_atomic({"a": torch.arange(5)}, tmp_path / "x.pt")
    assert torch.equal(load_verified(path)["a"], torch.arange(5))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]   # no temp file left behind
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptCheckpoint):
        load_verified(path)
    path.write_bytes(path.read_bytes()[:40])   # truncated
    with pytest.raises(CorruptCheckpoint):
        load_verified(path)


def test_corrupt_last_checkpoint_falls_back_to_previous(tmp_path):
    ckpts = CheckpointDir(tmp_path, keep=2)
    for step in (10, 20, 30):
        ckpts.save({"step": step}, step)
    assert ckpts.steps() == [20, 30]          # only the newest `keep`
    ckpts.path(30).write_bytes(ckpts.path(30).read_bytes()[:-10])
    assert ckpts.load_latest()["step"] == 20
    assert ckpts.steps() == [20]              # the corrupt one is set aside


def test_stopped_and_resumed_training_equals_uninterrupted(tmp_path):
    reference, ref_result, _ = _run(tmp_path / "ref", ckpt=False)
    with pytest.raises(SystemExit):           # a stop request: checkpoint at the end of step 12, then exit
        _run(tmp_path / "run", stop_at=12)
    assert CheckpointDir(tmp_path / "run" / "ckpt").steps()[-1] == 13
    resumed, result, seen = _run(tmp_path / "run")
    assert seen[0] == 13 and result.start_step == 13
    for a, b in zip(reference.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
    assert result.history == ref_result.history            # no gaps, no duplicated steps
    assert [s for s, _ in result.history] == [5, 10, 15, 20, 25, 30]


def test_resume_after_hard_kill_uses_last_periodic_checkpoint(tmp_path):
    reference, _, _ = _run(tmp_path / "ref", ckpt=False)
    _run(tmp_path / "run", steps=30)                      # leaves checkpoints 28 and 30 (final)
    ckpts = CheckpointDir(tmp_path / "run" / "ckpt")
    ckpts.path(30).unlink()                               # as if killed after step 28's checkpoint
    resumed, result, seen = _run(tmp_path / "run")
    assert result.start_step == 28 and seen == [28, 29]
    for a, b in zip(reference.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)


def test_batch_stream_matches_old_order_and_resumes():
    x, y = torch.arange(10).float(), torch.arange(10)
    a = infinite_batches((x, y), 4, seed=1)
    first = [next(a)[1].tolist() for _ in range(5)]
    b = infinite_batches((x, y), 4, seed=1)
    next(b), next(b)
    state = b.state_dict()
    c = infinite_batches((x, y), 4, seed=99)
    c.load_state_dict(state)
    assert [next(c)[1].tolist() for _ in range(3)] == first[2:]
    gen = torch.Generator().manual_seed(1)                 # the previous generator-function order
    assert first[0] == torch.randperm(10, generator=gen)[:4].tolist()


def _cli(args, outputs):
    env = {**os.environ, "BAR_OUTPUTS": str(outputs), "MLFLOW_TRACKING_URI": f"sqlite:///{outputs}/mlflow.db",
           "PYTHONWARNINGS": "ignore"}
    return subprocess.Popen([sys.executable, str(ROOT / "run.py"), *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_killed_point_resumes_its_own_run(tmp_path):
    """SIGKILL mid-training (no chance to clean up), run again: one MLflow run, history without gaps or duplicates,
    the same final weights as an uninterrupted run."""
    args = ["profile=smoke", "generator.train.steps=60", "launcher.checkpoint_every=10", "generator.sample.nocfg=false",
            "generator.sample.num_samples=20"]
    proc = _cli(args + ["experiment=killed"], tmp_path)
    ckpt_root = tmp_path / "points" / "killed"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if list(ckpt_root.glob("*/generator/ckpt-*.pt")):
            break
        time.sleep(0.02)
    assert proc.poll() is None, proc.stdout.read()[-3000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    _, points, _ = child_runs(tmp_path, "killed")
    assert len(points) == 1 and points[0].data.tags["status"] == "running"
    again = _cli(args + ["experiment=killed"], tmp_path)
    out = again.communicate(timeout=300)[0]
    assert again.returncode == 0, out[-3000:]
    reference = _cli(args + ["experiment=reference"], tmp_path)
    out = reference.communicate(timeout=300)[0]
    assert reference.returncode == 0, out[-3000:]

    client, points, _ = child_runs(tmp_path, "killed")
    assert len(points) == 1
    run = points[0]
    assert run.info.status == "FINISHED" and run.data.tags["status"] == "finished"
    assert run.data.tags["resumes"] == "1" and int(run.data.tags["resumed_from_step"]) >= 10
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")]
    assert sorted(steps) == list(range(10, 61, 10))             # no gaps, no duplicates, nothing at step 0
    _, ref_points, _ = child_runs(tmp_path, "reference")
    weights = [read_generator_checkpoint(r.data.params["generator.checkpoint"])["state_dict"]
               for r in (run, ref_points[0])]
    for key in weights[0]:
        assert torch.equal(weights[0][key], weights[1][key]), key


def test_a_stop_runs_its_callbacks_before_submitit_requeues(monkeypatch):
    """The run is tagged before submitit's handler asks SLURM to requeue (whose SIGTERM can end the process first)."""
    order = []
    sig = int(submitit_signal())
    monkeypatch.setitem(signals._original, sig, lambda signum, frame: order.append("requeue"))
    with before_acting_on_stop(lambda signum: order.append(("tag", signum))):
        with pytest.raises(SystemExit):
            act_on_stop(sig)
    with pytest.raises(SystemExit):   # outside the context the callback is gone
        act_on_stop(sig)
    assert order == [("tag", sig), "requeue", "requeue"]


def test_keep_running_tags_the_run_at_once(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    run = PointRun(uri, "signals", "p", {})
    run.keep_running(int(signal.SIGUSR2))   # before the context exits: the process may not get that far
    assert run.client.get_run(run.run_id).data.tags["stopped_by_signal"] == str(int(signal.SIGUSR2))


# ----------------------------------------------------------------------------------------------------- a full disk
def _disk_full(*args, **kwargs):
    import errno

    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_write_that_fills_the_disk_leaves_the_old_file_and_no_temp_file(tmp_path, monkeypatch):
    import bar.core.files as files

    path = save_atomic({"step": 1}, tmp_path / "ckpt.pt")
    monkeypatch.setattr(files.os, "fsync", _disk_full)           # the data written, the flush fails: ENOSPC
    with pytest.raises(OSError) as err:
        save_atomic({"step": 2}, path)
    assert files.disk_full(err.value) is err.value
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt", "ckpt.pt.sha256"]
    assert load_verified(path) == {"step": 1}


def test_a_checkpoint_that_fills_the_disk_keeps_the_last_one_and_training_resumes_from_it(tmp_path, monkeypatch):
    import bar.core.files as files

    model, loss_fn, data = _problem()
    folder = tmp_path / "ckpt"
    real_fsync = files.os.fsync
    writes = []

    def fsync_until_full(fd):
        writes.append(fd)
        if len(writes) > 6:                           # 2 checkpoints fit (a file, its checksum and their folder each)
            _disk_full()
        real_fsync(fd)

    monkeypatch.setattr(files.os, "fsync", fsync_until_full)
    with pytest.raises(OSError):
        train(model, loss_fn, infinite_batches(data, 16, seed=3), Recipe(steps=30, lr=1e-2, warmup=3, log_every=5),
              hooks=[Checkpointing(folder, every=7)])
    assert CheckpointDir(folder).steps() == [7, 14] and not [p for p in folder.iterdir() if ".tmp-" in p.name]
    monkeypatch.setattr(files.os, "fsync", real_fsync)            # space freed: the next attempt resumes at 14
    resumed, result, seen = _run(tmp_path, steps=30)
    assert result.start_step == 14 and seen[0] == 14
    straight, _, _ = _run(tmp_path / "again", steps=30)
    assert all(torch.equal(a, b) for a, b in zip(resumed.state_dict().values(), straight.state_dict().values()))


def test_temp_files_of_killed_writes_are_removed_when_a_run_resumes(tmp_path):
    folder = tmp_path / "ckpt"
    CheckpointDir(folder).save({"step": 3}, 3)
    (folder / ".ckpt-000000010.pt.tmp-4242").write_bytes(b"half a checkpoint")
    assert CheckpointDir(folder).load_latest() == {"step": 3}
    assert sorted(p.name for p in folder.iterdir()) == ["ckpt-000000003.pt", "ckpt-000000003.pt.sha256"]


def test_periodic_evaluations_an_earlier_attempt_logged_are_not_made_again(tmp_path):
    from bar.training.loop import PeriodicEval

    model, loss_fn, data = _problem()
    made, logged = [], []
    hook = PeriodicEval(5, 30, lambda m, step: made.append(step) or float(step), on_value=lambda s, v: logged.append(s),
                        done={5, 10})
    train(model, loss_fn, infinite_batches(data, 16, seed=3), Recipe(steps=30, lr=1e-2, warmup=3), hooks=[hook])
    assert made == logged == [15, 20, 25]


# ----------------------------------------------------------------------------------------------------- sample batches
def test_a_replaced_checkpoint_is_another_sample_point(tmp_path):
    from bar.orchestration.config import compose, point_signature

    weights = tmp_path / "weights.pt"
    save_atomic({"w": torch.zeros(3)}, weights)
    sample = ["profile=smoke", "stage=sample", f"checkpoint={weights}"]
    first = point_signature(compose(sample))
    assert point_signature(compose(sample)) == first                  # asked again: the same point (resumes)
    save_atomic({"w": torch.ones(3)}, weights)                       # other weights at the same path
    assert point_signature(compose(sample)) != first
    assert point_signature(compose(["profile=smoke"])) == point_signature(compose(["profile=smoke"]))


def test_sample_batches_made_from_other_weights_are_removed_before_sampling(tmp_path):
    from bar.orchestration.stages.samples import SOURCE, _claim_folder

    folder = tmp_path / "samples"
    _claim_folder(folder, {"checkpoint": {"bytes": 10, "mtime_ns": 1}})
    for j in range(3):
        (folder / f"batch-{j:06d}.npz").write_bytes(b"old")
    _claim_folder(folder, {"checkpoint": {"bytes": 10, "mtime_ns": 1}})       # the same weights: batches kept
    assert len(list(folder.glob("batch-*.npz"))) == 3
    _claim_folder(folder, {"checkpoint": {"bytes": 10, "mtime_ns": 2}})       # replaced: none kept
    assert sorted(p.name for p in folder.iterdir()) == [SOURCE]
