"""The paper tokenizer's frozen networks come from files, all named at once when missing: at tokenizer.size=full
(profile=paper) every file the recipe reads is required, SigLIP2's included, and one line lists each missing or unset
one with where it comes from; a dry run shows that line as a warning. The CPU stand-in (tokenizer.size=tiny) may start
SigLIP2 from random weights, with a warning; the CPU profiles' recipe (L1 + L2) reads no file."""

import logging

import numpy as np
import pytest
from PIL import Image

from bar import UserError
from bar.orchestration.config import compose
from bar.orchestration import validate
from bar.orchestration.validate import validate_config

NETWORKS = ("vgg16", "convnext_s", "dino_vits", "siglip2")      # lpips: the lpips package's own file by default


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for c in range(2):
        (root / f"c{c}").mkdir()
        for i in range(3):
            Image.fromarray((rng.random((40, 40, 3)) * 255).astype(np.uint8)).save(root / f"c{c}" / f"{i}.png")
    return root


# the weight-file check itself (validate._check_weight_files) where other files the paper profile reads (Inception
# weights, the ADM reference) would fail first; the dry run through validate_config, where they are warnings too


def _paper(images, outputs, *overrides):
    """profile=paper training its tokenizer (the full-size release architecture and recipe) on a tiny folder."""
    return compose(["profile=paper", "device=cpu", "stage=tokenizer", f"data.root={images}", f"data.val_root={images}",
                    "data.num_classes=2", "data.resolution=32", "eval.extractor=classifier",
                    "tokenizer.train.batch_size=3", "eval.classifier.batch_size=3", f"paths.outputs={outputs}",
                    *overrides])


def test_every_missing_file_is_named_in_one_line(images, tmp_path):
    gone = tmp_path / "vgg16.pth"
    with pytest.raises(UserError) as err:
        validate._check_weight_files(_paper(images, tmp_path, f"tokenizer.weights.vgg16={gone}"))
    message = str(err.value)
    assert "\n" not in message and message.startswith("tokenizer weight files missing: ")
    assert f"tokenizer.weights.vgg16={gone} (no such file" in message
    for key in NETWORKS[1:]:
        assert f"tokenizer.weights.{key} (unset" in message, key
    assert "tokenizer.weights.lpips" not in message                        # its default file exists
    assert "bar_fsq_16bits.bin" in message and "dino_deitsmall8_pretrain.pth" in message   # where each comes from


def test_siglip2_is_required_even_without_the_other_networks(images, tmp_path):
    cfg = _paper(images, tmp_path, "tokenizer.loss.perceptual=0", "tokenizer.loss.gram=0", "tokenizer.loss.gan=0")
    with pytest.raises(UserError, match=r"^tokenizer weight files missing: tokenizer\.weights\.siglip2 \(unset") as err:
        validate._check_weight_files(cfg)
    assert str(err.value).count("tokenizer.weights.") == 2                 # siglip2, then KEY=PATH


def test_a_dry_run_lists_them_as_one_warning(images, tmp_path):
    warnings = validate_config(_paper(images, tmp_path, "dry_run=true"))
    missing = [w for w in warnings if w.startswith("tokenizer weight files missing: ")]
    assert len(missing) == 1 and all(f"tokenizer.weights.{key} (unset" in missing[0] for key in NETWORKS)


def test_the_tiny_stand_in_may_start_siglip2_at_random_with_a_warning(images, tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(validate, "_warned", set())                       # each warning is said once per process
    cfg = _paper(images, tmp_path, "tokenizer.size=tiny", "tokenizer.loss.perceptual=0", "tokenizer.loss.gram=0",
                 "tokenizer.loss.gan=0")
    with caplog.at_level(logging.WARNING, logger="bar"):
        validate._check_weight_files(cfg)
    assert any("tokenizer.weights.siglip2 is unset" in r.getMessage() and "random weights" in r.getMessage()
               for r in caplog.records)


def test_the_tiny_stand_in_still_needs_the_loss_networks_it_uses(images, tmp_path):
    cfg = _paper(images, tmp_path, "tokenizer.size=tiny", "tokenizer.loss.perceptual=0", "tokenizer.loss.gram=0")
    with pytest.raises(UserError) as err:
        validate._check_weight_files(cfg)
    assert "tokenizer.weights.dino_vits (unset" in str(err.value) and "siglip2" not in str(err.value)


def test_the_cpu_profiles_read_no_weight_file(tmp_path):
    for profile in ("tiny", "small", "smoke"):
        assert validate_config(compose([f"profile={profile}", f"paths.outputs={tmp_path}", "stage=tokenizer"])) == []
