"""Datasets yielding (uint8 CHW image, int label).

`digits`: scikit-learn's 1,797 handwritten digits (8x8, 10 classes, shipped inside scikit-learn), upscaled.
`photo_crops`: RGB crops of the two photographs shipped inside scikit-learn (china.jpg, flower.jpg), area-downsampled;
10 classes = photo x vertical strip; train and val crops come from disjoint rows of each strip (see `photo_regions`).
`imagefolder`: an ImageNet-style tree `root/<class>/<image>`, RGB, preprocessed as the release pretokenizes (ADM's
`center_crop_arr`: box-halving, bicubic resize of the short side, center crop); `source` gives the whole image, which
the tokenizer's training view crops at random (bar.data.views).
"""

from __future__ import annotations

import functools
import io
import lzma
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from bar import UserError

IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png", ".bmp", ".webp"}


class ImageDataset(Protocol):
    """What the image pipeline needs of a dataset (TensorImages, ImageFolderImages, a Subset of one): a length and
    items (uint8 image (C, H, W), int label)."""

    def __len__(self) -> int: ...

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]: ...


class TensorImages(Dataset):
    """Images held in memory as one uint8 tensor (N, C, H, W) with int labels.

    raw_bits: the most information one image can hold given how it was made (e.g. the digits' 64 source pixels of 17
    grey levels); None means every stored value is free (C * H * W * 8 bits). classes: a name per label, if known.
    boxes: the crop boxes (N, 5) the images were cut from (photo_crops; see `photo_crop_boxes`), else None."""

    def __init__(self, images_NCHW: torch.Tensor, labels_N: torch.Tensor, num_classes: int,
                 raw_bits: float | None = None, classes: list[str] | None = None, boxes: np.ndarray | None = None):
        assert images_NCHW.dtype == torch.uint8 and images_NCHW.ndim == 4
        self.images = images_NCHW
        self.labels = labels_N.long()
        self.num_classes = num_classes
        self.raw_bits = raw_bits
        self.classes = classes
        self.boxes = boxes

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
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
    # each image is a fixed function of 64 source values with 17 levels (0..16): that bounds its information
    return TensorImages(images[idx], labels[idx], num_classes=10, raw_bits=64 * math.log2(17),
                        classes=[str(d) for d in range(10)])


# ------------------------------------------------------------------------------------------------------ photo_crops
PHOTOS = ("china.jpg", "flower.jpg")  # scikit-learn's sample photographs, 427 x 640 RGB, shipped in the wheel
PHOTO_STRIPS = 5                      # vertical strips per photo: 2 x 5 = 10 classes
PHOTO_SHAPE = (427, 640)              # (H, W) of both photographs


@dataclass(frozen=True)
class PhotoRegion:
    """One class of `photo_crops`: a vertical strip [left, right) of photo `photo`. Validation crops lie inside rows
    [val_top, val_bottom) of the strip (a band in its middle); training crops lie entirely above or below that band,
    so no training crop shares a pixel with any validation crop."""

    label: int
    name: str
    photo: int
    left: int
    right: int
    val_top: int
    val_bottom: int
    height: int

    def tops(self, split: str, crop: int) -> np.ndarray:
        """Every allowed top row of a crop of side `crop` in `split`."""
        if split == "val":
            return np.arange(self.val_top, self.val_bottom - crop + 1)
        return np.concatenate([np.arange(0, self.val_top - crop + 1),
                               np.arange(self.val_bottom, self.height - crop + 1)])

    def lefts(self, crop: int) -> np.ndarray:
        return np.arange(self.left, self.right - crop + 1)


@functools.lru_cache(maxsize=1)
def sample_photos() -> tuple[np.ndarray, ...]:
    """The photographs, uint8 (H, W, 3) each, decoded once per process from scikit-learn's package data (no network)."""
    from sklearn.datasets import load_sample_image  # scikit-learn: a dependency; its images ship in the wheel

    photos = tuple(np.ascontiguousarray(load_sample_image(name)) for name in PHOTOS)
    for p in photos:
        p.setflags(write=False)
    return photos


def photo_regions(crop_size: int, shape: tuple[int, int] = PHOTO_SHAPE) -> list[PhotoRegion]:
    """The 10 classes of `photo_crops` for crops of side `crop_size` on photos of `shape` (H, W): photo p, strip s ->
    label p * 5 + s. The validation band is 1.5 x crop_size rows high, centred vertically in the strip."""
    height, width = shape
    strip = width // PHOTO_STRIPS
    band = crop_size + crop_size // 2
    val_top = (height - band) // 2
    regions = []
    for p, name in enumerate(PHOTOS):
        for s in range(PHOTO_STRIPS):
            label = f"{name.split('.')[0]} x{s * strip}-{(s + 1) * strip - 1}"
            regions.append(PhotoRegion(label=p * PHOTO_STRIPS + s, name=label, photo=p, left=s * strip,
                                       right=(s + 1) * strip, val_top=val_top, val_bottom=val_top + band,
                                       height=height))
    return regions


def _check_photo_crops(resolution: int, crop_size: int, n: int, split: str, shape: tuple[int, int]) -> None:
    if crop_size < resolution or crop_size % resolution:
        raise UserError(f"data.crop_size {crop_size} must be a multiple of data.resolution {resolution} "
                        f"(crops are area-downsampled by an integer factor), e.g. data.crop_size={4 * resolution}")
    region = photo_regions(crop_size, shape)[0]
    windows = (region.lefts(crop_size), region.tops("train", crop_size), region.tops("val", crop_size))
    if not all(len(a) for a in windows):
        raise UserError(f"data.crop_size {crop_size} is too large for photo_crops: a crop must fit in a "
                        f"{region.right - region.left}-pixel strip and above, below and inside its validation band")
    if n < len(PHOTOS) * PHOTO_STRIPS:
        key = "data.train_size" if split == "train" else "data.val_size"
        raise UserError(f"{key} {n} is too small for photo_crops: use at least {len(PHOTOS) * PHOTO_STRIPS} "
                        "(one crop per class)")


def photo_crop_boxes(split: str, n: int, crop_size: int, seed: int = 0, hflip: bool = True,
                     shape: tuple[int, int] = PHOTO_SHAPE) -> np.ndarray:
    """(n, 5) int64 rows (label, photo, top, left, flip): n crops spread evenly over the 10 classes (the first n % 10
    classes get one more), positions uniform over the allowed tops and lefts of the split, drawn from a generator
    seeded by (seed, label, split) -- the same boxes every time, independent of the run's seed."""
    regions = photo_regions(crop_size, shape)
    per_class = [n // len(regions) + (r.label < n % len(regions)) for r in regions]
    rows = []
    for region, k in zip(regions, per_class):
        rng = np.random.default_rng([seed, region.label, {"train": 0, "val": 1}[split]])
        tops, lefts = region.tops(split, crop_size), region.lefts(crop_size)
        top = tops[rng.integers(0, len(tops), k)]
        left = lefts[rng.integers(0, len(lefts), k)]
        flip = (rng.random(k) < 0.5) if hflip else np.zeros(k, dtype=bool)
        rows.append(np.stack([np.full(k, region.label), np.full(k, region.photo), top, left, flip.astype(np.int64)], 1))
    return np.concatenate(rows).astype(np.int64)


def area_downsample(images_NHWC: np.ndarray, factor: int) -> np.ndarray:
    """Mean over factor x factor blocks, rounded half up, in integers (exact: the same bytes on every machine)."""
    n, h, w, c = images_NHWC.shape
    blocks = images_NHWC.reshape(n, h // factor, factor, w // factor, factor, c).sum(axis=(2, 4), dtype=np.int64)
    area = factor * factor
    return ((blocks + area // 2) // area).astype(np.uint8)


def _crop_and_downsample(photos, boxes: np.ndarray, crop_size: int, resolution: int,
                         chunk: int = 512) -> np.ndarray:
    """uint8 (N, resolution, resolution, 3): each box's crop, mirrored where flagged, area-downsampled."""
    out = np.empty((len(boxes), resolution, resolution, 3), dtype=np.uint8)
    windows = [np.lib.stride_tricks.sliding_window_view(p, (crop_size, crop_size), axis=(0, 1)) for p in photos]
    for start in range(0, len(boxes), chunk):
        part = boxes[start:start + chunk]
        crops = np.empty((len(part), crop_size, crop_size, 3), dtype=np.uint8)
        for photo, view in enumerate(windows):
            sel = part[:, 1] == photo
            # view[top, left] is (3, crop, crop): back to (crop, crop, 3)
            crops[sel] = view[part[sel, 2], part[sel, 3]].transpose(0, 2, 3, 1)
        flip = part[:, 4].astype(bool)
        crops[flip] = crops[flip][:, :, ::-1]
        out[start:start + chunk] = area_downsample(crops, crop_size // resolution)
    return out


def load_photo_crops(split: str, resolution: int = 16, crop_size: int = 64, train_size: int = 4000,
                     val_size: int = 500, split_seed: int = 0, hflip: bool = True) -> TensorImages:
    """Natural-image crops: `crop_size` x `crop_size` windows of scikit-learn's two photographs, optionally mirrored,
    area-downsampled to `resolution`; labels = photo x strip (`photo_regions`); `split` train or val."""
    if split not in ("train", "val"):
        raise UserError(f"unknown split {split!r}: use train or val")
    photos = sample_photos()
    shape = photos[0].shape[:2]
    assert all(p.shape[:2] == PHOTO_SHAPE for p in photos), "scikit-learn's sample photos changed size"
    n = train_size if split == "train" else val_size
    _check_photo_crops(resolution, crop_size, n, split, shape)
    boxes = photo_crop_boxes(split, n, crop_size, split_seed, hflip, shape)
    images = _crop_and_downsample(photos, boxes, crop_size, resolution)
    dataset = TensorImages(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(boxes[:, 0]),
                           num_classes=len(PHOTOS) * PHOTO_STRIPS, raw_bits=None,
                           classes=[r.name for r in photo_regions(crop_size, shape)], boxes=boxes)
    return dataset


def center_crop_arr(pil_image, image_size: int):
    """ADM's ImageNet preprocessing (guided-diffusion `center_crop_arr`, used by the BAR release's pretokenization):
    while the short side is at least 2 x image_size, halve both sides (integer division) with a BOX filter; then
    resize bicubically so that the short side is image_size (each side round(side * image_size / short side)); then
    crop image_size x image_size at offsets ((h - image_size) // 2, (w - image_size) // 2). Returns a PIL image."""
    while min(pil_image.size) >= 2 * image_size:
        pil_image = pil_image.resize(tuple(side // 2 for side in pil_image.size), resample=Image.Resampling.BOX)
    scale = image_size / min(pil_image.size)
    size = tuple(round(side * scale) for side in pil_image.size)
    pil_image = pil_image.resize(size, resample=Image.Resampling.BICUBIC)
    arr = np.asarray(pil_image)
    top, left = (arr.shape[0] - image_size) // 2, (arr.shape[1] - image_size) // 2
    return Image.fromarray(arr[top:top + image_size, left:left + image_size])


def open_rgb(path: str | Path) -> Image.Image:
    """An image file decoded to RGB (whole, the file closed). One-line UserError naming the file for one PIL cannot
    or will not decode (truncated, corrupt, not an image, a decompression bomb: more than 2 x Image.MAX_IMAGE_PIXELS
    pixels)."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")             # convert loads the pixels: decoding errors surface here
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise UserError(f"cannot read image {path}: {err} (remove or replace the file)") from None


def load_image(path: str | Path, resolution: int) -> torch.Tensor:
    """An image file -> RGB (`open_rgb`) -> `center_crop_arr` -> uint8 (3, resolution, resolution): the evaluation and
    pretokenization view (tokenizer training crops at random instead: bar.data.views)."""
    img = center_crop_arr(open_rgb(path), resolution)
    return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).contiguous()


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES          # by name only: a million files are listed, never stat'ed


@lru_cache(maxsize=32)
def class_folders(root: str) -> tuple[tuple[str, int], ...]:
    """(name, images directly in it) of each class folder of an image folder tree, sorted by name; listed once per
    process."""
    folder = Path(root)
    names = sorted(p.name for p in folder.iterdir() if p.is_dir())
    return tuple((name, sum(1 for f in (folder / name).iterdir() if _is_image(f))) for name in names)


def _nested_images(folder: Path) -> str | None:
    """The first sub-folder of `folder` (relative to its parent) that holds images."""
    for sub in sorted(p for p in folder.rglob("*") if p.is_dir()):
        if any(_is_image(f) for f in sub.iterdir()):
            return str(sub.relative_to(folder.parent))
    return None


def check_image_folder(root: str | Path, key: str = "data.root") -> tuple[str, ...]:
    """The class folder names of an ImageNet-style tree `root/<class>/<image>`, after checking that it exists and
    that every class folder holds images directly (a class without images would train as a class, unseen)."""
    folder = Path(root)
    if not folder.is_dir():
        raise UserError(f"{key}: data folder {root} does not exist: set {key} to an ImageNet-style folder tree")
    classes = class_folders(str(folder))
    if not any(count for _, count in classes):
        raise UserError(f"{key}: data folder {root} holds no images in class sub-folders (expected "
                        f"{folder}/<class>/*.JPEG)")
    empty = [name for name, count in classes if not count]
    if empty:
        nested = _nested_images(folder / empty[0])
        where = f": its images are in {nested}, a level too deep" if nested else ""
        others = f" (and {len(empty) - 1} more class folders)" if len(empty) > 1 else ""
        raise UserError(f"{key}: class folder {folder / empty[0]} holds no images{where}{others}: images go directly "
                        "in a class folder (remove it, or move its images there)")
    return tuple(name for name, _ in classes)


class ImageFolderImages(Dataset):
    """`root/<class>/<image>`: labels from sorted folder names; images decoded lazily through `load_image`. Every
    class folder must hold images (`check_image_folder`)."""

    def __init__(self, root: str | Path, resolution: int):
        root = Path(root)
        self.classes = list(check_image_folder(root))
        self.samples = [(f, label) for label, name in enumerate(self.classes)
                        for f in sorted((root / name).iterdir()) if _is_image(f)]
        self.resolution = resolution
        self.num_classes = len(self.classes)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[i]
        return load_image(path, self.resolution), label

    def source(self, i: int) -> tuple[Image.Image, int]:
        """(the decoded RGB image, uncropped, label): what the training view crops (bar.data.views)."""
        path, label = self.samples[i]
        return open_rgb(path), label


def folder_summary(root: str) -> tuple[tuple[str, ...], int]:
    """(class folder names, number of images) of an image folder tree, listed once per process."""
    classes = class_folders(root)
    return tuple(name for name, _ in classes), sum(count for _, count in classes)


def split_size(data_cfg, split: str) -> int:
    """Images in a split, without decoding any (an image folder is listed once)."""
    if data_cfg.name == "digits":
        return 1797 - data_cfg.val_size if split == "train" else data_cfg.val_size
    if data_cfg.name == "photo_crops":
        return data_cfg.train_size if split == "train" else data_cfg.val_size
    root = data_cfg.root if split == "train" else (data_cfg.val_root or data_cfg.root)
    return folder_summary(str(root))[1]


def build_dataset(data_cfg, split: str) -> TensorImages | ImageFolderImages:
    """The dataset named by `data.name` for `split` (train | val)."""
    if data_cfg.name == "digits":
        return load_digits_split(split, data_cfg.resolution, data_cfg.val_size, data_cfg.split_seed)
    if data_cfg.name == "photo_crops":
        validate_data_config(data_cfg)
        return load_photo_crops(split, data_cfg.resolution, data_cfg.crop_size, data_cfg.train_size,
                                data_cfg.val_size, data_cfg.get("split_seed", 0), bool(data_cfg.get("hflip", False)))
    if data_cfg.name == "imagefolder":
        root = data_cfg.root if split == "train" else (data_cfg.val_root or data_cfg.root)
        return ImageFolderImages(root, data_cfg.resolution)
    raise UserError(f"unknown data.name {data_cfg.name!r}: use {', '.join(DATASETS)}")


DATASETS = ("digits", "photo_crops", "imagefolder")
EMBEDDED_DATASETS = ("digits", "photo_crops")  # shipped inside an installed package: no data.root, no network


def validate_data_config(data_cfg) -> None:
    """One-line UserErrors for an embedded dataset's settings, without loading anything (photo_crops: sizes, crop
    size, channels, classes); nothing to check for digits. imagefolder's folders are checked by
    bar.orchestration.validate."""
    if data_cfg.name != "photo_crops":
        return
    unset = [k for k in ("train_size", "val_size", "crop_size") if data_cfg.get(k) is None]
    if unset:
        raise UserError(f"data=photo_crops needs data.{unset[0]} (compose it with data=photo_crops, which sets "
                        "train_size, val_size, crop_size and hflip)")
    for split, n in (("train", data_cfg.train_size), ("val", data_cfg.val_size)):
        _check_photo_crops(data_cfg.resolution, data_cfg.crop_size, n, split, PHOTO_SHAPE)
    classes = len(PHOTOS) * PHOTO_STRIPS
    if data_cfg.get("in_channels", 3) != 3 or data_cfg.get("num_classes", classes) != classes:
        raise UserError(f"data=photo_crops has 3 channels and {classes} classes: leave data.in_channels=3 and "
                        f"data.num_classes={classes}")


def images_only(dataset: ImageDataset) -> Dataset:
    """The uint8 images of a dataset without labels, as torch-fidelity wants them."""
    return _ImagesOnly(dataset)


class _ImagesOnly(Dataset):
    def __init__(self, dataset: ImageDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.dataset[i][0]


# ------------------------------------------------------------------------------------------------ information content
PNG_CONTAINER_BYTES = 8 + 25 + 12 + 12 + 2 + 4  # signature, IHDR, IEND, IDAT framing, zlib header, adler-32


def _png_payload_bits(image_HWC: np.ndarray) -> int:
    """Bits of PNG's compressed pixel stream (PNG row filters + deflate, best effort): the file minus its fixed
    container bytes, which at 16 x 16 would otherwise be a fifth of the file and say nothing about the image."""
    buf = io.BytesIO()
    Image.fromarray(image_HWC[..., 0] if image_HWC.shape[-1] == 1 else image_HWC).save(buf, format="PNG",
                                                                                         optimize=True)
    return 8 * (len(buf.getvalue()) - PNG_CONTAINER_BYTES)


_LZMA_FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME, "dict_size": 1 << 16}]


def _lzma_bits(image_HWC: np.ndarray) -> int:
    """Bits of a raw LZMA2 stream (no .xz container) of the interleaved uint8 pixels."""
    return 8 * len(lzma.compress(image_HWC.tobytes(), format=lzma.FORMAT_RAW, filters=_LZMA_FILTERS))


def information_bits(dataset, max_images: int | None = None) -> dict[str, float | int | str]:
    """How much information one image of `dataset` holds, in bits (mean over its first `max_images` images, all by
    default).

    raw_bits: the bound from how the images are made: the dataset's `raw_bits` when it says (digits: 64 source pixels
        x log2 17 grey levels, whatever the display resolution), else C x H x W x 8 (every stored uint8 value free, as
        in photo_crops, whose pixels are 8-bit means of 4 x 4 or 2 x 2 photo pixels).
    png_bits: PNG's compressed pixel stream per image (row filters + deflate at the highest effort; the fixed container
        bytes not counted): a general-purpose lossless image codec that models 2-D pixel correlations and knows
        nothing about the dataset, so it measures what each image holds on its own.
    lzma_bits: a raw LZMA2 stream per image (no container, no 2-D model), as a cross-check.
    estimate_bits: the practical estimate of the information present, the shortest of these three lossless codes
        (storing the raw values is one too) -- an upper estimate: per-image codecs pay for their own tables (~100-200
        bits at 16 x 16) and cannot see that the digits are upsampled, so there the raw bound is the binding one.
    estimate_from: which of raw / png / lzma gave estimate_bits. Also: images, channels, resolution, values (C*H*W)."""
    n = len(dataset) if max_images is None else min(len(dataset), max_images)
    if n == 0:
        raise ValueError("information_bits needs a non-empty dataset")
    png: list[int] = []
    xz: list[int] = []
    shape: tuple[int, ...] = ()                    # (C, H, W), set by the first image (n > 0)
    for i in range(n):
        image = dataset[i][0]
        shape = tuple(image.shape)
        hwc = image.permute(1, 2, 0).contiguous().numpy()
        png.append(_png_payload_bits(hwc))
        xz.append(_lzma_bits(hwc))
    c, h, w = shape
    raw = getattr(dataset, "raw_bits", None)
    codes = {"raw": float(raw) if raw is not None else float(c * h * w * 8), "png": float(np.mean(png)),
             "lzma": float(np.mean(xz))}
    best = min(codes, key=codes.__getitem__)
    return {"images": n, "channels": c, "resolution": h, "values": c * h * w, "raw_bits": codes["raw"],
            "png_bits": codes["png"], "lzma_bits": codes["lzma"], "estimate_bits": codes[best],
            "estimate_from": best}
