"""Sampling, one loop for every caller: the pipeline's gFID (final, unguided, periodic) keeps its samples in memory,
stage=sample writes each batch to its own file (a killed job continues from the batches already written), then one
`.npz` in the layout guided-diffusion's evaluator reads (`arr_0`, uint8 NHWC) for the ADM protocol, and the tokens.
The batches on disk belong to the checkpoint's content, not its path: replaced weights never mix with old batches.

A run's labels are cut into global batches of its batch size; global batch j draws from its own generator seeded
`batch_seed(seed, j)` and rank r makes batches r::world. The samples therefore depend on the seed, the labels and
the batch size, not on how many ranks made them or on whether the job was interrupted. Precision
(generator.sample.precision, `precision_context`): on CUDA bf16 autocast, or fp32 with TF32 matmuls and convolutions
(tf32: what the release's sample_imagenet.py sets), or strict fp32; on CPU always fp32."""

from __future__ import annotations

import json
import logging
import math
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch

from bar.core import distributed
from bar.core.progress import Progress
from bar.data.images import float_to_images
from bar.eval.adm import SampleNpzWriter
from bar.model.decoding import release_decoders
from bar.model.sampling import generate
from bar.orchestration.build import AnyTokenizer

if TYPE_CHECKING:   # not at run time: sampling needs none of the planning and tracking stack (the GPU checks)
    from bar.orchestration.sampling_plan import SamplingRun

log = logging.getLogger("bar")


@dataclass(frozen=True)
class Sampler:
    """A generator ready to sample, and what every sampling run of a point shares. `tokenizer` None: the samples
    are the tokens, not decoded."""
    model: torch.nn.Module
    tokenizer: AnyTokenizer | None
    schedule: dict
    temperature: float
    seed: int
    kv_cache: bool
    compile: bool
    precision: str         # fp32 | tf32 | bf16 (generator.sample.precision)
    device: torch.device


def batch_seed(seed: int, j: int) -> int:
    """The seed of global batch j's random stream."""
    return seed * 1_000_003 + j


def balanced_labels(num_samples: int, num_classes: int) -> torch.Tensor:
    """As in the paper's protocol: the same number of samples per class."""
    return torch.arange(num_samples) % num_classes


def batch_labels(labels: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    return list(labels.split(batch_size))


def effective_precision(precision: str, device: torch.device) -> str:
    """What `precision` runs as on `device`: CPU has neither TF32 nor bf16 sampling, it runs fp32."""
    return precision if device.type == "cuda" else "fp32"


def precision_settings(precision: str, device: torch.device) -> tuple[torch.dtype | None, bool | None]:
    """(autocast dtype or None, TF32 on or off, or None: left alone) of sampling at `precision` on `device`. bf16
    keeps TF32 on for the ops autocast leaves in fp32, as training runs them."""
    if device.type != "cuda":
        return None, None
    return (torch.bfloat16 if precision == "bf16" else None), precision != "fp32"


@contextmanager
def precision_context(precision: str, device: torch.device):
    """Sampling and decoding at `precision` (module docstring); the TF32 switches are restored after the block, so
    training and evaluation keep theirs."""
    dtype, tf32 = precision_settings(precision, device)
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    if tf32 is not None:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
    try:
        with torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@torch.no_grad()
def sample_batch(sampler: Sampler, labels_B: torch.Tensor, cfg_scale: float, j: int):
    """Global batch j: (tokens, uint8 images or None without a tokenizer)."""
    device = sampler.device
    generator = torch.Generator(device=device).manual_seed(batch_seed(sampler.seed, j))
    schedule = {k: v for k, v in sampler.schedule.items() if v is not None}
    with precision_context(sampler.precision, device):
        tokens = generate(sampler.model, labels_B.to(device), cfg_scale=cfg_scale, temperature=sampler.temperature,
                          generator=generator, kv_cache=sampler.kv_cache,
                          compile=sampler.compile and sampler.kv_cache, **schedule)
        images = float_to_images(sampler.tokenizer.decode(tokens)) if sampler.tokenizer is not None else None
    return tokens, images


@torch.no_grad()
def sample_batches(sampler: Sampler, labels: torch.Tensor, run: SamplingRun,
                   keep: Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor | None], None],
                   done: Callable[[int], bool] = lambda j: False) -> dict:
    """The loop: this rank's global batches (j % world == rank) that are not `done`, each handed to
    `keep(j, labels_B, tokens, images)` as it is made. Returns {"generated": images made now by all ranks,
    "seconds": the slowest rank's wall time (sampling + decoding)}."""
    batches = batch_labels(labels, run.batch_size)
    mine = [j for j in range(distributed.rank(), len(batches), distributed.world_size()) if not done(j)]
    sampler.model.eval()
    start = time.perf_counter()
    with Progress(sum(len(batches[j]) for j in mine), f"sample (cfg {run.cfg_scale:g})", unit="img") as bar:
        for j in mine:
            tokens, images = sample_batch(sampler, batches[j], run.cfg_scale, j)
            keep(j, batches[j], tokens, images)
            bar.update(len(batches[j]))
    if sampler.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    release_decoders(sampler.model)   # their KV caches would otherwise stay allocated (e.g. while training goes on)
    totals = distributed.all_gather_objects((sum(len(batches[j]) for j in mine), seconds))
    return {"generated": sum(m for m, _ in totals), "seconds": max(s for _, s in totals)}


@dataclass
class SampleShard:
    """This rank's samples of one run: uint8 images (the tokens without a tokenizer), the global index of each in the
    run's labels (what the evaluators order features by), and the throughput of all ranks together (img/s)."""
    images: torch.Tensor
    items: torch.Tensor
    per_s: float


def sample_shard(sampler: Sampler, run: SamplingRun, labels: torch.Tensor) -> SampleShard:
    """The pipeline's sampling, kept in memory: this rank's global batches of `labels`, in batch order."""
    made: list[tuple[torch.Tensor, torch.Tensor]] = []

    def keep(j, labels_B, tokens, images):
        first = j * run.batch_size
        made.append(((images if images is not None else tokens).cpu(), torch.arange(first, first + len(labels_B))))

    result = sample_batches(sampler, labels, run, keep)
    if not made:
        return SampleShard(torch.empty(0, dtype=torch.uint8), torch.empty(0, dtype=torch.long), throughput(result))
    return SampleShard(torch.cat([m for m, _ in made]), torch.cat([i for _, i in made]), throughput(result))


SOURCE = "source.json"   # in a samples folder: what its batches were made from


def generate_batches(sampler: Sampler, run: SamplingRun, labels: torch.Tensor, folder: Path,
                     source: dict | None = None) -> dict:
    """stage=sample: this rank's batches that are not on disk yet, each written atomically to its own file in
    `folder` (tokens, labels, and the decoded images with a tokenizer). `source` identifies what the batches come
    from (the checkpoint's content: bar.core.files.file_identity; the batch size): batches on disk made otherwise
    (the checkpoint was replaced since, the batch was planned for another GPU) are removed first. Returns what
    `sample_batches` does."""
    if distributed.is_main():
        _claim_folder(folder, {"checkpoint": source})
    distributed.barrier()

    def keep(j, labels_B, tokens, images):
        _write_batch(_batch_path(folder, j), tokens, images, labels_B)

    return sample_batches(sampler, labels, run, keep, done=lambda j: _batch_path(folder, j).is_file())


def _claim_folder(folder: Path, source: dict) -> None:
    """Make `folder` hold only batches made from `source`: any others are removed, and `source` recorded."""
    folder.mkdir(parents=True, exist_ok=True)
    record = folder / SOURCE
    try:
        if json.loads(record.read_text()) == source:
            return
    except (OSError, ValueError):
        pass
    stale = sorted(folder.glob("batch-*.npz"))
    if stale:
        log.warning("%s: %d sample batch(es) were made from other weights (the checkpoint changed): making them "
                    "again", folder, len(stale))
    for path in stale:
        path.unlink()
    tmp = record.with_name(f".{SOURCE}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(source))
    os.replace(tmp, record)


def _batch_path(folder: Path, index: int) -> Path:
    return folder / f"batch-{index:06d}.npz"


def _write_batch(path: Path, tokens: torch.Tensor, images: torch.Tensor | None, labels: torch.Tensor) -> None:
    arrays = {"tokens": tokens.cpu().numpy(), "labels": labels.numpy(), "attempt": np.array(os.getpid())}
    if images is not None:
        arrays["images"] = images.permute(0, 2, 3, 1).cpu().numpy()
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.npz")
    np.savez(tmp, **arrays)   # type: ignore[arg-type]  # mypy maps **arrays onto numpy's keyword-only allow_pickle
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
