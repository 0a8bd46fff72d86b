"""Evaluation through torch-fidelity: rFID now, gFID / IS / precision / recall for generators.

Two feature extractors, registered with torch-fidelity:
  - `inception-v3-compat` (torch-fidelity's own) with a local weights file: the paper protocol;
  - `bar-classifier`: a small classifier trained on the dataset itself and cached by signature; its penultimate
    features give the Frechet distance. Works offline; numbers from it are never comparable with Inception ones.
Reference statistics are cached once per (dataset split, extractor) through torch-fidelity's input2 cache."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch_fidelity
from torch.utils.data import Dataset
from torch_fidelity.feature_extractor_base import FeatureExtractorBase

from bar import UserError
from bar.cache import file_lock, get_or_build
from bar.config import data_identity, signature
from bar.train import Recipe, infinite_batches, train

CLASSIFIER_EXTRACTOR = "bar-classifier"
INCEPTION_EXTRACTOR = "inception-v3-compat"


class DigitClassifier(nn.Module):
    """Small CNN; `features` is the penultimate layer used for FID and precision/recall."""

    def __init__(self, in_channels: int, width: int, num_classes: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.SiLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(2 * width, 4 * width, 3, stride=2, padding=1), nn.SiLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(4 * width, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _to_input(images_uint8: torch.Tensor, in_channels: int, resolution: int) -> torch.Tensor:
    x = images_uint8.float() / 127.5 - 1
    if x.shape[1] != in_channels:
        x = x.mean(1, keepdim=True).expand(-1, in_channels, -1, -1) if in_channels in (1, 3) else x
    if x.shape[-1] != resolution:
        x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False)
    return x


class ClassifierExtractor(FeatureExtractorBase):
    """torch-fidelity wrapper of a cached DigitClassifier checkpoint (passed as feature_extractor_weights_path)."""

    def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
        super().__init__(name, features_list)
        if not feature_extractor_weights_path or not Path(feature_extractor_weights_path).is_file():
            raise UserError(f"classifier checkpoint {feature_extractor_weights_path!r} not found")
        ckpt = torch.load(feature_extractor_weights_path, map_location="cpu", weights_only=True)
        self.in_channels, self.resolution = ckpt["in_channels"], ckpt["resolution"]
        self.model = DigitClassifier(ckpt["in_channels"], ckpt["width"], ckpt["num_classes"])
        self.model.load_state_dict(ckpt["state_dict"])

    @staticmethod
    def get_provided_features_list():
        return "features", "logits"

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return {"isc": "logits"}.get(metric, "features")

    @staticmethod
    def can_be_compiled():
        return False

    @staticmethod
    def get_dummy_input_for_compile():
        return torch.zeros(1, 1, 16, 16, dtype=torch.uint8)

    def forward(self, images_uint8):
        x = _to_input(images_uint8, self.in_channels, self.resolution).to(next(self.model.parameters()).device)
        feats = self.model.features(x)
        out = {"features": feats, "logits": self.model.head(feats)}
        return tuple(out[name] for name in self.features_list)


torch_fidelity.register_feature_extractor(CLASSIFIER_EXTRACTOR, ClassifierExtractor)


def train_classifier(dataset, in_channels: int, resolution: int, num_classes: int, ccfg, folder: Path) -> None:
    torch.manual_seed(0)
    model = DigitClassifier(in_channels, ccfg.width, num_classes)

    def loss_fn(batch, step):
        images, labels = batch
        return F.cross_entropy(model(_to_input(images, in_channels, resolution)), labels)

    train(model, loss_fn, infinite_batches(dataset, ccfg.batch_size, seed=0),
          Recipe(steps=ccfg.steps, lr=ccfg.lr, warmup=min(20, ccfg.steps // 10)))
    torch.save({"state_dict": model.state_dict(), "in_channels": in_channels, "resolution": resolution,
                "width": ccfg.width, "num_classes": num_classes}, folder / "classifier.pt")


class _RGB(Dataset):
    """Grayscale images as 3 channels, for Inception."""

    def __init__(self, images: Dataset):
        self.images = images

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        x = self.images[i]
        return x.expand(3, -1, -1).contiguous() if x.shape[0] == 1 else x


class Evaluator:
    """Computes torch-fidelity metrics against cached reference statistics with one fixed extractor."""

    def __init__(self, cfg, train_images_dataset, device: torch.device):
        self.cfg, self.cuda = cfg, device.type == "cuda"
        self.cache_root = Path(cfg.paths.cache) / "fidelity"
        self.data_sig = data_sig = signature(data_identity(cfg))
        if cfg.eval.extractor == "inception":
            path = Path(str(cfg.eval.inception_weights)).expanduser()
            if not path.is_file():
                raise UserError(f"Inception weights not found at {str(path)!r}: pass eval.inception_weights=PATH")
            self.extractor, self.weights, self.extractor_sig = INCEPTION_EXTRACTOR, str(path), "inception"
        else:
            ccfg = cfg.eval.classifier
            sig = signature({"data": data_sig, "classifier": dict(ccfg)})
            folder, _ = get_or_build(cfg.paths.cache, "classifier", sig, lambda f: train_classifier(
                train_images_dataset, cfg.data.in_channels, cfg.data.resolution, cfg.data.num_classes, ccfg, f))
            self.extractor, self.weights, self.extractor_sig = CLASSIFIER_EXTRACTOR, str(folder / "classifier.pt"), sig

    @property
    def tag(self) -> str:
        """What the metrics came from; never compare numbers across different tags."""
        return f"{self.extractor}:{self.extractor_sig}"

    def _wrap(self, images: Dataset) -> Dataset:
        return _RGB(images) if self.extractor == INCEPTION_EXTRACTOR else images

    def compare(self, images: Dataset, reference: Dataset, reference_name: str, *, isc: bool = False,
                prc: bool = False) -> dict[str, float]:
        """FID (and optionally IS, precision/recall) of `images` against `reference` (both uint8 CHW datasets)."""
        cache_name = f"{self.data_sig}-{reference_name}-{self.extractor_sig}"

        def calculate():
            return torch_fidelity.calculate_metrics(
                input1=self._wrap(images), input2=self._wrap(reference), fid=True, isc=isc, prc=prc,
                feature_extractor=self.extractor, feature_extractor_weights_path=self.weights, cuda=self.cuda,
                batch_size=self.cfg.eval.batch_size, save_cpu_ram=True, verbose=False, cache=True,
                cache_root=str(self.cache_root), input2_cache_name=cache_name)

        # torch-fidelity writes the reference's cached features/statistics non-atomically: the first job to need an
        # entry computes it under a file lock (the others wait, then read it); once the `.done` marker exists,
        # nobody locks.
        done = self.cache_root / f".{cache_name}-{'f'}{'i' if isc else ''}{'p' if prc else ''}.done"
        if done.is_file():
            raw = calculate()
        else:
            with file_lock(self.cache_root / f".{cache_name}.lock"):
                raw = calculate()
                done.touch()
        out = {"fid": raw["frechet_inception_distance"]}
        if isc:
            out["inception_score"] = raw["inception_score_mean"]
        if prc:
            out["precision"], out["recall"] = raw["precision"], raw["recall"]
        return out
