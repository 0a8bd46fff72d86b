"""Training data at scale: a sharded, resumable batch sampler and DataLoaders with workers on top of it.

    ShardedBatchSampler(n, global_batch, seed=0, rank=0, world_size=1, views=1)
        iterates (indices, views) of this rank's slice of every global batch, forever, from a start position
    ResumableLoader(fetch_dataset, sampler, num_workers=0, pin_memory=False, prefetch_factor=2)
        next(loader) -> batch;  state_dict() / load_state_dict(state): the position of the batches consumed so far
        a UserError met fetching a batch, in a worker or not, is raised by next() as its one line (FetchError)
    image_loader(dataset, global_batch, *, seed, rank, world_size, num_workers, flip=True) -> ResumableLoader
        (uint8 images (b, C, H, W), labels (b,)) of an image dataset (e.g. bar.data.datasets.ImageFolderImages)
    codes_loader(store, global_batch, *, seed, rank, world_size, num_workers) -> ResumableLoader
        (tokens (b, L, k|d), labels (b,)) of a bar.data.codes.CodesStore, one random view per item

The sampler plays DistributedSampler's role, with a position that can be saved. Epoch e orders the n items by a
permutation drawn from numpy's generator seeded with (seed, e) and, for stores holding views (image and flip), draws a
view per item from the same generator; batch j of the epoch is items [j * G, (j + 1) * G) of that order (G = global
batch; the last n mod G items of an epoch are dropped). Rank r takes the r-th of `world_size` equal contiguous parts
of each global batch (as bar.training.loop.BatchStream does), so the union of the ranks' parts is the 1-rank global
batch and the averaged gradient does not depend on the number of ranks. The RNG state is a function of (seed,
epoch); the position is (epoch, offset = batches of the epoch already consumed): that is the whole state, and it is
the same on every rank, so a run can resume on another number of ranks with the same global batch.

A DataLoader with workers runs ahead of the training loop (prefetch), so the position is counted where batches are
handed to the loop (`ResumableLoader`), not where the sampler is: a restored loader yields exactly the batch the
interrupted one would have yielded next.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from bar import UserError

if TYPE_CHECKING:                                # annotations only: keep PIL and sklearn out of the loader's imports
    from bar.data.datasets import ImageDataset


class ShardedBatchSampler(Sampler):
    """This rank's (indices int64 (b,), views int64 (b,)) of every global batch, from (epoch, offset) on, forever."""

    def __init__(self, n: int, global_batch: int, seed: int = 0, rank: int = 0, world_size: int = 1, views: int = 1):
        if global_batch % world_size:
            raise UserError(f"global batch {global_batch} is not divisible by {world_size} ranks")
        if global_batch > n:
            raise UserError(f"global batch {global_batch} is larger than the dataset ({n} items)")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.n, self.global_batch, self.seed = n, global_batch, seed
        self.rank, self.world_size, self.views = rank, world_size, views
        self.local_batch = global_batch // world_size
        self.batches_per_epoch = n // global_batch
        self.epoch, self.offset = 0, 0                       # where iteration starts

    def epoch_order(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(permutation of range(n), view per position) of `epoch`."""
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(self.n)
        views = rng.integers(0, self.views, self.n) if self.views > 1 else np.zeros(self.n, dtype=np.int64)
        return order, views

    def global_batch_at(self, epoch: int, offset: int) -> tuple[np.ndarray, np.ndarray]:
        """Batch `offset` of `epoch`, all ranks' parts: (indices, views) of global_batch items."""
        order, views = self.epoch_order(epoch)
        sl = slice(offset * self.global_batch, (offset + 1) * self.global_batch)
        return order[sl], views[sl]

    def advance(self, epoch: int, offset: int, batches: int) -> tuple[int, int]:
        """The position `batches` batches after (epoch, offset)."""
        total = epoch * self.batches_per_epoch + offset + batches
        return divmod(total, self.batches_per_epoch)

    def set_position(self, epoch: int, offset: int) -> None:
        self.epoch, self.offset = self.advance(epoch, offset, 0)

    def __iter__(self):
        epoch, offset = self.epoch, self.offset
        lo, hi = self.rank * self.local_batch, (self.rank + 1) * self.local_batch
        while True:
            order, views = self.epoch_order(epoch)
            for j in range(offset, self.batches_per_epoch):
                base = j * self.global_batch
                yield order[base + lo:base + hi].astype(np.int64), views[base + lo:base + hi].astype(np.int64)
            epoch, offset = epoch + 1, 0

    def __len__(self) -> int:                                # batches per epoch (the iterator itself is endless)
        return self.batches_per_epoch


class ResumableLoader:
    """Endless iterator of batches from `fetch_dataset[(indices, views)]` driven by `sampler` through a DataLoader
    (workers, prefetch, pinned memory). `state_dict()` is the position after the batches handed out so far."""

    def __init__(self, fetch_dataset: Dataset, sampler: ShardedBatchSampler, num_workers: int = 0,
                 pin_memory: bool = False, prefetch_factor: int | None = 2, multiprocessing_context=None):
        self.fetch_dataset, self.sampler = fetch_dataset, sampler
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self.prefetch_factor = prefetch_factor if num_workers else None
        self.multiprocessing_context = multiprocessing_context if num_workers else None
        self._start = (sampler.epoch, sampler.offset)
        self.consumed = 0
        self._it = None

    def _iterator(self):
        self.sampler.set_position(*self._start)
        loader = DataLoader(self.fetch_dataset, batch_size=None, sampler=self.sampler, num_workers=self.num_workers,
                            pin_memory=self.pin_memory, prefetch_factor=self.prefetch_factor,
                            multiprocessing_context=self.multiprocessing_context)
        return iter(loader)

    def __iter__(self):
        return self

    def __next__(self):
        if self._it is None:
            self._it = self._iterator()
        batch = next(self._it)
        if isinstance(batch, FetchError):       # a worker's (or this process's) one-line mistake
            raise UserError(batch.message)
        self.consumed += 1
        return batch

    @property
    def position(self) -> tuple[int, int]:
        """(epoch, offset) of the next batch."""
        return self.sampler.advance(*self._start, self.consumed)

    def state_dict(self) -> dict:
        epoch, offset = self.position
        s = self.sampler
        return {"epoch": epoch, "offset": offset, "seed": s.seed, "global_batch": s.global_batch, "n": s.n,
                "views": s.views}

    def load_state_dict(self, state: dict) -> None:
        s = self.sampler
        for key in ("seed", "global_batch", "n", "views"):
            if state[key] != getattr(s, key):
                raise UserError(f"data position was saved with {key}={state[key]}, this run has {getattr(s, key)}")
        self.close()
        self._start, self.consumed = (state["epoch"], state["offset"]), 0

    def close(self) -> None:
        """Stop the workers (a later next() starts them again at the current position)."""
        if self._it is not None:
            self._start, self.consumed = self.position, 0
            shutdown = getattr(self._it, "_shutdown_workers", None)     # multi-process iterators only
            if shutdown is not None:
                shutdown()
            self._it = None


# ----------------------------------------------------------------------------------------------------- fetchers
@dataclass(frozen=True)
class FetchError:
    """A user's mistake met while fetching a batch (e.g. an unreadable image), handed back as the batch: raised again
    where the batch is taken, as the one line it is. (Raised inside a worker, torch would re-raise it with the
    worker's whole traceback in its message.)"""
    message: str


class Fetcher(Dataset):
    """Fetches one batch per item; a UserError becomes a FetchError batch (see ResumableLoader.__next__)."""

    def __getitem__(self, batch):
        try:
            return self.fetch(batch)
        except UserError as err:
            return FetchError(str(err))

    def fetch(self, batch):
        raise NotImplementedError


class ImageBatches(Fetcher):
    """Fetches a batch of an image dataset: (indices, views) -> (uint8 images (b, C, H, W), labels (b,)); view 1 is
    the horizontal flip."""

    def __init__(self, dataset: ImageDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def fetch(self, batch):
        indices, views = batch
        images, labels = [], []
        for i, v in zip(indices.tolist(), views.tolist()):
            image, label = self.dataset[i]
            images.append(image.flip(-1) if v else image)
            labels.append(label)
        return torch.stack(images), torch.tensor(labels, dtype=torch.int64)


class CodesBatches(Fetcher):
    """Fetches a batch of a CodesStore: (indices, views) -> (tokens (b, L, k|d), labels (b,)), one read per batch."""

    def __init__(self, store):
        self.store = store

    def __len__(self) -> int:
        return len(self.store)

    def fetch(self, batch):
        indices, views = batch
        return self.store.read(indices, views)


def image_loader(dataset: ImageDataset, global_batch: int, *, seed: int = 0, rank: int = 0,
                 world_size: int = 1, num_workers: int = 0, flip: bool = True,
                 pin_memory: bool = False) -> ResumableLoader:
    """Shuffled, sharded, resumable batches of images (random horizontal flip per item when `flip`)."""
    sampler = ShardedBatchSampler(len(dataset), global_batch, seed, rank, world_size, views=2 if flip else 1)
    return ResumableLoader(ImageBatches(dataset), sampler, num_workers=num_workers, pin_memory=pin_memory)


def codes_loader(store, global_batch: int, *, seed: int = 0, rank: int = 0, world_size: int = 1,
                 num_workers: int = 0, pin_memory: bool = False) -> ResumableLoader:
    """Shuffled, sharded, resumable batches of pretokenized codes, each item as one of its stored views (image or
    flip) drawn by the sampler."""
    sampler = ShardedBatchSampler(len(store), global_batch, seed, rank, world_size, views=store.views)
    return ResumableLoader(CodesBatches(store), sampler, num_workers=num_workers, pin_memory=pin_memory)
