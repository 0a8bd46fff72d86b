"""model.compile=true (every paper preset's default) + DistributedDataParallel + gradient accumulation (DDP's no_sync
before the last micro-batch), through the generator stage's own training path (bar.orchestration.stages.generator
.train_generator -> bar.training.loop.train): 2 gloo ranks x 2 accumulation steps, compiled, train like 1 eager
process x 4 accumulation steps on the same global batch: the same loss at every step and the same final weights.

Tolerance: fp32 on CPU; Inductor fuses and reorders reductions, so compiled losses differ from eager ones in the last
bits: per-step losses within rel 1e-5 / abs 1e-6, final weights within atol 1e-5, rtol 1e-4 (and the weights moved
> 1e-3). That no_sync holds under compile is checked directly: DDP's comm hook counts one all-reduce per optimizer
step (with no_sync ignored it counts one per micro-batch: the test fails, tried). Wall time: ~1 min with a cold
Inductor cache on an idle 2-core machine (most of it compiling in the two ranks), ~20 s warm."""

import dataclasses
import os
import socket
import time

import pytest
import torch
import torch.multiprocessing as mp

pytestmark = pytest.mark.compile

ITEMS, TOKENS, BITS = 16, 16, 16          # the smoke model: a 4x4 grid of 16-bit tokens
STEPS, GLOBAL_BATCH = 4, 8                # per rank 4 of 8; micro-batch 2 in both runs (one compiled shape)
OVERRIDES = ["profile=smoke", f"generator.train.steps={STEPS}", f"generator.train.batch_size={GLOBAL_BATCH}",
             "generator.train.warmup=1", "generator.train.lr=1e-2", "model.label_dropout=0.3"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _codes(root):
    """A 2-view store of random bit tokens, as bar.data.codes.pretokenize writes it."""
    from bar.data.codes import ShardWriter

    g = torch.Generator().manual_seed(0)
    writer = ShardWriter(root, n_total=ITEMS, tokens=TOKENS, values_per_token=BITS, kind="bits")
    writer.append([torch.randint(0, 2, (ITEMS, TOKENS, BITS), generator=g, dtype=torch.uint8) for _ in range(2)],
                  torch.arange(ITEMS) % 10)
    writer.close()


def _train(out_dir, compiled: bool, accum: int, rank: int = 0) -> None:
    """The generator stage's training (log every step, so the history holds each step's loss over all ranks)."""
    from bar.data.codes import CodesStore
    from bar.orchestration.build import build_generator
    from bar.orchestration.config import compose
    from bar.orchestration.stages import generator as stage

    cfg = compose([*OVERRIDES, f"model.compile={str(compiled).lower()}"])
    torch.manual_seed(0)
    model = build_generator(cfg)
    recipe = stage.generator_recipe
    stage.generator_recipe = lambda *a, **k: dataclasses.replace(recipe(*a, **k), log_every=1)
    start = time.perf_counter()
    try:
        result = stage.train_generator(cfg, model, CodesStore(os.path.join(out_dir, "codes")), torch.device("cpu"),
                                       os.path.join(out_dir, f"ckpt-{compiled}-{rank}"), accum_steps=accum)
    finally:
        stage.generator_recipe = recipe
    torch.save({"state": model.state_dict(), "history": result.history, "seconds": time.perf_counter() - start},
               os.path.join(out_dir, f"{'compiled' if compiled else 'eager'}{rank}.pt"))


ALLREDUCES: list[int] = []        # gradient buckets all-reduced in this process


def _counting_allreduce(state, bucket):
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    ALLREDUCES.append(bucket.index())
    return allreduce_hook(None, bucket)


def _counting_ddp():
    """DDP that counts its gradient all-reduces (DDP's own all-reduce, through a comm hook)."""
    from torch.nn.parallel import DistributedDataParallel

    class CountingDDP(DistributedDataParallel):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.register_comm_hook(None, _counting_allreduce)

    return CountingDDP


def _worker(rank, world, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from bar.core import distributed
    from bar.training import loop

    loop.DistributedDataParallel = _counting_ddp()      # type: ignore[misc]
    distributed.setup("cpu")
    _train(out_dir, compiled=True, accum=2, rank=rank)
    torch.save(ALLREDUCES, os.path.join(out_dir, f"allreduces{rank}.pt"))
    distributed.teardown()


def test_compiled_ddp_with_accumulation_equals_eager_single_process(tmp_path):
    _codes(tmp_path / "codes")
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    _train(str(tmp_path), compiled=False, accum=4)
    r0, r1, eager = (torch.load(tmp_path / f"{name}.pt", weights_only=False)
                     for name in ("compiled0", "compiled1", "eager0"))
    print(f"compiled 2 ranks x accum 2: {r0['seconds']:.1f} s; eager 1 x 4: {eager['seconds']:.1f} s")
    for key in r0["state"]:
        assert torch.equal(r0["state"][key], r1["state"][key]), key          # the ranks stayed in sync
    # no_sync held under compile: one all-reduce of the (one) gradient bucket per optimizer step, not per micro-batch
    assert torch.load(tmp_path / "allreduces0.pt") == [0] * STEPS
    assert [s for s, _ in r0["history"]] == [s for s, _ in eager["history"]] == list(range(1, STEPS + 1))
    for (_, got), (_, want) in zip(r0["history"], eager["history"]):
        assert got == pytest.approx(want, rel=1e-5, abs=1e-6)
    moved, initial = 0.0, _initial()
    for key, want in eager["state"].items():
        got = r0["state"][key]
        assert torch.allclose(got, want, atol=1e-5, rtol=1e-4), (key, (got - want).abs().max().item())
        moved = max(moved, (want - initial[key]).abs().max().item())
    assert moved > 1e-3                                # training moved the weights well past the tolerance


def _initial() -> dict:
    from bar.orchestration.build import build_generator
    from bar.orchestration.config import compose

    torch.manual_seed(0)
    return build_generator(compose(OVERRIDES)).state_dict()
