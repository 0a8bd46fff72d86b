"""Checkpoints at cluster scale: written when minutes of wall time have passed (rank 0's clock decides for every rank),
streamed to disk without a copy of the state in memory, loadable with a plain torch.load, verified by the checksum
beside them; files of the earlier format (a checksum line first) still load."""

import hashlib
import io
import os
import socket
import subprocess
import tracemalloc

import pytest
import torch
import torch.multiprocessing as mp

from bar.core import files
from bar.core.files import CorruptCheckpoint, checksum_path, load_verified, payload_problem, save_atomic
from bar.training.checkpoints import CheckpointDir
from bar.training.loop import Checkpointing, Recipe, infinite_batches, train


class FakeClock:
    """Seconds that pass only when a training step says so."""

    def __init__(self, per_step: float):
        self.now, self.per_step = 0.0, per_step

    def __call__(self) -> float:
        return self.now


def _train(folder, steps, clock, minutes=1.0, every=0, rank=0, world=1):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    x, y = torch.randn(32, 4), torch.randn(32, 1)

    def loss_fn(module, batch, step, generator):
        clock.now += clock.per_step                   # a step takes `per_step` seconds of wall time
        return (module(batch[0]) - batch[1]).pow(2).mean()

    hook = Checkpointing(folder, every, keep=100, minutes=minutes, clock=clock)
    return train(model, loss_fn, infinite_batches((x, y), 8, seed=0, rank=rank, world_size=world),
                 Recipe(steps=steps, lr=1e-2), distributed=world > 1, hooks=[hook])


# ----------------------------------------------------------------------------------------------------- cadence
def test_checkpoints_come_when_the_minutes_have_passed_and_at_the_end(tmp_path):
    _train(tmp_path, steps=10, clock=FakeClock(per_step=25))      # 1 minute = 2.4 steps: due after steps 3, 6, 9
    assert CheckpointDir(tmp_path).steps() == [3, 6, 9, 10]


def test_without_minutes_or_steps_only_the_end_is_checkpointed(tmp_path):
    _train(tmp_path, steps=10, clock=FakeClock(per_step=1e6), minutes=0)
    assert CheckpointDir(tmp_path).steps() == [10]


def test_a_step_cadence_still_works_beside_the_minutes(tmp_path):
    _train(tmp_path, steps=10, clock=FakeClock(per_step=25), every=4)
    assert CheckpointDir(tmp_path).steps() == [3, 4, 7, 8, 10]     # the clock restarts at each checkpoint


def test_the_clock_restarts_when_a_run_resumes(tmp_path):
    _train(tmp_path, steps=4, clock=FakeClock(per_step=25))        # checkpoints 3 and 4 (the end)
    clock = FakeClock(per_step=25)
    clock.now = 1e6                                                # a new process: its clock starts anywhere
    _train(tmp_path, steps=10, clock=clock)
    assert CheckpointDir(tmp_path).steps() == [3, 4, 7, 10]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_worker(rank, world, port, folder):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from bar.core import distributed

    distributed.setup("cpu", timeout_s=60)     # ranks that disagreed would deadlock: fail within a minute instead
    try:
        # rank 1's clock runs 40x faster: were it asked, it would checkpoint after every step
        _train(folder, steps=10, clock=FakeClock(per_step=25 if rank == 0 else 1000), rank=rank, world=world)
    finally:
        distributed.teardown()


def test_ranks_checkpoint_together_when_rank_0s_clock_says_so(tmp_path):
    torch.set_num_threads(1)
    mp.spawn(_rank_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    assert CheckpointDir(tmp_path).steps() == [3, 6, 9, 10]


# ----------------------------------------------------------------------------------------------------- files
def test_a_checkpoint_is_a_plain_torch_file_with_its_checksum_beside_it(tmp_path):
    ckpts = CheckpointDir(tmp_path)
    path = ckpts.save({"step": 7, "w": torch.arange(10)}, 7)
    assert torch.equal(torch.load(path, weights_only=False)["w"], torch.arange(10))
    sidecar = checksum_path(path)
    assert sidecar.name == "ckpt-000000007.pt.sha256"
    assert sidecar.read_text() == f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {path.name}\n"
    assert subprocess.run(["sha256sum", "--check", "--quiet", sidecar.name], cwd=tmp_path).returncode == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-000000007.pt", "ckpt-000000007.pt.sha256"]


def test_a_flipped_byte_is_caught_by_the_checksum_and_the_previous_checkpoint_is_used(tmp_path):
    ckpts = CheckpointDir(tmp_path, keep=3)
    for step in (10, 20):
        ckpts.save({"step": step, "w": torch.full((1000,), float(step))}, step)
    data = bytearray(ckpts.path(20).read_bytes())
    data[len(data) // 2] ^= 0x01                                   # one bit, same size: torch.load may not notice
    ckpts.path(20).write_bytes(bytes(data))
    assert "checksum mismatch" in payload_problem(ckpts.path(20))
    with pytest.raises(CorruptCheckpoint):
        load_verified(ckpts.path(20))
    assert ckpts.load_latest()["step"] == 10
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["ckpt-000000010.pt", "ckpt-000000010.pt.sha256", "ckpt-000000020.corrupt",
                     "ckpt-000000020.corrupt.sha256"]                  # set aside with its checksum


def test_a_checkpoint_whose_checksum_never_got_written_is_not_trusted(tmp_path):
    ckpts = CheckpointDir(tmp_path)
    for step in (10, 20):
        ckpts.save({"step": step}, step)
    checksum_path(ckpts.path(20)).unlink()                         # e.g. copied without it
    assert ckpts.load_latest()["step"] == 10


def test_old_format_files_with_a_checksum_line_still_load_and_verify(tmp_path):
    buffer = io.BytesIO()
    torch.save({"step": 5}, buffer)
    payload = buffer.getvalue()
    old = tmp_path / "ckpt-000000005.pt"
    old.write_bytes(files.MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload)
    assert load_verified(old) == {"step": 5} and payload_problem(old) is None
    assert CheckpointDir(tmp_path).load_latest() == {"step": 5}
    assert files.read_generator_checkpoint(old) == {"step": 5}
    old.write_bytes(old.read_bytes()[:-20])
    assert "checksum mismatch" in payload_problem(old)
    with pytest.raises(CorruptCheckpoint):
        load_verified(old)


def test_a_save_does_not_copy_the_state_in_host_memory(tmp_path):
    state = {"w": torch.randn(4_000_000), "b": torch.randn(2_000_000)}   # 24 MB
    size = sum(t.numel() * t.element_size() for t in state.values())
    tracemalloc.start()                  # traces Python's buffers (a BytesIO and its copies), not the tensors
    try:
        save_atomic(state, tmp_path / "ckpt.pt")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < size / 20, f"a save held {peak / 1e6:.1f} MB of buffers for a {size / 1e6:.0f} MB state"
    assert load_verified(tmp_path / "ckpt.pt")["w"].equal(state["w"])
