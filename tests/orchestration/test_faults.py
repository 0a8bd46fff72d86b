"""A sweep survives its worst point and its driver: a point killed mid-training is recorded failed while the rest
finish; a sweep killed (SIGKILL) or interrupted (Ctrl-C) and launched again finishes every point, one run each,
histories without gaps or duplicates, the old launch closed; concurrent first launches share a fresh store; a
corrupt cache entry is rebuilt; the memory wall is the machine's, so nothing is OOM-killed."""

import os
import signal
import subprocess
import sys
import time

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
    assert "unusable" in second.stdout + second.stderr and "building it again" in second.stdout + second.stderr
    _, points, _ = child_runs(tmp_path, "default")
    assert sorted(r.data.tags["tokenizer_reused"] for r in points) == ["False", "False"]


def test_the_memory_wall_is_this_machine_s(tmp_path):
    proc = run_cli(["-m", "sweep=codebook_scaling", "profile=smoke", "head=softmax", "tokenizer.bits=8,24,32"],
                   tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _, points, _ = child_runs(tmp_path, "codebook_scaling")
    status = {r.info.run_name: r.data.tags["status"] for r in points}
    assert status == {"softmax-8b": "finished", "softmax-24b": "infeasible", "softmax-32b": "infeasible"}
