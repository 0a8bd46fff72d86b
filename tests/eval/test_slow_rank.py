"""Two gloo ranks whose collectives time out after 3 s: rank 0 scores a sample alone for 8 s and the other rank waits
for it in distributed.wait_for_ranks (a barrier of its own, with a stage-sized timeout) instead of in the next
collective. The reference split's features are extracted by both ranks together. Without the wait, the same delay
times out the other rank's next collective (the control at the end)."""

import os
import socket
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.multiprocessing as mp

SLOW_S, COLLECTIVE_TIMEOUT_S = 8, 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, out: str, weights: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from bar.core import distributed
    from bar.data.datasets import load_digits_split
    from bar.eval.features import CLASSIFIER_EXTRACTOR
    from bar.eval.fidelity import FidelityEvaluator

    distributed.setup("cpu", timeout_s=COLLECTIVE_TIMEOUT_S, wait_timeout_s=120)
    ev = FidelityEvaluator(CLASSIFIER_EXTRACTOR, weights, "clf", "digits", cache_root=Path(out) / "cache",
                           batch_size=64, device=torch.device("cpu"))
    extracted = []
    real_features, real_scores = ev.features, ev._scores
    ev.features = lambda images, workers=0: extracted.append(len(images)) or real_features(images, workers)
    if rank == 0:
        ev._scores = lambda *a: time.sleep(SLOW_S) or real_scores(*a)
    val = load_digits_split("val")
    mine = val.images[distributed.shard_indices(len(val))]
    scores = ev.compare(mine, val, "val")
    result = {"scores": scores, "extracted": extracted, "after_wait": distributed.mean_scalar(float(rank))}
    # the control: the same delay with no wait_for_ranks times out the waiting rank's next collective
    try:
        if rank == 0:
            time.sleep(SLOW_S)
        distributed.mean_scalar(1.0)
        result["control"] = "passed"
    except RuntimeError as err:
        result["control"] = f"timed out: {err}"[:200]
    torch.save(result, Path(out) / f"rank{rank}.pt")
    os._exit(0)     # the broken group of the control cannot be torn down cleanly


@pytest.mark.faults
def test_a_slow_scoring_rank_does_not_time_out_the_others(tmp_path):
    from bar.training.classifier import train_classifier
    from bar.data.datasets import load_digits_split

    ccfg = SimpleNamespace(width=8, batch_size=32, steps=2, lr=1e-3, features="penultimate", random_seed=0,
                           random_width=8)
    train_classifier(load_digits_split("train"), 1, 8, 10, ccfg, tmp_path)
    mp.spawn(_worker, args=(_free_port(), str(tmp_path), str(tmp_path / "classifier.pt")), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    assert r0["scores"]["fid"] == pytest.approx(0.0, abs=1e-3) and r1["scores"] is None   # all of val against val
    assert r0["after_wait"] == r1["after_wait"] == 0.5        # the collective after the slow scoring ran on both
    n_val = len(load_digits_split("val"))
    # each rank extracted its half of the reference and its half of the sample: nobody extracted the whole split
    assert sorted(r0["extracted"] + r1["extracted"]) == sorted([n_val // 2, n_val - n_val // 2] * 2)
    assert len(list((tmp_path / "cache" / "fidelity").glob("*/features.pt"))) == 1
    assert r1["control"].startswith("timed out")
