import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from bar import UserError
from bar.data.datasets import ImageFolderImages, build_dataset, center_crop_arr, load_digits_split


def test_digits_split_is_fixed_and_real():
    train, val = load_digits_split("train"), load_digits_split("val")
    assert len(train) + len(val) == 1797 and len(val) == 297
    image, label = train[0]
    assert image.dtype == torch.uint8 and image.shape == (1, 16, 16) and 0 <= label < 10
    assert torch.equal(load_digits_split("train").images, train.images)      # same split every time
    assert set(train.labels.tolist()) == set(range(10)) and set(val.labels.tolist()) == set(range(10))
    assert train.images.float().std() > 20                                  # real strokes, not blank


def _write_tree(root, classes=("cat", "dog"), per_class=3, size=(40, 30)):
    from PIL import Image

    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", size, color=(40 * c, 10 * i, 200)).save(root / name / f"{i}.JPEG")


def test_imagefolder_resizes_center_crops_and_labels(tmp_path):
    _write_tree(tmp_path)
    ds = build_dataset(OmegaConf.create({"name": "imagefolder", "root": str(tmp_path), "val_root": None,
                                         "resolution": 16}), "train")
    assert len(ds) == 6 and ds.num_classes == 2
    image, label = ds[4]
    assert image.dtype == torch.uint8 and image.shape == (3, 16, 16) and label == 1


def test_imagefolder_missing_or_empty_folder(tmp_path):
    with pytest.raises(UserError, match=f"data folder {tmp_path / 'nope'} does not exist"):
        ImageFolderImages(tmp_path / "nope", 16)
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(UserError, match="holds no images"):
        ImageFolderImages(tmp_path / "empty", 16)


# ----------------------------------------------------------------------------------------------------- center_crop_arr
def _adm_reference(img, size):
    """ADM's center_crop_arr restated independently: explicit sizes, PIL's own crop."""
    from PIL import Image

    w, h = img.size
    while w >= 2 * size and h >= 2 * size:
        w, h = w // 2, h // 2
        img = img.resize((w, h), Image.BOX)
    short = min(w, h)
    w, h = int(round(w * size / short)), int(round(h * size / short))
    img = img.resize((w, h), Image.BICUBIC)
    left, top = (w - size) // 2, (h - size) // 2
    return img.crop((left, top, left + size, top + size))


def _noise_image(w, h, seed):
    from PIL import Image

    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (h // 4 + 1, w // 4 + 1, 3), dtype=np.uint8)
    smooth = np.kron(base, np.ones((4, 4, 1), dtype=np.uint8))[:h, :w]      # structure at several scales
    return Image.fromarray(np.clip(smooth.astype(int) + rng.integers(-20, 21, (h, w, 3)), 0, 255).astype(np.uint8))


@pytest.mark.parametrize("w,h,size", [(517, 301, 64), (301, 517, 64), (1000, 700, 256), (333, 257, 256),
                                      (255, 999, 256), (129, 129, 64), (64, 64, 64), (97, 45, 32)])
def test_center_crop_arr_matches_adm(w, h, size):
    img = _noise_image(w, h, seed=w * 7 + h)
    ours = center_crop_arr(img, size)
    ref = _adm_reference(img, size)
    assert ours.size == (size, size) and ours.mode == "RGB"
    assert np.asarray(ours).tobytes() == np.asarray(ref).tobytes()


def test_center_crop_arr_hand_cases():
    from PIL import Image

    # 512 x 512 -> 256: one BOX halving, then a same-size resize (a copy): every pixel is the mean of its 2x2 block
    blocks = np.arange(256 * 256, dtype=np.int64).reshape(256, 256) % 60
    full = np.kron(blocks, np.ones((2, 2), dtype=np.int64)) + np.tile([[0, 2], [4, 6]], (256, 256))   # mean +3
    img = Image.fromarray(full.astype(np.uint8), "L").convert("RGB")
    out = np.asarray(center_crop_arr(img, 256))
    assert np.array_equal(out[..., 0], (blocks + 3).astype(np.uint8))
    # 1000 x 700 -> 256: halve once (500 x 350), bicubic to 366 x 256, crop columns 55 .. 310
    img = Image.new("RGB", (1000, 700))
    img.paste((255, 0, 0), (0, 0, 500, 700))           # left half red, right half blue
    img.paste((0, 0, 255), (500, 0, 1000, 700))
    out = np.asarray(center_crop_arr(img, 256))
    # the red/blue edge sits at column 183 of the 366-wide image = column 183 - 55 = 128 of the crop
    assert (out[:, :126, 0] == 255).all() and (out[:, 131:, 2] == 255).all()
    assert (out[:, :126, 2] == 0).all() and (out[:, 131:, 0] == 0).all()


def test_imagefolder_uses_center_crop_arr(tmp_path):
    (tmp_path / "a").mkdir()
    img = _noise_image(300, 190, seed=3)
    img.save(tmp_path / "a" / "x.png")
    ds = ImageFolderImages(tmp_path, 64)
    image, label = ds[0]
    assert image.shape == (3, 64, 64) and label == 0
    assert np.array_equal(image.permute(1, 2, 0).numpy(), np.asarray(center_crop_arr(img, 64)))
