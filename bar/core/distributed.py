"""Multi-process training: one process per GPU (or CPU task), set up from the environment SLURM/submitit give it.

- `setup()` reads submitit's JobEnvironment (a SLURM job with several tasks, or submitit's local executor), or the
  torchrun variables (RANK / WORLD_SIZE / MASTER_ADDR), and initialises torch.distributed: NCCL on GPUs, gloo on CPU.
  A single process gets world size 1 and no process group at all.
- Helpers every stage uses: `rank()`, `world_size()`, `is_main()`, gradient all-reduce, gathering Python objects,
  `resolve_device()`.
- `wait_for_ranks(stage)`: where one rank works alone (rank 0 scoring a sample), the others wait in a barrier of a
  gloo group of its own whose timeout is sized for a stage (`wait_timeout_s`), not in the next collective, whose
  timeout (`timeout_s`, NCCL's watchdog) is sized for a step."""

from __future__ import annotations

import logging
import os
import random
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import submitit
import torch
import torch.distributed as dist

from bar import UserError

log = logging.getLogger("bar")


def resolve_device(name: str) -> torch.device:
    """`auto`: cuda when available, else cpu; otherwise the named device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UserError(f"device={name!r} is not a device: use auto, cpu, cuda or cuda:N") from None


def configure_device(device: torch.device) -> None:
    """What the release enables on GPUs: TF32 matmuls and convolutions (bf16 autocast is per training loop)."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


@dataclass
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_from_submitit() -> dict | None:
    """rank / world size / master from submitit when this process is one task of a multi-task job."""
    if not os.environ.get("SUBMITIT_FOLDER") and not os.environ.get("SUBMITIT_EXECUTOR"):
        return None
    try:
        env = submitit.JobEnvironment()
        if env.num_tasks <= 1:
            return None
    except Exception:  # not inside a submitit job
        return None
    # below Linux's ephemeral range (32768-60999): a port there can be taken by any outgoing connection on the node
    # (seen: EADDRINUSE on rank 0, rank 1 left waiting in the rendezvous)
    port = os.environ.get("MASTER_PORT") or str(random.Random(f"bar-{env.job_id}").randint(20000, 32000))
    return {"rank": env.global_rank, "world_size": env.num_tasks, "local_rank": env.local_rank,
            "master_addr": env.hostnames[0] if env.num_nodes > 1 else "127.0.0.1", "master_port": port}


def _env_from_torchrun() -> dict | None:
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or "RANK" not in os.environ:
        return None
    return {"rank": int(os.environ["RANK"]), "world_size": int(os.environ["WORLD_SIZE"]),
            "local_rank": int(os.environ.get("LOCAL_RANK", 0)),
            "master_addr": os.environ.get("MASTER_ADDR", "127.0.0.1"),
            "master_port": os.environ.get("MASTER_PORT", "29500")}


_stage_group: Any = None       # the gloo group of wait_for_ranks (see the module docstring)


def setup(device_type: str | None = None, timeout_s: float = 1800, wait_timeout_s: float = 6 * 3600) -> DistEnv:
    """Initialise torch.distributed from the environment (idempotent). World size 1: nothing is initialised.
    `timeout_s`: any collective; `wait_timeout_s`: a rank waiting for the others at `wait_for_ranks`."""
    if dist.is_available() and dist.is_initialized():
        return current()
    found = _env_from_submitit() or _env_from_torchrun()
    if not found:
        return DistEnv()
    if device_type is None:
        device_type = "cuda" if torch.cuda.is_available() else "cpu"
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        torch.cuda.set_device(found["local_rank"] % max(1, torch.cuda.device_count()))
    os.environ.update(MASTER_ADDR=str(found["master_addr"]), MASTER_PORT=str(found["master_port"]),
                      RANK=str(found["rank"]), WORLD_SIZE=str(found["world_size"]),
                      LOCAL_RANK=str(found["local_rank"]))
    dist.init_process_group(backend, init_method="env://", rank=found["rank"], world_size=found["world_size"],
                            timeout=timedelta(seconds=timeout_s))
    global _stage_group
    _stage_group = dist.new_group(backend="gloo", timeout=timedelta(seconds=wait_timeout_s))
    log.info("torch.distributed: rank %d of %d (%s)", found["rank"], found["world_size"], backend)
    return current()


def current() -> DistEnv:
    if not (dist.is_available() and dist.is_initialized()):
        return DistEnv()
    return DistEnv(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)), dist.get_backend())


def teardown() -> None:
    global _stage_group
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _stage_group = None


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def wait_for_ranks(stage: str) -> None:
    """Every rank leaves once all have arrived; a wait past a minute is logged with `stage`. Call it after work one
    rank does alone, on every rank: the others then wait here (up to `wait_timeout_s`), never in a collective."""
    if world_size() == 1:
        return
    started = time.monotonic()
    dist.barrier(group=_stage_group)
    waited = time.monotonic() - started
    if waited > 60:
        log.info("rank %d waited %.0f s for the other ranks (%s)", rank(), waited, stage)


def _device() -> torch.device:
    if world_size() > 1 and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def device_ids(module: torch.nn.Module) -> list[int] | None:
    """DistributedDataParallel's `device_ids` for a module: its CUDA device, or None on CPU."""
    device = next(module.parameters()).device
    return [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" \
        else None


def mean_scalar(value: float) -> float:
    if world_size() == 1:
        return value
    t = torch.tensor([float(value)], dtype=torch.float64, device=_device())
    dist.all_reduce(t)
    return float(t.item()) / world_size()


def all_reduce_gradients(params) -> None:
    """Average the gradients of `params` over the ranks (in one collective), as DDP does for a wrapped module; for
    parameters trained outside DDP (the GAN discriminator's heads). No-op on one rank."""
    if world_size() == 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def max_int(value: int) -> int:
    if world_size() == 1:
        return int(value)
    t = torch.tensor([int(value)], dtype=torch.int64, device=_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def max_ints(values: list[int]) -> list[int]:
    """Each value's maximum over the ranks, in one collective (several per-step decisions for the price of one)."""
    if world_size() == 1:
        return [int(v) for v in values]
    t = torch.tensor([int(v) for v in values], dtype=torch.int64, device=_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [int(v) for v in t.tolist()]


def all_gather_objects(obj: Any) -> list:
    if world_size() == 1:
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src)
    return box[0]


def shard_indices(n: int) -> torch.Tensor:
    """This rank's share of range(n): every world_size-th item, starting at rank."""
    return torch.arange(rank(), n, world_size())
