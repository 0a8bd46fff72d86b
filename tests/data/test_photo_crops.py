"""`data=photo_crops`: natural-image crops of scikit-learn's two sample photographs, and `information_bits`."""

import hashlib
import math
import socket

import numpy as np
import pytest
import torch

from bar import UserError
from bar.orchestration.config import compose
from bar.data.datasets import (EMBEDDED_DATASETS, build_dataset, information_bits, load_digits_split,
    load_photo_crops, photo_crop_boxes, photo_regions, sample_photos, validate_data_config)


@pytest.fixture(scope="module")
def crops():
    cfg = compose(["data=photo_crops"])
    return build_dataset(cfg.data, "train"), build_dataset(cfg.data, "val")


def test_config_composes_and_matches_the_images(crops):
    cfg = compose(["data=photo_crops"])
    train, val = crops
    assert (cfg.data.train_size, cfg.data.val_size, cfg.data.crop_size, cfg.data.hflip) == (4000, 500, 64, True)
    image, label = train[0]
    assert image.dtype == torch.uint8 and image.shape == (cfg.data.in_channels, cfg.data.resolution,
                                                          cfg.data.resolution) == (3, 16, 16)
    assert train.num_classes == val.num_classes == cfg.data.num_classes == 10 and 0 <= label < 10
    digits = compose([]).data  # the other configs still compose with the new DataConf fields at their defaults
    assert digits.name == "digits" and digits.train_size is None and digits.crop_size is None and not digits.hflip


def test_documented_split_sizes_balanced_labels(crops):
    train, val = crops
    assert len(train) == 4000 and len(val) == 500
    assert np.bincount(train.labels.numpy(), minlength=10).tolist() == [400] * 10
    assert np.bincount(val.labels.numpy(), minlength=10).tolist() == [50] * 10
    assert train.classes[0] == "china x0-127" and train.classes[9] == "flower x512-639"
    assert 0.4 < train.boxes[:, 4].mean() < 0.6  # about half mirrored
    # uneven sizes: the first classes get one more, every class has at least one
    odd = photo_crop_boxes("val", 23, 64)
    assert np.bincount(odd[:, 0], minlength=10).tolist() == [3, 3, 3] + [2] * 7


def test_real_texture_not_blank(crops):
    train, _ = crops
    x = train.images.float()
    assert x.std() > 30
    # within-image detail: neighbouring pixels differ (area-downsampled photo texture, not flat colour)
    assert (x[..., 1:] - x[..., :-1]).abs().mean() > 3
    # classes look different: per-class mean colours are not all the same
    means = torch.stack([x[train.labels == c].mean((0, 2, 3)) for c in range(10)])
    assert means.std(0).min() > 5


def _intersect(a, b, size):
    """Pairwise: do the size x size boxes a (n, 2: top, left) and b (m, 2) share a pixel?"""
    ta, la = a[:, None, 0], a[:, None, 1]
    tb, lb = b[None, :, 0], b[None, :, 1]
    return (ta < tb + size) & (tb < ta + size) & (la < lb + size) & (lb < la + size)


def test_val_and_train_crops_share_no_pixel(crops):
    train, val = crops
    for photo in (0, 1):
        t = train.boxes[train.boxes[:, 1] == photo][:, 2:4]
        v = val.boxes[val.boxes[:, 1] == photo][:, 2:4]
        assert len(t) == 2000 and len(v) == 250
        assert not _intersect(t, v, 64).any()
    # every crop lies inside its class's strip and on the right side of the validation band
    for boxes, split in ((train.boxes, "train"), (val.boxes, "val")):
        for region in photo_regions(64):
            mine = boxes[boxes[:, 0] == region.label]
            assert (mine[:, 1] == region.photo).all()
            assert np.isin(mine[:, 2], region.tops(split, 64)).all()
            assert np.isin(mine[:, 3], region.lefts(64)).all()
            assert ((mine[:, 3] >= region.left) & (mine[:, 3] + 64 <= region.right)).all()
            inside = (mine[:, 2] >= region.val_top) & (mine[:, 2] + 64 <= region.val_bottom)
            above_or_below = (mine[:, 2] + 64 <= region.val_top) | (mine[:, 2] >= region.val_bottom)
            assert (inside if split == "val" else above_or_below).all()


def test_deterministic_and_pinned(crops):
    train, val = crops
    sample_photos.cache_clear()
    again = load_photo_crops("train")
    assert torch.equal(again.images, train.images) and torch.equal(again.labels, train.labels)
    assert np.array_equal(again.boxes, train.boxes)
    # the crop positions are part of the dataset's identity: pinned (numpy's PCG64 streams are stable)
    assert hashlib.sha256(train.boxes.tobytes()).hexdigest()[:16] == "927f622c7292aa7b"
    assert hashlib.sha256(val.boxes.tobytes()).hexdigest()[:16] == "5fd7c0eb15e3eaaf"
    # the split seed moves the crops, never the regions
    other = photo_crop_boxes("train", 4000, 64, seed=1)
    assert not np.array_equal(other, train.boxes) and np.array_equal(other[:, :2], train.boxes[:, :2])


def test_needs_no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("photo_crops tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    sample_photos.cache_clear()
    ds = load_photo_crops("val", resolution=32, val_size=20)
    assert len(ds) == 20 and ds.images.shape[1:] == (3, 32, 32)


def test_resolution_32_downsamples_the_same_windows():
    a16 = load_photo_crops("val", resolution=16, val_size=30)
    a32 = load_photo_crops("val", resolution=32, val_size=30)
    assert np.array_equal(a16.boxes, a32.boxes)
    # 2x2 means of the 32x32 crop round to within one grey level of the 16x16 crop (both exact area means)
    pooled = torch.nn.functional.avg_pool2d(a32.images.float(), 2)
    assert (pooled - a16.images.float()).abs().max() <= 1.0


@pytest.mark.parametrize("kwargs,match", [({"crop_size": 40}, "multiple of data.resolution"),
                                          ({"crop_size": 8}, "multiple of data.resolution"),
                                          ({"crop_size": 128}, "too large"),
                                          ({"train_size": 5}, "data.train_size 5 is too small")])
def test_bad_settings_are_one_line_errors(kwargs, match):
    with pytest.raises(UserError, match=match):
        load_photo_crops("train", **kwargs)


def test_information_bits():
    digits = information_bits(load_digits_split("val"), max_images=100)
    assert digits["raw_bits"] == pytest.approx(64 * math.log2(17))
    assert digits["values"] == 256 and digits["channels"] == 1 and digits["images"] == 100
    # per-image codecs cannot see that the digits are upsampled: the raw bound is the tighter code there
    assert digits["png_bits"] > digits["raw_bits"] and digits["estimate_from"] == "raw"
    assert digits["estimate_bits"] == digits["raw_bits"]
    photo = information_bits(load_photo_crops("val", val_size=100))
    assert photo["raw_bits"] == 16 * 16 * 3 * 8 and photo["images"] == 100
    assert 0 < photo["estimate_bits"] == min(photo["raw_bits"], photo["png_bits"], photo["lzma_bits"])
    # far more information than the digits: more than the largest tiny-sweep latent (2,048 bits)
    assert photo["estimate_bits"] > 2048 > 4 * digits["estimate_bits"]
    assert information_bits(load_photo_crops("val", val_size=10)) == information_bits(
        load_photo_crops("val", val_size=10))


def test_config_checked_without_loading(monkeypatch):
    monkeypatch.setattr("bar.data.datasets.sample_photos", lambda: (_ for _ in ()).throw(AssertionError("loaded")))
    assert "photo_crops" in EMBEDDED_DATASETS
    validate_data_config(compose(["data=photo_crops"]).data)
    validate_data_config(compose(["data=photo_crops", "data.resolution=32"]).data)
    with pytest.raises(UserError, match="data.crop_size 48 must be a multiple of data.resolution 32"):
        validate_data_config(compose(["data=photo_crops", "data.resolution=32", "data.crop_size=48"]).data)
    with pytest.raises(UserError, match="data.num_classes=10"):
        validate_data_config(compose(["data=photo_crops", "data.num_classes=5"]).data)
    with pytest.raises(UserError, match="needs data.train_size"):
        validate_data_config(compose(["data.name=photo_crops"]).data)
