"""Datasets yielding (uint8 CHW image, int label).

`digits`: scikit-learn's 1,797 handwritten digits (8x8, 10 classes, shipped inside scikit-learn), upscaled.
`imagefolder`: an ImageNet-style tree `root/<class>/<image>`, RGB, preprocessed as the release does (ADM's
`center_crop_arr`: box-halving, bicubic resize of the short side, center crop).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from bar import UserError

IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png", ".bmp", ".webp"}


class TensorImages(Dataset):
    """Images held in memory as one uint8 tensor (N, C, H, W) with int labels."""

    def __init__(self, images_NCHW: torch.Tensor, labels_N: torch.Tensor, num_classes: int):
        assert images_NCHW.dtype == torch.uint8 and images_NCHW.ndim == 4
        self.images = images_NCHW
        self.labels = labels_N.long()
        self.num_classes = num_classes

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.images[i], int(self.labels[i])


def _split_indices(n: int, val_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    # A fixed permutation: the split is part of the dataset's identity, never of the run's seed.
    order = np.random.default_rng(seed).permutation(n)
    n_val = val_size
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def load_digits_split(split: str, resolution: int = 16, val_size: int = 297, split_seed: int = 0) -> TensorImages:
    from sklearn.datasets import load_digits  # optional heavy import (~1 s): only the digits need scikit-learn

    digits = load_digits()
    pixels = torch.from_numpy(digits.images).float() / 16.0  # (1797, 8, 8) in [0, 1]
    images = F.interpolate(pixels[:, None], size=(resolution, resolution), mode="bilinear", align_corners=False)
    images = (images.clamp(0, 1) * 255).round().to(torch.uint8)
    labels = torch.from_numpy(digits.target)
    train_idx, val_idx = _split_indices(len(images), val_size, split_seed)
    idx = {"train": train_idx, "val": val_idx}[split]
    return TensorImages(images[idx], labels[idx], num_classes=10)


def center_crop_arr(pil_image, image_size: int):
    """ADM's ImageNet preprocessing (guided-diffusion `center_crop_arr`, used by the BAR release's pretokenization):
    while the short side is at least 2 x image_size, halve both sides (integer division) with a BOX filter; then
    resize bicubically so that the short side is image_size (each side round(side * image_size / short side)); then
    crop image_size x image_size at offsets ((h - image_size) // 2, (w - image_size) // 2). Returns a PIL image."""
    while min(pil_image.size) >= 2 * image_size:
        pil_image = pil_image.resize(tuple(side // 2 for side in pil_image.size), resample=Image.BOX)
    scale = image_size / min(pil_image.size)
    pil_image = pil_image.resize(tuple(round(side * scale) for side in pil_image.size), resample=Image.BICUBIC)
    arr = np.asarray(pil_image)
    top, left = (arr.shape[0] - image_size) // 2, (arr.shape[1] - image_size) // 2
    return Image.fromarray(arr[top:top + image_size, left:left + image_size])


def load_image(path: str | Path, resolution: int) -> torch.Tensor:
    """An image file -> RGB -> `center_crop_arr` -> uint8 (3, resolution, resolution)."""
    with Image.open(path) as img:
        img = center_crop_arr(img.convert("RGB"), resolution)
    return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).contiguous()


class ImageFolderImages(Dataset):
    """`root/<class>/<image>`: labels from sorted folder names; images decoded lazily through `load_image`."""

    def __init__(self, root: str | Path, resolution: int):
        root = Path(root)
        if not root.is_dir():
            raise UserError(f"data folder {root} does not exist: set data.root to an ImageNet-style folder tree")
        self.classes = sorted(p.name for p in root.iterdir() if p.is_dir())
        self.samples = [(f, label) for label, name in enumerate(self.classes)
                        for f in sorted((root / name).iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES]
        if not self.samples:
            raise UserError(f"data folder {root} holds no images in class sub-folders (expected {root}/<class>/*.JPEG)")
        self.resolution = resolution
        self.num_classes = len(self.classes)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        path, label = self.samples[i]
        return load_image(path, self.resolution), label


def build_dataset(data_cfg, split: str) -> Dataset:
    """The dataset named by `data.name` for `split` (train | val)."""
    if data_cfg.name == "digits":
        return load_digits_split(split, data_cfg.resolution, data_cfg.val_size, data_cfg.split_seed)
    if data_cfg.name == "imagefolder":
        root = data_cfg.root if split == "train" else (data_cfg.val_root or data_cfg.root)
        return ImageFolderImages(root, data_cfg.resolution)
    raise UserError(f"unknown data.name {data_cfg.name!r}: use digits or imagefolder")


def images_only(dataset: Dataset) -> Dataset:
    """The uint8 images of a dataset without labels, as torch-fidelity wants them."""
    return _ImagesOnly(dataset)


class _ImagesOnly(Dataset):
    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.dataset[i][0]
