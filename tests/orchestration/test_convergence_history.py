"""Evaluations during training (eval.gfid_every / eval.rfid_every): they leave training exactly as it would be without
them, their time is not training time, and the metric history they log is what analysis/ reads back as curves."""

import pytest
import math
import time

import torch

from analysis.convergence import CONVERGENCE_KEYS, convergence_frame, rfid_frame
from analysis.runs import load_metric_history, load_runs
from bar.core.files import load_verified
from bar.training.loop import PeriodicEval, Recipe, train
from conftest import child_runs, run_cli


def _train(hooks=()):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 1))
    data = torch.randn(12, 16, 4)

    def loss_fn(module, batch, step, generator):
        return module(batch).pow(2).mean()

    result = train(model, loss_fn, iter(data), Recipe(steps=12, lr=1e-2), hooks=hooks)
    return model, result


def test_periodic_eval_leaves_training_unchanged_and_out_of_its_time():
    modes = []

    def evaluate(model, step):        # draws from the global RNG and sleeps, as sampling + scoring would
        modes.append(model.training)
        torch.rand(100)
        time.sleep(0.05)
        return float(step) / 10

    plain, _ = _train()
    hook = PeriodicEval(every=5, total=12, evaluate=evaluate, on_value=lambda s, v: logged.append((s, v)))
    logged = []
    start = time.perf_counter()
    evaluated, result = _train([hook])
    wall = time.perf_counter() - start
    for a, b in zip(plain.parameters(), evaluated.parameters()):
        assert torch.equal(a, b)                        # dropout's draws unchanged: same weights
    assert hook.history == logged == [(5, 0.5), (10, 1.0)]   # not at the last step: the final evaluation covers it
    assert modes == [False, False] and evaluated.training is False
    assert result.seconds < wall - 0.09                 # the two evaluations' sleep is not training time
    restored = PeriodicEval(5, 12, evaluate)
    restored.load_state_dict(hook.state_dict())
    assert restored.history == hook.history


def _history(client, run, key):
    return sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))


@pytest.mark.cli
def test_curves_logged_during_training_and_read_back(tmp_path):
    """One smoke point with gFID every 2 generator steps and rFID every 3 tokenizer steps, beside the same point
    without: identical tokenizer and generator weights, and the curves read back by analysis/."""
    common = ["profile=smoke", "tokenizer.bits=8"]
    with_curves = run_cli([*common, "eval.gfid_every=2", "eval.rfid_every=3", "experiment=curves"], tmp_path / "a")
    assert with_curves.returncode == 0, with_curves.stderr[-3000:]
    without = run_cli([*common, "experiment=plain"], tmp_path / "b")
    assert without.returncode == 0, without.stderr[-3000:]

    client, (run,), _ = child_runs(tmp_path / "a", "curves")
    _, (plain,), _ = child_runs(tmp_path / "b", "plain")
    steps = 6                                            # the smoke preset's generator steps; 8 tokenizer steps
    gfid = _history(client, run, "gfid")
    assert [s for s, _ in gfid if s] == [2, 4, steps] and all(math.isfinite(v) for _, v in gfid)
    assert dict(gfid)[steps] == run.data.metrics["gfid"] == plain.data.metrics["gfid"]
    tflop = _history(client, run, "train_tflop")
    assert [s for s, _ in tflop] == [2, 4, steps] and tflop[0][1] > 0
    assert math.isclose(tflop[2][1], 3 * tflop[0][1], rel_tol=1e-9)      # compute grows with the steps
    rfid = _history(client, run, "rfid")
    assert [s for s, _ in rfid if s] == [3, 6, 8] and dict(rfid)[8] == plain.data.metrics["rfid"]

    for key in ("generator.checkpoint",):
        a = load_verified(run.data.params[key])["state_dict"]
        b = load_verified(plain.data.params[key])["state_dict"]
        assert all(torch.equal(a[k], b[k]) for k in a)    # the evaluations did not change training
    a = load_verified(run.data.params["tokenizer.file"])["state_dict"]
    b = load_verified(plain.data.params["tokenizer.file"])["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)

    uri = f"sqlite:///{tmp_path / 'a'}/mlflow.db"
    runs = load_runs(uri)
    history = load_metric_history(uri, runs=runs, keys=CONVERGENCE_KEYS)
    curves = convergence_frame(history, runs)
    assert list(curves["step"]) == [2, 4, steps] and curves["gfid"].iloc[-1] == dict(gfid)[steps]
    assert list(curves["train_tflop"]) == [v for _, v in tflop]
    assert list(rfid_frame(history, runs)["step"]) == [3, 6, 8]
