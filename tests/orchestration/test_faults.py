"""A sweep survives its worst point and its driver: a point killed mid-training is recorded failed while the rest
finish; a sweep killed (SIGKILL) or interrupted (Ctrl-C) and launched again finishes every point, one run each,
histories without gaps or duplicates, the old launch closed; concurrent first launches share a fresh store; a
corrupt cache entry (tokenizer, codes, classifier) is rebuilt and the result does not change; the memory wall is the
machine's, so nothing is OOM-killed. A single point stopped with Ctrl-C is one line and continues; a point killed
after a periodic gFID logs each step once when resumed; sample batches never outlive the weights they came from; a
disk that fills during a checkpoint is one line, leaves nothing half-written, and the point continues later."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import ROOT, child_runs, run_cli

pytestmark = pytest.mark.faults

LONG = ["profile=smoke", "generator.train.steps=400", "launcher.checkpoint_every=20",
        "generator.sample.nocfg=false", "generator.sample.num_samples=20", "generator.sample.batch_size=20"]


def _popen(args, outputs):
    env = {**os.environ, "BAR_OUTPUTS": str(outputs), "MLFLOW_TRACKING_URI": f"sqlite:///{outputs}/mlflow.db",
           "PYTHONWARNINGS": "ignore"}
    # SIGINT at its default disposition in the sweep, as in a terminal: a test runner started in the background
    # (nohup, `&`) ignores SIGINT, and an ignored signal stays ignored across exec. Without this line, under
    # `bash -c "trap '' INT; pytest ..."` the sweep finishes as if Ctrl-C never came (how this test once failed in CI)
    return subprocess.Popen([sys.executable, str(ROOT / "run.py"), *args], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _wait_for_checkpoint(outputs, experiment, proc, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if list((outputs / "points" / experiment).glob("*/generator/ckpt-*.pt")):
            return
        time.sleep(0.05)
    raise AssertionError(proc.stdout.read()[-3000:] if proc.poll() is not None else "no checkpoint in time")


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def _point_pids(driver_pid: int) -> list[int]:
    """The running point's process: forked by the driver's fork server, i.e. a grandchild of the driver."""
    return [grandchild for child in _children(driver_pid) for grandchild in _children(child)]


def _histories_ok(client, runs, steps):
    for run in runs:
        logged = [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")]
        assert sorted(logged) == list(range(10, steps + 1, 10)), (run.info.run_name, sorted(logged))


def test_a_point_killed_mid_training_fails_and_the_sweep_goes_on(tmp_path):
    sweep = _popen(["-m", *LONG, "experiment=killpoint", "head=mbm,bitwise"], tmp_path)
    _wait_for_checkpoint(tmp_path, "killpoint", sweep)
    points = _point_pids(sweep.pid)
    assert points
    for pid in points:                       # the point's own process, not the sweep's driver
        os.kill(pid, signal.SIGKILL)
    out = sweep.communicate(timeout=600)[0]
    assert sweep.returncode == 1, out[-3000:]
    assert "1 finished, 0 infeasible, 1 failed" in out
    client, points, parents = child_runs(tmp_path, "killpoint")
    by_name = {r.info.run_name: r for r in points}
    assert by_name["mbm-16b"].data.tags["status"] == "failed" and by_name["mbm-16b"].info.status == "FAILED"
    assert "SIGKILL" in by_name["mbm-16b"].data.tags["error"]
    assert by_name["bitwise-16b"].data.tags["status"] == "finished"
    assert parents[0].info.status != "RUNNING"


def test_a_killed_sweep_launched_again_finishes_every_point_once(tmp_path):
    args = ["-m", *LONG, "experiment=killsweep", "head=mbm,bitwise"]
    sweep = _popen(args, tmp_path)
    _wait_for_checkpoint(tmp_path, "killsweep", sweep)
    os.killpg(sweep.pid, signal.SIGKILL)     # the driver and its point, without a chance to clean up
    sweep.wait()
    again = _popen(args, tmp_path)
    out = again.communicate(timeout=900)[0]
    assert again.returncode == 0, out[-3000:]
    assert "closed 1 launch(es) left open" in out
    client, points, parents = child_runs(tmp_path, "killsweep")
    assert sorted(r.info.run_name for r in points) == ["bitwise-16b", "mbm-16b"]     # one run per point
    assert all(r.data.tags["status"] == "finished" for r in points)
    assert any(r.data.tags.get("resumes") == "1" for r in points)
    _histories_ok(client, points, 400)
    assert sorted(p.info.status for p in parents) == ["FINISHED", "KILLED"]


def test_ctrl_c_marks_the_point_interrupted_and_a_relaunch_continues_it(tmp_path):
    args = ["-m", *LONG, "experiment=ctrlc", "generator.train.steps=1200"]   # Ctrl-C well inside training
    sweep = _popen(args, tmp_path)
    _wait_for_checkpoint(tmp_path, "ctrlc", sweep)
    os.killpg(sweep.pid, signal.SIGINT)      # what Ctrl-C in a terminal does: the whole foreground group
    out = sweep.communicate(timeout=120)[0]
    assert sweep.returncode == 130, out[-3000:]
    client, points, parents = child_runs(tmp_path, "ctrlc")
    assert points[0].data.tags["status"] == "interrupted" and points[0].info.status == "KILLED"
    assert parents[0].info.status == "KILLED"
    again = run_cli(args, tmp_path, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    client, points, _ = child_runs(tmp_path, "ctrlc")
    assert len(points) == 1 and points[0].data.tags["status"] == "finished" and points[0].data.tags["resumes"] == "1"
    _histories_ok(client, points, 1200)


def test_two_first_launches_on_a_fresh_store_both_succeed(tmp_path):
    launches = [_popen(["-m", "profile=smoke", "stage=tokenizer", f"experiment=concurrent{i}", "tokenizer.bits=4"],
                       tmp_path) for i in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in launches]
    assert [p.returncode for p in launches] == [0, 0], outs[0][-2000:] + outs[1][-2000:]
    for i in range(2):
        _, points, _ = child_runs(tmp_path, f"concurrent{i}")
        assert [r.data.tags["status"] for r in points] == ["finished"]


def test_a_corrupt_cached_tokenizer_is_rebuilt(tmp_path):
    first = run_cli(["profile=smoke", "stage=tokenizer", "tokenizer.bits=4"], tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    (cached,) = (tmp_path / "cache" / "tokenizer").glob("*/tokenizer.pt")
    cached.write_bytes(cached.read_bytes()[:-50])
    second = run_cli(["profile=smoke", "stage=tokenizer", "tokenizer.bits=4"], tmp_path)
    assert second.returncode == 0, second.stderr[-2000:]
    out = second.stdout + second.stderr
    assert "fails its checksum" in out and "building it again" in out
    _, points, _ = child_runs(tmp_path, "default")
    assert sorted(r.data.tags["tokenizer_reused"] for r in points) == ["False", "False"]


def test_the_memory_wall_is_this_machine_s(tmp_path):
    proc = run_cli(["-m", "sweep=codebook_scaling", "profile=smoke", "head=softmax", "tokenizer.bits=8,24,32"],
                   tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _, points, _ = child_runs(tmp_path, "codebook_scaling")
    status = {r.info.run_name: r.data.tags["status"] for r in points}
    assert status == {"softmax-8b": "finished", "softmax-24b": "infeasible", "softmax-32b": "infeasible"}


# ----------------------------------------------------------------------------------------------------- damaged files
def _metric_steps(client, run_id, key):
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def test_damaged_codes_and_classifier_are_rebuilt_and_the_result_is_unchanged(tmp_path):
    args = ["profile=smoke", "experiment=rebuilt"]
    first = run_cli(args, tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    (shard,) = (tmp_path / "cache" / "codes").glob("*/shard-*.codes")
    shard.write_bytes(os.urandom(shard.stat().st_size))                 # same size, other bytes
    (classifier,) = (tmp_path / "cache" / "classifier").glob("*/classifier.pt")
    classifier.write_bytes(classifier.read_bytes()[:-100])              # truncated
    again = run_cli([*args, "force=true"], tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    out = again.stdout + again.stderr
    assert out.count("fails its checksum") == 2 and "building it again" in out
    _, points, _ = child_runs(tmp_path, "rebuilt")
    assert len(points) == 2
    gfids = {r.data.metrics["gfid"] for r in points}
    assert len(gfids) == 1, gfids                    # rebuilt exactly as first built: the same gFID


# ----------------------------------------------------------------------------------------------------- kills, Ctrl-C
def test_ctrl_c_of_a_single_point_is_one_line_and_the_same_command_continues_it(tmp_path):
    args = [*LONG, "experiment=ctrlc1", "generator.train.steps=1500"]
    point = _popen(args, tmp_path)                   # no -m: one point in this process
    _wait_for_checkpoint(tmp_path, "ctrlc1", point)
    os.killpg(point.pid, signal.SIGINT)
    out = point.communicate(timeout=120)[0]
    assert point.returncode == 130, out[-3000:]
    assert "Traceback" not in out and "KeyboardInterrupt" not in out, out[-3000:]
    assert out.strip().splitlines()[-1] == "mbm-16b: interrupted; run the same command again to continue it"
    _, points, _ = child_runs(tmp_path, "ctrlc1")
    assert points[0].data.tags["status"] == "interrupted" and points[0].info.status == "KILLED"
    again = run_cli(args, tmp_path, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    client, points, _ = child_runs(tmp_path, "ctrlc1")
    assert len(points) == 1 and points[0].data.tags["resumes"] == "1"
    _histories_ok(client, points, 1500)


def test_a_point_killed_between_a_periodic_gfid_and_its_next_checkpoint_logs_each_step_once(tmp_path):
    from mlflow.tracking import MlflowClient

    args = ["profile=smoke", "experiment=periodic", "generator.train.steps=300", "eval.gfid_every=20",
            "launcher.checkpoint_every=100"]
    point = _popen(args, tmp_path)
    client, deadline, run_id = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db"), time.time() + 300, None
    while time.time() < deadline and point.poll() is None:
        ckpts = list((tmp_path / "points" / "periodic").glob("*/generator/ckpt-*.pt"))
        record = list((tmp_path / "points" / "periodic").glob("*/run.json"))
        if ckpts and record:                          # past the checkpoint at 100: kill at the next gFID, at 120
            run_id = json.loads(record[0].read_text())["run_id"]
            if any(s > 100 for s in _metric_steps(client, run_id, "gfid")):
                break
        time.sleep(0.05)
    os.killpg(point.pid, signal.SIGKILL)
    point.wait()
    assert run_id is not None
    logged = _metric_steps(client, run_id, "gfid")
    assert any(s > 100 for s in logged) and max(s for s in logged) < 200, logged
    again = run_cli(args, tmp_path, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    steps = _metric_steps(client, run_id, "gfid")
    assert steps == sorted(set(steps)), steps                               # no step twice
    assert [s for s in steps if 0 < s < 300] == list(range(20, 300, 20))    # and none missing
    assert _metric_steps(client, run_id, "train_tflop") == sorted(set(_metric_steps(client, run_id, "train_tflop")))


def test_sample_batches_of_a_replaced_checkpoint_are_not_reused(tmp_path):
    ckpts = {}
    for seed in (0, 1):
        trained = run_cli(["profile=smoke", f"seed={seed}", f"experiment=train{seed}"], tmp_path)
        assert trained.returncode == 0, trained.stderr[-2000:]
        _, (run,), _ = child_runs(tmp_path, f"train{seed}")
        ckpts[seed] = run.data.params["generator.checkpoint"]
    weights = tmp_path / "weights.pt"
    shutil.copy(ckpts[0], weights)
    args = ["profile=smoke", "stage=sample", f"checkpoint={weights}", "experiment=sample",
            "generator.sample.num_samples=40", "generator.sample.batch_size=2", "generator.sample.kv_cache=false"]
    first = _popen(args, tmp_path)
    deadline = time.time() + 300
    while time.time() < deadline and len(list((tmp_path / "points" / "sample").glob("*/samples/batch-*.npz"))) < 4:
        time.sleep(0.02)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    shutil.copy(ckpts[1], weights)                    # the same path, other weights
    again = run_cli(args, tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    shutil.copy(ckpts[1], tmp_path / "fresh.pt")
    fresh = run_cli([*args[:2], f"checkpoint={tmp_path / 'fresh.pt'}", "experiment=fresh", *args[4:]], tmp_path)
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    _, samples, _ = child_runs(tmp_path, "sample")
    _, (reference,), _ = child_runs(tmp_path, "fresh")
    done = next(r for r in samples if r.data.tags["status"] == "finished")
    assert done.data.metrics["samples_generated"] == 40                  # none of the old batches kept
    assert np.array_equal(np.load(done.data.params["samples.npz"])["arr_0"],     # every sample from the new weights
                          np.load(reference.data.params["samples.npz"])["arr_0"])


# ----------------------------------------------------------------------------------------------------- a full disk
@pytest.fixture
def small_disk(tmp_path):
    """A 64 MiB tmpfs (root only), unmounted afterwards."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(disk)],
                                           capture_output=True).returncode:
        pytest.skip("needs root to mount a small tmpfs")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_disk_that_fills_during_a_checkpoint_is_one_line_and_the_point_continues_later(small_disk):
    args = [*LONG, "experiment=full", "generator.train.steps=1500"]
    point = _popen(args, small_disk)
    _wait_for_checkpoint(small_disk, "full", point)
    filler = small_disk / "filler"
    subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=64k"], capture_output=True)   # until ENOSPC
    out = point.communicate(timeout=300)[0]
    lines = [line for line in out.splitlines() if not line.startswith(("train ", "pretokenize", "sample"))]
    assert point.returncode == 1, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    assert "error: no space left on device" in lines[-1] and "launch again" in lines[-1], lines[-5:]
    assert not [p for p in small_disk.rglob("*") if ".tmp-" in p.name]        # nothing half-written
    client, points, _ = child_runs(small_disk, "full")
    assert points[0].info.status in ("RUNNING", "FAILED")                     # marked failed, or left to continue
    filler.unlink()
    again = run_cli(args, small_disk, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    client, points, _ = child_runs(small_disk, "full")
    finished = [r for r in points if r.data.tags["status"] == "finished"]
    assert len(finished) == 1 and finished[0].data.tags.get("resumed_from_step")
    _histories_ok(client, finished, 1500)
