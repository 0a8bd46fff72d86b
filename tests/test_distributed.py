"""Data-parallel training with 2 gloo processes on CPU (torch.multiprocessing): gradients are synchronised, so both
ranks end with identical weights, equal to one process training on the whole global batch; sharded sampling helpers
gather in order."""

import os
import socket

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
    shard = torch.arange(10)[distributed.shard_indices(10)] * 10
    gathered = distributed.gather_shards(shard, 10)
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
    assert r0["gathered"].tolist() == list(range(0, 100, 10))
    model, data = _model_and_data()                                            # one process, whole global batch
    _train(model, data, 0, 1)
    for key in r0["state"]:
        assert torch.allclose(r0["state"][key], model.state_dict()[key], atol=1e-5), key
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["ckpt-000000004.pt", "ckpt-000000008.pt"]


def test_single_process_is_world_size_one():
    from bar.core import distributed

    env = distributed.setup("cpu")
    assert (env.world_size, env.rank, env.is_main) == (1, 0, True)
    assert distributed.gather_shards(torch.arange(3), 3).tolist() == [0, 1, 2]
