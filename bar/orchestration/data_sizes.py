"""How many images a point's data holds, without reading any: an embedded set's configured sizes, an image folder's
files (listed once), or, in a dry run on a machine without the folder (data.root or data.val_root unset or not a
folder), the stated data.train_images / data.val_images (profile=paper: ImageNet's 1,281,167 and 50,000). A launch
never prices stated counts: it checks the folders first (bar.orchestration.validate), and counts them.

    folder_absent(cfg, split) -> bool            planned_split_size(cfg, split) -> int
    planned_sizes(cfg) -> (training images, validation images)"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from bar import UserError
from bar.data.datasets import split_size

STATED = {"train": "train_images", "val": "val_images"}


def _folder(cfg: DictConfig, split: str) -> str | None:
    root = None if OmegaConf.is_missing(cfg.data, "root") else cfg.data.root
    return root if split == "train" else (cfg.data.val_root or root)


def folder_absent(cfg: DictConfig, split: str = "train") -> bool:
    """data=imagefolder whose folder for `split` is not on this machine (unset, or not a folder)."""
    if cfg.data.name != "imagefolder":
        return False
    folder = _folder(cfg, split)
    return not folder or not Path(str(folder)).expanduser().is_dir()


def planned_split_size(cfg: DictConfig, split: str) -> int:
    """Images in `split`: counted where the data is here; in a dry run without the folder, the stated count."""
    if not (cfg.dry_run and folder_absent(cfg, split)):
        return split_size(cfg.data, split)
    key = STATED[split]
    stated = cfg.data.get(key)
    if stated is None:
        raise UserError(f"data.{'root' if split == 'train' else 'val_root'}={_folder(cfg, split)} is not a folder on "
                        f"this machine: to plan without the data, state its size (data.{key}=N; profile=paper states "
                        "ImageNet's)")
    return int(stated)


def planned_sizes(cfg: DictConfig) -> tuple[int, int]:
    """(training images, validation images) of the point's data set (planned_split_size of each)."""
    return planned_split_size(cfg, "train"), planned_split_size(cfg, "val")
