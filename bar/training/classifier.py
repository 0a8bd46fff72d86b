"""Training the evaluation classifier (bar.eval.features) on the dataset itself, once per signature: its penultimate
features (or, with `features=random_multiscale`, a seeded random network's, fitted to the training images) judge
FID offline."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from bar.core.files import save_atomic
from bar.eval.features import DigitClassifier, RandomMultiscale, to_input
from bar.training.loop import Recipe, infinite_batches, train


def train_classifier(dataset, in_channels: int, resolution: int, num_classes: int, ccfg, folder: Path) -> None:
    torch.manual_seed(0)
    model = DigitClassifier(in_channels, ccfg.width, num_classes)

    def loss_fn(module, batch, step, generator):
        images, labels = batch
        return F.cross_entropy(module(to_input(images, in_channels, resolution)), labels)

    train(model, loss_fn, infinite_batches(dataset, ccfg.batch_size, seed=0),
          Recipe(steps=ccfg.steps, lr=ccfg.lr, warmup=min(20, ccfg.steps // 10)))
    random = None
    if ccfg.features == "random_multiscale":
        torch.manual_seed(ccfg.random_seed)
        random = RandomMultiscale(in_channels, ccfg.random_width)
        images = getattr(dataset, "images", None)    # in-memory datasets; else a sample of up to 5,000 images
        if images is None:
            images = torch.stack([dataset[i][0] for i in range(min(len(dataset), 5000))])
        random.fit_scales(to_input(images, in_channels, resolution))
    save_atomic({"state_dict": model.state_dict(), "in_channels": in_channels, "resolution": resolution,
                 "width": ccfg.width, "num_classes": num_classes, "features": ccfg.features,
                 "random_width": ccfg.random_width,
                 "random_state_dict": None if random is None else random.state_dict()},
                folder / "classifier.pt")
