"""The tokenizer's training view (bar.data.views) is the release's transform, per image: torchvision's
Resize(res, BICUBIC, antialias=True) of the PIL image -> crop -> flip -> ToTensor -> Normalize(0.5, 0.5)
(data/webdataset_reader.py:48-65); evaluation keeps its center crop."""

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from torchvision import transforms
from torchvision.transforms import functional as TF

from bar.data.datasets import ImageFolderImages, TensorImages, center_crop_arr
from bar.data.images import images_to_float
from bar.data.loader import ShardedBatchSampler
from bar.data.views import AUGMENT_SEEDS, train_view, train_view_loader

RES = 32
SIZES = [(75, 40), (40, 75), (33, 32), (130, 97), (32, 32)]       # (width, height): wide, tall, near-square, square


def _photo(w: int, h: int, seed: int) -> Image.Image:
    """Smooth content plus noise, so that a shifted or mirrored crop differs."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 127 / (w + h)], -1)
    return Image.fromarray((base + rng.integers(0, 40, (h, w, 3))).clip(0, 255).astype(np.uint8))


def _release(img: Image.Image, seed: int) -> torch.Tensor:
    """The release's train_transform with its crop and flip decided as train_view draws them for `seed`."""
    resized = transforms.Resize(RES, interpolation=transforms.InterpolationMode.BICUBIC, antialias=True)(img)
    rng = np.random.default_rng(seed)
    top = int(rng.integers(0, resized.height - RES + 1))
    left = int(rng.integers(0, resized.width - RES + 1))
    out = TF.crop(resized, top, left, RES, RES)
    if rng.random() < 0.5:
        out = TF.hflip(out)
    return transforms.Normalize([0.5] * 3, [0.5] * 3)(transforms.ToTensor()(out))


def _write_folder(root, sizes=SIZES):
    for i, (w, h) in enumerate(sizes):
        (root / f"c{i % 2}").mkdir(exist_ok=True)
        _photo(w, h, i).save(root / f"c{i % 2}" / f"{i}.png")       # PNG: the file holds exactly these pixels
    return ImageFolderImages(root, RES)


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_augmentation_equals_the_release_transform(seed):
    for i, (w, h) in enumerate(SIZES):
        img = _photo(w, h, i)
        ours = train_view(img, RES, seed)
        assert ours.shape == (3, RES, RES) and ours.dtype == torch.uint8
        # same uint8 pixels (PIL's bicubic resize on both sides); the two [-1, 1] formulas (x / 127.5 - 1 and
        # (x / 255 - 0.5) / 0.5) differ only by float32 rounding, below 1e-6
        torch.testing.assert_close(images_to_float(ours), _release(img, seed), atol=1e-6, rtol=0)


def test_loader_gives_the_release_view_of_each_file(tmp_path):
    ds = _write_folder(tmp_path)
    loader = train_view_loader(ds, len(ds), RES, seed=3)
    images, labels = next(loader)
    indices, seeds = ShardedBatchSampler(len(ds), len(ds), 3, views=AUGMENT_SEEDS).global_batch_at(0, 0)
    for k, (i, s) in enumerate(zip(indices.tolist(), seeds.tolist())):
        path, label = ds.samples[i]
        with Image.open(path) as img:
            reference = _release(img.convert("RGB"), s)
        torch.testing.assert_close(images_to_float(images[k]), reference, atol=1e-6, rtol=0)
        assert labels[k] == label


def test_the_crop_moves_and_evaluation_still_center_crops(tmp_path):
    img = _photo(75, 40, 0)
    views = {tuple(train_view(img, RES, s).flatten().tolist()) for s in range(8)}
    assert len(views) > 2                                        # offsets along the width and flips, not a no-op
    ds = _write_folder(tmp_path)
    first, again = next(train_view_loader(ds, len(ds), RES, seed=0)), train_view_loader(ds, len(ds), RES, seed=0)
    next(again)
    assert not torch.equal(first[0], next(again)[0])             # epoch 1 draws new crops
    for i, (path, _) in enumerate(ds.samples):                   # evaluation view: ADM's center crop, every time
        with Image.open(path) as f:
            expected = torch.from_numpy(np.array(center_crop_arr(f.convert("RGB"), RES))).permute(2, 0, 1)
        assert torch.equal(ds[i][0], expected) and torch.equal(ds[i][0], ds[i][0])


def test_in_memory_images_at_resolution_are_only_flipped_and_the_loader_resumes():
    images = torch.randint(0, 256, (12, 1, RES, RES), dtype=torch.uint8)    # digits-like: one channel, square
    ds = TensorImages(images, torch.arange(12), num_classes=12)
    for s in range(6):
        v = train_view(images[5], RES, s)
        assert torch.equal(v, images[5]) or torch.equal(v, images[5].flip(-1))
    loader = train_view_loader(ds, 4, RES, seed=1)
    next(loader)
    state = loader.state_dict()
    expected = next(loader)
    fresh = train_view_loader(ds, 4, RES, seed=1)
    fresh.load_state_dict(state)
    assert torch.equal(next(fresh)[0], expected[0])
    parts = [next(train_view_loader(ds, 4, RES, seed=1, rank=r, world_size=2))[0] for r in range(2)]
    assert torch.equal(torch.cat(parts), next(train_view_loader(ds, 4, RES, seed=1))[0])   # ranks = one process


def test_the_stage_augments_in_the_loader():
    from bar.orchestration.stages.tokenizer import training_batches

    ds = TensorImages(torch.randint(0, 256, (8, 3, RES, RES), dtype=torch.uint8), torch.arange(8), num_classes=8)
    for augment, views in ((True, AUGMENT_SEEDS), (False, 1)):
        cfg = OmegaConf.create({"seed": 0, "data": {"resolution": RES, "num_workers": 0},
                                "tokenizer": {"train": {"augment": augment, "batch_size": 4}}})
        assert training_batches(cfg, ds).sampler.views == views
