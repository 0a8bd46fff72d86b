"""Sample generation for the paper protocol (stage=sample): class-balanced labels (50 per class for 50k samples),
in global batches spread over the ranks of the job, each batch written once to its own file so that a killed job
continues from the batches already written; then one `.npz` in the layout guided-diffusion's evaluator reads (`arr_0`,
uint8 NHWC) for the ADM protocol, and the tokens.

A batch's random stream depends on its index only (seed, batch), not on the rank that draws it, so the samples do not
depend on how many GPUs made them, or on whether the job was interrupted."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import numpy as np
import torch

from bar.core import distributed
from bar.eval.adm import SampleNpzWriter
from bar.core.progress import Progress
from bar.model.sampling import generate
from bar.data.images import float_to_images


def batch_labels(labels: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    return list(labels.split(batch_size))


def _batch_path(folder: Path, index: int) -> Path:
    return folder / f"batch-{index:06d}.npz"


@torch.no_grad()
def generate_batches(model, tokenizer, labels: torch.Tensor, folder: Path, *, schedule: dict, temperature: float,
                     cfg_scale: float, batch_size: int, seed: int, kv_cache: bool, device: torch.device,
                     bf16: bool, compile: bool = False) -> dict:
    """This rank's batches (index % world == rank) that are not on disk yet: generated, decoded (with a tokenizer),
    written atomically. Returns {"generated": images made now by all ranks, "seconds": wall time}."""
    folder.mkdir(parents=True, exist_ok=True)
    batches = batch_labels(labels, batch_size)
    mine = [j for j in range(len(batches)) if j % distributed.world_size() == distributed.rank()
            and not _batch_path(folder, j).is_file()]
    schedule = {k: v for k, v in schedule.items() if v is not None}
    model.eval()
    start, made = time.perf_counter(), 0
    with Progress(sum(len(batches[j]) for j in mine), f"sample (cfg {cfg_scale:g})", unit="img") as bar:
        for j in mine:
            generator = torch.Generator(device=device).manual_seed(seed * 1_000_003 + j)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16 and device.type == "cuda"):
                tokens = generate(model, batches[j].to(device), cfg_scale=cfg_scale, temperature=temperature,
                                  kv_cache=kv_cache, compile=compile and kv_cache,
                                  generator=generator, **schedule)
                images = float_to_images(tokenizer.decode(tokens)) if tokenizer is not None else None
            _write_batch(_batch_path(folder, j), tokens, images, batches[j])
            made += len(batches[j])
            bar.update(len(batches[j]))
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    totals = distributed.all_gather_objects((made, seconds))
    return {"generated": sum(m for m, _ in totals), "seconds": max(s for _, s in totals)}


def _write_batch(path: Path, tokens: torch.Tensor, images: torch.Tensor | None, labels: torch.Tensor) -> None:
    arrays = {"tokens": tokens.cpu().numpy(), "labels": labels.numpy(), "attempt": np.array(os.getpid())}
    if images is not None:
        arrays["images"] = images.permute(0, 2, 3, 1).cpu().numpy()
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def read_batches(folder: Path, count: int, key: str) -> np.ndarray:
    return np.concatenate([np.load(_batch_path(folder, j))[key] for j in range(count)])


def assemble_npz(folder: Path, num_batches: int, num_samples: int, out: Path) -> Path:
    """The samples of every batch, in order, as one ADM-layout `.npz` (RGB: grey images repeated to 3 channels),
    written batch by batch."""
    first = np.load(_batch_path(folder, 0))["images"]
    with SampleNpzWriter(out, num_samples, first.shape[1], first.shape[2]) as writer:
        for j in range(num_batches):
            images = np.load(_batch_path(folder, j))["images"]
            writer.write(np.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images)
    return out


def throughput(result: dict) -> float:
    """Images per second of this attempt (generation + decoding, all ranks together)."""
    return result["generated"] / result["seconds"] if result["generated"] and result["seconds"] else math.nan
