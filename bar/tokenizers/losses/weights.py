"""Local weight files of the frozen networks behind the tokenizer losses (nothing is downloaded at run time).

    WEIGHT_FILES[key] -> what the file is and where to get it       keys: vgg16, lpips, convnext_s, dino_vits,
                                                                    siglip2 (the release encoder's, not a loss's)
    check_weight_files(weights_node, needed_keys) -> {key: Path}    one-line UserError naming every missing or unset
                                                                    file at once
    load_weights(path, key) -> state dict                           one-line UserError for a file torch cannot read
                                                                    (memory-mapped: load_mapped)

The config node is `tokenizer.weights`: one path per key. `lpips` defaults to the lpips package's own file
(`lpips/weights/v0.1/vgg.pth`, the LPIPS v0.1 linear layers for VGG), so it never has to be set by hand.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from bar import UserError


@dataclass(frozen=True)
class WeightFile:
    role: str        # what the network is for, in the error message
    source: str      # which checkpoint, its usual file name and where it comes from


WEIGHT_FILES: dict[str, WeightFile] = {
    "vgg16": WeightFile(
        "the VGG16 ImageNet weights for LPIPS and the Gram loss",
        "torchvision vgg16 IMAGENET1K_V1, vgg16-397923af.pth from "
        "https://download.pytorch.org/models/vgg16-397923af.pth"),
    "lpips": WeightFile(
        "the LPIPS v0.1 linear layers on VGG16 features",
        "weights/v0.1/vgg.pth inside the lpips package (the default)"),
    "convnext_s": WeightFile(
        "the ConvNeXt-S weights for the perceptual loss",
        "torchvision convnext_small IMAGENET1K_V1, convnext_small-0c510722.pth from "
        "https://download.pytorch.org/models/convnext_small-0c510722.pth"),
    "dino_vits": WeightFile(
        "the DINO ViT-S/8 backbone of the GAN discriminator",
        "dino_vit_small_patch8_224.pth from https://huggingface.co/nyu-visionx/RAE-collections (discs/), as the "
        "release uses, or DINO's dino_deitsmall8_pretrain.pth from "
        "https://dl.fbaipublicfiles.com/dino/dino_deitsmall8_pretrain/dino_deitsmall8_pretrain.pth (same keys)"),
    "siglip2": WeightFile(
        "the SigLIP2-so400m weights that start the release's encoder and give its distillation targets",
        "the encoder.siglip.* weights inside a release BAR-FSQ tokenizer file, e.g. bar_fsq_16bits.bin"),
}


def default_lpips_path() -> Path:
    """The LPIPS v0.1 VGG linear layers shipped inside the lpips package."""
    import lpips  # the package only supplies this file here; its own model class is used in tests as a reference

    return Path(lpips.__file__).parent / "weights" / "v0.1" / "vgg.pth"


def _value(node, key: str):
    if node is None:
        return None
    if hasattr(node, "get"):
        return node.get(key)
    return getattr(node, key, None)


def weight_path(weights_node, key: str) -> Path | None:
    """The configured path of `key` (lpips falls back to the package's file), or None when unset."""
    value = _value(weights_node, key)
    if value in (None, "") and key == "lpips":
        return default_lpips_path()
    return None if value in (None, "") else Path(str(value)).expanduser()


def _source(key: str) -> str:
    info = WEIGHT_FILES[key]
    return f"{info.role}: {info.source}"


def _explain(key: str) -> str:
    return f"{_source(key)}; pass tokenizer.weights.{key}=PATH"


def check_weight_files(weights_node, needed_keys) -> dict[str, Path]:
    """Paths of the `needed_keys` files, after checking that each exists; fails with a single line naming every
    missing or unset one at once (so one rerun fixes them all) and where each comes from. Call before any training."""
    for key in needed_keys:
        if key not in WEIGHT_FILES:
            raise UserError(f"tokenizer.weights.{key}: unknown weights key (known: {', '.join(WEIGHT_FILES)})")
    paths = {key: weight_path(weights_node, key) for key in needed_keys}
    missing = [f"tokenizer.weights.{key} (unset: {_source(key)})" if path is None else
               f"tokenizer.weights.{key}={path} (no such file: {_source(key)})"
               for key, path in paths.items() if path is None or not path.is_file()]
    if missing:
        raise UserError(f"tokenizer weight files missing: {', '.join(missing)}; pass tokenizer.weights.KEY=PATH for "
                        "each (README: Training the paper's tokenizer)")
    return {key: path for key, path in paths.items() if path is not None}


def load_mapped(path: str | Path):
    """torch.load, memory-mapped: only the pickle is read now, each tensor's bytes when it is used. A legacy (pre-zip)
    file cannot be mapped and is read whole."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as err:
        if "mmap" not in str(err):
            raise
        return torch.load(path, map_location="cpu", weights_only=True)


def load_weights(path: str | Path, key: str) -> dict[str, torch.Tensor]:
    """A plain state dict from `path` (unwrapping a single `model` / `state_dict` entry), memory-mapped."""
    try:
        state = load_mapped(path)
    except Exception as err:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise UserError(f"tokenizer.weights.{key}: cannot read {path} ({type(err).__name__}: "
                        f"{str(err).splitlines()[0] if str(err) else ''})") from None
    for wrapper in ("model", "state_dict"):
        if isinstance(state, dict) and set(state) == {wrapper}:
            state = state[wrapper]
    if not isinstance(state, dict):
        raise UserError(f"tokenizer.weights.{key}: {path} holds a {type(state).__name__}, not a state dict")
    return state


def load_into(module: torch.nn.Module, state: dict, key: str, path) -> None:
    """`module.load_state_dict(state)` (strict), with a one-line UserError naming the first mismatched keys. A module
    built on the meta device takes the file's tensors as they are (`assign`), so it is never randomly initialised."""
    meta = any(t.is_meta for t in module.state_dict().values())
    try:
        missing, unexpected = module.load_state_dict(state, strict=False, assign=meta)
    except RuntimeError as err:  # shape mismatches
        raise UserError(f"tokenizer.weights.{key}: {path} does not fit ({str(err).splitlines()[-1].strip()}; "
                        f"{_explain(key)})") from None
    left = [n for n, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta]
    if left and not missing:
        missing = left
    if missing or unexpected:
        raise UserError(f"tokenizer.weights.{key}: {path} does not fit ({len(missing)} missing keys, e.g. "
                        f"{missing[:2]}; {len(unexpected)} unexpected, e.g. {unexpected[:2]}; {_explain(key)})")
