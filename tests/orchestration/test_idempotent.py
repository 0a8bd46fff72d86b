"""Idempotent sweeps: a point's identity is its config signature; launching the same sweep again runs nothing, the
dry run says which points are done, force=true re-runs them."""

import pytest

from conftest import child_runs, run_cli

SWEEP = ["-m", "profile=smoke", "stage=tokenizer", "experiment=idem", "tokenizer.bits=4,8"]


@pytest.mark.slow
def test_second_launch_runs_nothing_and_force_reruns(tmp_path):
    first = run_cli(SWEEP, tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "2 finished" in first.stderr
    _, points, parents = child_runs(tmp_path, "idem")
    assert len(points) == 2 and len(parents) == 1

    dry = run_cli(SWEEP + ["dry_run=true"], tmp_path)
    assert dry.returncode == 0, dry.stderr[-2000:]
    assert "2 points, 2 already done" in dry.stdout and dry.stdout.count("done (finished)") == 2

    second = run_cli(SWEEP, tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "2 already done: nothing to run" in second.stderr
    _, points_after, parents_after = child_runs(tmp_path, "idem")
    assert len(points_after) == 2 and len(parents_after) == 1           # no new runs, no new launch

    # a changed non-result key (paths, tracking, launcher settings) is still the same point
    moved = run_cli(SWEEP + ["launcher.checkpoint_every=7"], tmp_path)
    assert "2 already done" in moved.stderr

    forced = run_cli(SWEEP + ["force=true"], tmp_path)
    assert forced.returncode == 0, forced.stderr[-3000:]
    _, points_forced, _ = child_runs(tmp_path, "idem")
    assert len(points_forced) == 4
    assert {r.data.tags["signature"] for r in points_forced} == {r.data.tags["signature"] for r in points}


@pytest.mark.slow
def test_partly_done_sweep_runs_only_the_rest(tmp_path):
    one = run_cli(["-m", "profile=smoke", "stage=tokenizer", "experiment=idem", "tokenizer.bits=4"], tmp_path)
    assert one.returncode == 0, one.stderr[-3000:]
    both = run_cli(SWEEP, tmp_path)
    assert both.returncode == 0, both.stderr[-3000:]
    assert "1 finished, 0 infeasible, 0 failed, 1 already done" in both.stderr
    _, points, _ = child_runs(tmp_path, "idem")
    assert sorted(r.info.run_name for r in points) == ["fsq-4b", "fsq-8b"]
