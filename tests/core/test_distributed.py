"""Data-parallel training with 2 gloo processes on CPU (torch.multiprocessing): gradients are synchronised, so both
ranks end with identical weights, equal to one process training on the whole global batch; sharded sampling helpers
gather in order; 2 ranks sample exactly what 1 process samples (the pipeline's in-memory samples and stage=sample's
batch files)."""

import dataclasses
import os
import socket
from pathlib import Path

import torch
import torch.multiprocessing as mp

from bar.training.loop import Checkpointing, Recipe, infinite_batches, train


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _model_and_data():
    torch.manual_seed(0)
    x = torch.randn(64, 5)
    y = x.sum(1, keepdim=True) + 0.05 * torch.randn(64, 1)
    return torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)), (x, y)


def _train(model, data, rank, world, tmp=None, steps=8):
    def loss_fn(module, batch, step, generator):
        xb, yb = batch
        return (module(xb) - yb).pow(2).mean()

    return train(model, loss_fn, infinite_batches(data, 16, seed=1, rank=rank, world_size=world),
                 Recipe(steps=steps, lr=5e-2, log_every=4), distributed=world > 1,
                 hooks=[Checkpointing(tmp, 4)] if tmp else [])


def _worker(rank, world, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from bar.core import distributed

    env = distributed.setup("cpu")
    assert env.world_size == world and env.rank == rank and env.backend == "gloo"
    model, data = _model_and_data()
    if rank == 1:   # a different start: rank 0's weights are broadcast before the first step
        torch.nn.init.zeros_(model[0].weight)
    result = _train(model, data, rank, world, tmp=os.path.join(out_dir, "ckpt"))
    from bar.eval.fidelity import gather_features

    dealt = distributed.shard_indices(10)                      # rank r holds items r::world
    in_turn = gather_features({"x": dealt[:, None] * 10})
    batches = torch.arange(5 * rank, 5 * rank + 5)              # rank r holds items [5r, 5r + 5), reversed
    by_index = gather_features({"x": batches.flip(0)[:, None] * 10}, items=batches.flip(0))
    gathered = (in_turn["x"][:, 0], by_index["x"][:, 0]) if rank == 0 else None
    assert (rank == 0) == (in_turn is not None)
    torch.save({"state": model.state_dict(), "history": result.history, "gathered": gathered,
                "samples": result.samples}, os.path.join(out_dir, f"rank{rank}.pt"))
    distributed.teardown()


def test_two_gloo_ranks_stay_in_sync_and_match_one_process(tmp_path):
    torch.set_num_threads(1)
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    for key in r0["state"]:
        assert torch.equal(r0["state"][key], r1["state"][key]), key          # gradients were synchronised
    assert r0["history"] == r1["history"] and r0["samples"] == 8 * 16
    assert all(g.tolist() == list(range(0, 100, 10)) for g in r0["gathered"])   # features in item order on rank 0
    model, data = _model_and_data()                                            # one process, whole global batch
    _train(model, data, 0, 1)
    for key in r0["state"]:
        assert torch.allclose(r0["state"][key], model.state_dict()[key], atol=1e-5), key
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir() if p.suffix == ".pt") == ["ckpt-000000004.pt",
                                                                                          "ckpt-000000008.pt"]


def test_single_process_is_world_size_one():
    from bar.core import distributed

    env = distributed.setup("cpu")
    assert (env.world_size, env.rank, env.is_main) == (1, 0, True)
    from bar.eval.fidelity import gather_features

    assert gather_features({"x": torch.tensor([2, 0, 1])}, items=torch.tensor([2, 0, 1]))["x"].tolist() == [0, 1, 2]


# ----------------------------------------------------------------------------------------------------- sampling
SAMPLES, BATCH = 10, 3      # 4 global batches (3, 3, 3, 1): rank 0 makes batches 0 and 2, rank 1 batches 1 and 3


def _sampler():
    from bar.orchestration.build import build_generator, build_tokenizer, sampling_schedule
    from bar.orchestration.config import compose
    from bar.orchestration.stages.samples import Sampler

    cfg = compose(["profile=smoke", "model.compile=false"])
    torch.manual_seed(0)
    model, tokenizer = build_generator(cfg), build_tokenizer(cfg).eval()
    return Sampler(model, tokenizer, sampling_schedule(cfg, model), temperature=1.0, seed=3, kv_cache=True,
                   compile=False, precision="bf16", device=torch.device("cpu")), cfg.data.num_classes


def _sample(out_dir, rank=0):
    """Both paths of the one sampling loop: the pipeline's shard gathered in order, and stage=sample's files."""
    from bar.core import distributed
    from bar.orchestration.sampling_plan import SamplingRun
    from bar.orchestration.stages import samples

    sampler, classes = _sampler()
    run = SamplingRun("gfid", 2.0, SAMPLES, BATCH)
    labels = samples.balanced_labels(SAMPLES, classes)
    shard = samples.sample_shard(sampler, run, labels)
    assert len(shard.images) == len(shard.items) and shard.per_s > 0
    folder = Path(out_dir) / "batches"
    made = samples.generate_batches(sampler, run, labels, folder)
    distributed.barrier()
    tokens = samples.read_batches(folder, 4, "tokens") if rank == 0 else None
    parts = distributed.all_gather_objects((shard.items, shard.images))
    images = torch.cat([i for _, i in parts])[torch.cat([items for items, _ in parts]).argsort()]
    torch.save({"images": images, "tokens": tokens, "made": made["generated"]},
               Path(out_dir) / f"samples{rank}.pt")


def _sampling_worker(rank, world, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from bar.core import distributed

    distributed.setup("cpu")
    _sample(out_dir, rank)
    distributed.teardown()


def test_two_gloo_ranks_sample_what_one_process_samples(tmp_path):
    mp.spawn(_sampling_worker, args=(2, _free_port(), str(tmp_path / "two")), nprocs=2, join=True)
    (tmp_path / "one").mkdir()
    _sample(tmp_path / "one")
    two, one = (torch.load(tmp_path / d / "samples0.pt", weights_only=False) for d in ("two", "one"))
    assert one["images"].shape == (SAMPLES, 1, 16, 16) and one["images"].dtype == torch.uint8
    assert torch.equal(two["images"], one["images"])                  # the pipeline's samples, in item order
    assert (two["tokens"] == one["tokens"]).all() and two["made"] == one["made"] == SAMPLES   # stage=sample's files
    # each batch's stream is keyed by its index alone: batch 2 made on its own is the same, under another seed not
    from bar.orchestration.stages import samples

    sampler, classes = _sampler()
    labels = samples.balanced_labels(SAMPLES, classes)[2 * BATCH:3 * BATCH]
    _, alone = samples.sample_batch(sampler, labels, 2.0, 2)
    _, reseeded = samples.sample_batch(dataclasses.replace(sampler, seed=4), labels, 2.0, 2)
    assert torch.equal(alone, one["images"][2 * BATCH:3 * BATCH]) and not torch.equal(reseeded, alone)
