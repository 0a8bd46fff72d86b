import pytest
import torch
from omegaconf import OmegaConf

from bar import UserError
from bar.data import ImageFolderImages, build_dataset, load_digits_split


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
