from pathlib import Path

import pytest
import torch
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from bar import UserError
from bar.orchestration.config import compose
from bar.data.datasets import TensorImages, load_digits_split
from bar.eval.features import CLASSIFIER_EXTRACTOR
from bar.orchestration.evaluators import fidelity_evaluator as Evaluator


@pytest.fixture(scope="module")
def evaluator(tmp_path_factory):
    cfg = compose(["profile=smoke", f"paths.outputs={tmp_path_factory.mktemp('eval')}", "eval.classifier.steps=60"])
    return cfg, Evaluator(cfg, load_digits_split("train"), torch.device("cpu"))


def test_classifier_extractor_is_registered_with_torch_fidelity():
    assert CLASSIFIER_EXTRACTOR in FEATURE_EXTRACTORS_REGISTRY


def test_fid_path_on_small_data(evaluator):
    cfg, ev = evaluator
    val = load_digits_split("val")
    same = ev.compare(val.images, val, "val", isc=True, prc=True)
    assert abs(same["fid"]) < 1e-3                            # a set against itself
    assert same["precision"] == pytest.approx(1.0) and same["recall"] == pytest.approx(1.0)
    assert same["inception_score"] >= 1.0
    noise = TensorImages(torch.randint(0, 256, val.images.shape, dtype=torch.uint8), val.labels, 10)
    blurred = TensorImages((val.images.float() * 0.8).to(torch.uint8), val.labels, 10)
    fid_noise = ev.compare(noise.images, val, "val")["fid"]
    fid_blur = ev.compare(blurred.images, val, "val")["fid"]
    assert fid_noise > fid_blur > 0                           # further from the data, larger distance
    assert ev.tag.startswith("bar-classifier:")


def test_reference_features_are_cached(evaluator, monkeypatch):
    cfg, ev = evaluator
    val = load_digits_split("val")
    first = ev.compare(val.images, val, "val")
    cached = list((Path(cfg.paths.cache) / "fidelity").glob("*-val-*/features.pt"))
    assert len(cached) == 1
    calls = []
    real = ev.features
    monkeypatch.setattr(ev, "features", lambda images, workers=0: calls.append(len(images)) or real(images, workers))
    assert ev.compare(val.images, val, "val") == first
    assert calls == [len(val)]                                # the reference's features came from the cache


def test_classifier_is_cached_by_signature(evaluator, monkeypatch):
    cfg, ev = evaluator
    import bar.orchestration.evaluators as evaluators

    monkeypatch.setattr(evaluators, "train_classifier", lambda *a, **k: pytest.fail("classifier retrained"))
    again = Evaluator(cfg, load_digits_split("train"), torch.device("cpu"))
    assert again.tag == ev.tag


def test_missing_inception_weights_is_one_line(tmp_path):
    cfg = compose(["eval.extractor=inception", f"eval.inception_weights={tmp_path}/pt_inception.pth"])
    with pytest.raises(UserError) as err:
        Evaluator(cfg, load_digits_split("train"), torch.device("cpu"))
    assert "Inception weights not found" in str(err.value) and "\n" not in str(err.value)


def test_random_multiscale_features_rank_known_degradations_of_photo_crops(tmp_path):
    """profile=small's judge: FID 0 for a set against itself, growing with the strength of blur and of noise, IS from
    the trained classifier's logits; rebuilt from its cached checkpoint it gives the same numbers."""
    from bar.data.datasets import build_dataset
    cfg = compose(["profile=small", f"paths.outputs={tmp_path}", "eval.classifier.steps=30", "data.train_size=600",
                   "data.val_size=200"])
    assert cfg.eval.classifier.features == "random_multiscale"
    train, val = build_dataset(cfg.data, "train"), build_dataset(cfg.data, "val")
    ev = Evaluator(cfg, train, torch.device("cpu"))
    same = ev.compare(val.images, val, "val", isc=True)
    assert abs(same["fid"]) < 1e-3 and same["inception_score"] >= 1.0
    x = val.images.float()
    box = torch.nn.functional.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
    blur = [(x + a * (box - x)).round().to(torch.uint8) for a in (0.5, 1.0)]
    noise = [(x + s * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))).round().clamp(0, 255)
             .to(torch.uint8) for s in (8.0, 32.0)]
    for weak, strong in (blur, noise):
        assert 0 < ev.compare(weak, val, "val")["fid"] < ev.compare(strong, val, "val")["fid"]
    again = Evaluator(cfg, train, torch.device("cpu"))
    assert again.tag == ev.tag and again.compare(blur[1], val, "val") == ev.compare(blur[1], val, "val")
    penultimate = Evaluator(compose(["profile=small", f"paths.outputs={tmp_path}", "eval.classifier.steps=30",
                                     "data.train_size=600", "data.val_size=200",
                                     "eval.classifier.features=penultimate"]), train, torch.device("cpu"))
    assert penultimate.tag != ev.tag                            # never compared across judges


def test_a_damaged_cached_classifier_is_trained_again(evaluator, monkeypatch):
    import os

    import bar.orchestration.evaluators as evaluators
    from bar.core.files import load_verified

    cfg, ev = evaluator
    val = load_digits_split("val")
    before = ev.compare(val.images[:200], val, "val")["fid"]
    (path,) = (Path(cfg.paths.cache) / "classifier").glob("*/classifier.pt")
    path.write_bytes(os.urandom(path.stat().st_size))            # same size, other bytes
    trained, real = [], evaluators.train_classifier
    monkeypatch.setattr(evaluators, "train_classifier", lambda *a, **k: trained.append(1) or real(*a, **k))
    again = Evaluator(cfg, load_digits_split("train"), torch.device("cpu"))
    assert trained == [1] and again.tag == ev.tag
    load_verified(path)                                          # a whole file again
    assert again.compare(val.images[:200], val, "val")["fid"] == pytest.approx(before, rel=1e-4)


def test_damaged_cached_reference_features_are_computed_again(evaluator, monkeypatch):
    import os

    cfg, ev = evaluator
    val = load_digits_split("val")
    first = ev.compare(val.images, val, "val")
    (cached,) = (Path(cfg.paths.cache) / "fidelity").glob("*-val-*/features.pt")
    cached.write_bytes(os.urandom(cached.stat().st_size))
    calls, real = [], ev.features
    monkeypatch.setattr(ev, "features", lambda images, workers=0: calls.append(len(images)) or real(images, workers))
    assert ev.compare(val.images, val, "val")["fid"] == pytest.approx(first["fid"], abs=1e-6)
    assert calls == [len(val), len(val)]                         # the sample's features, and the reference's again
