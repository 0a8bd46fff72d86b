"""A point's evaluators, built from its config: `eval.protocol` fidelity (torch-fidelity with `eval.extractor`: the
classifier trained on the dataset itself, cached by signature, or Inception from a local weights file) or adm (the
paper's evaluator against `eval.reference`). rFID always uses the fidelity protocol: the ADM batch is a generation
reference.

    generation_evaluator(cfg, train_set, device)      reconstruction_evaluator(cfg, train_set, device)
    adm_evaluator(cfg, device)                        inception_weights(cfg) -> path"""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig

from bar import UserError
from bar.data.cache import get_or_build
from bar.eval.features import CLASSIFIER_EXTRACTOR
from bar.eval.fidelity import INCEPTION_EXTRACTOR, ADMEvaluator, FidelityEvaluator
from bar.orchestration.config import data_identity, signature
from bar.training.classifier import train_classifier


def inception_weights(cfg: DictConfig) -> str:
    path = Path(str(cfg.eval.inception_weights)).expanduser()
    if not cfg.eval.inception_weights or not path.is_file():
        raise UserError(f"Inception weights not found at {cfg.eval.inception_weights!r}: download "
                        "pt_inception-2015-12-05 (torch-fidelity's inception-v3-compat weights) and pass "
                        "eval.inception_weights=PATH")
    return str(path)


def fidelity_evaluator(cfg: DictConfig, train_set, device: torch.device) -> FidelityEvaluator:
    """torch-fidelity metrics with `eval.extractor`; the classifier extractor is trained on `train_set` the first
    time (cache entry per data set and classifier config)."""
    data_sig = signature(data_identity(cfg))
    if cfg.eval.extractor == "inception":
        name, weights, extractor_sig = INCEPTION_EXTRACTOR, inception_weights(cfg), "inception"
    else:
        ccfg = cfg.eval.classifier
        extractor_sig = signature({"data": data_sig, "classifier": dict(ccfg)})
        folder, _ = get_or_build(cfg.paths.cache, "classifier", extractor_sig, lambda f: train_classifier(
            train_set, cfg.data.in_channels, cfg.data.resolution, cfg.data.num_classes, ccfg, f))
        name, weights = CLASSIFIER_EXTRACTOR, str(folder / "classifier.pt")
    return FidelityEvaluator(name, weights, extractor_sig, data_sig, cache_root=cfg.paths.cache,
                             batch_size=cfg.eval.batch_size, device=device, loader_workers=cfg.data.num_workers)


def adm_evaluator(cfg: DictConfig, device: torch.device) -> ADMEvaluator:
    """The paper's protocol against `eval.reference` with the Inception weights of `eval.inception_weights`."""
    if not cfg.eval.reference:
        raise UserError("eval.protocol=adm needs eval.reference=PATH to the ADM reference batch "
                        "(VIRTUAL_imagenet256_labeled.npz, or VIRTUAL_imagenet512.npz at 512 px)")
    return ADMEvaluator(cfg.eval.reference, inception_weights(cfg), cache_root=cfg.paths.cache,
                        batch_size=cfg.eval.batch_size, device=device)


def generation_evaluator(cfg: DictConfig, train_set, device: torch.device):
    """The evaluator of generated samples: `eval.protocol` fidelity (default) or adm."""
    if cfg.eval.protocol == "adm":
        return adm_evaluator(cfg, device)
    return fidelity_evaluator(cfg, train_set, device)


def reconstruction_evaluator(cfg: DictConfig, train_set, device: torch.device) -> FidelityEvaluator:
    return fidelity_evaluator(cfg, train_set, device)
