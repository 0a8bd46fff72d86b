"""The release's tokenizer training view, one image at a time in the loader's workers.

    train_view(image, resolution, seed) -> uint8 (C, resolution, resolution)
    train_view_loader(dataset, global_batch, resolution, *, seed, rank, world_size, num_workers) -> ResumableLoader

The release trains its tokenizer on `Resize(256, bicubic, antialias=True) -> RandomCrop(256) ->
RandomHorizontalFlip() -> ToTensor -> Normalize(0.5, 0.5)` of each decoded PIL image (data/webdataset_reader.py:48-65,
configs/tokenizer/bar_fsq_16bits.yaml `dataset.preprocessing`); evaluation and pretokenization center-crop instead
(bar.data.datasets.load_image). Images of a folder differ in size, so the resize and crop happen per image before
batching, here, rather than on a batch. An item's crop and flip come from a seed the sampler draws for it
(ShardedBatchSampler with views=AUGMENT_SEEDS, keyed by (seed, epoch)): reproducible, resumable, the same on any number
of ranks.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Subset

from bar.data.loader import Fetcher, ResumableLoader, ShardedBatchSampler

AUGMENT_SEEDS = 2 ** 32        # the sampler's `views` for training views: a view is the seed of one crop and flip


def resized_shape(h: int, w: int, shorter: int) -> tuple[int, int]:
    """torchvision Resize(int): the shorter side becomes `shorter`, the longer int(shorter * long / short)."""
    if h <= w:
        return shorter, int(shorter * w / h)
    return int(shorter * h / w), shorter


def _hwc(image: Image.Image | torch.Tensor) -> np.ndarray:
    """uint8 (H, W, C) of a PIL image or of a uint8 (C, H, W) tensor."""
    if isinstance(image, torch.Tensor):
        return image.permute(1, 2, 0).numpy()
    arr = np.asarray(image)
    return arr[..., None] if arr.ndim == 2 else arr


def resize_shorter(image_HWC: np.ndarray, shorter: int) -> np.ndarray:
    """torchvision's Resize(shorter, BICUBIC, antialias=True) of a PIL image, as the release applies it: PIL's
    bicubic (always antialiased) to `resized_shape`; an image already that size is left as it is."""
    h, w, c = image_HWC.shape
    size = resized_shape(h, w, shorter)
    if size == (h, w):
        return image_HWC
    pil = Image.fromarray(np.ascontiguousarray(image_HWC[..., 0] if c == 1 else image_HWC))
    return _hwc(pil.resize((size[1], size[0]), Image.Resampling.BICUBIC))


def train_view(image: Image.Image | torch.Tensor, resolution: int, seed: int) -> torch.Tensor:
    """The release's training view of one image (a PIL image, or a uint8 (C, H, W) tensor held in memory): shorter
    side resized to `resolution`, a `resolution` square cropped at a uniform offset, mirrored with probability 1/2,
    drawn in that order (as RandomCrop then RandomHorizontalFlip) from a generator seeded by `seed`. uint8 (C, res,
    res); in-memory images already at `resolution` (digits, photo_crops) are only mirrored or not."""
    x = resize_shorter(_hwc(image), resolution)
    rng = np.random.default_rng(seed)
    top = int(rng.integers(0, x.shape[0] - resolution + 1))
    left = int(rng.integers(0, x.shape[1] - resolution + 1))
    x = x[top:top + resolution, left:left + resolution]
    if rng.random() < 0.5:
        x = x[:, ::-1]
    return torch.from_numpy(x.transpose(2, 0, 1).copy())           # a copy: writable, owns its pixels


def source_item(dataset, i: int):
    """(image before any crop, label) of item i: an image folder's decoded file (`source`), else the item as stored
    (TensorImages hold their images whole)."""
    if isinstance(dataset, Subset):
        return source_item(dataset.dataset, dataset.indices[i])
    source = getattr(dataset, "source", None)
    return source(i) if source is not None else dataset[i]


class TrainViewBatches(Fetcher):
    """Fetches a batch of training views: (indices, seeds) -> (uint8 images (b, C, res, res), labels (b,))."""

    def __init__(self, dataset, resolution: int):
        self.dataset, self.resolution = dataset, resolution

    def __len__(self) -> int:
        return len(self.dataset)

    def fetch(self, batch):
        indices, seeds = batch
        images, labels = [], []
        for i, s in zip(indices.tolist(), seeds.tolist()):
            image, label = source_item(self.dataset, i)
            images.append(train_view(image, self.resolution, s))
            labels.append(label)
        return torch.stack(images), torch.tensor(labels, dtype=torch.int64)


def train_view_loader(dataset, global_batch: int, resolution: int, *, seed: int = 0, rank: int = 0,
                      world_size: int = 1, num_workers: int = 0, pin_memory: bool = False) -> ResumableLoader:
    """Shuffled, sharded, resumable batches of the release's training views (see `train_view`), each item's crop and
    flip drawn anew every epoch."""
    sampler = ShardedBatchSampler(len(dataset), global_batch, seed, rank, world_size, views=AUGMENT_SEEDS)
    return ResumableLoader(TrainViewBatches(dataset, resolution), sampler, num_workers=num_workers,
                           pin_memory=pin_memory)
