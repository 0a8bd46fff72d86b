"""Config plumbing: sweep registration, resolvers, signatures and up-front validation.

Sweep files live in `sweeps/` (outside the Hydra config dir) and are registered in Hydra's ConfigStore as the
`sweep` group, so `python run.py -m sweep=NAME` selects one."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from bar import PROJECT_ROOT, UserError

SWEEPS_DIR = PROJECT_ROOT / "sweeps"
CONF_DIR = PROJECT_ROOT / "bar" / "conf"

# Config keys that never change a result: excluded from signatures.
NON_RESULT_KEYS = ("tracking", "paths", "launcher", "force", "dry_run", "experiment", "num_workers", "hydra",
                   "point_label", "num_threads")


def available_sweeps() -> list[str]:
    return sorted(p.stem for p in SWEEPS_DIR.glob("*.yaml"))


def check_sweep_name(name: str) -> None:
    if name not in ("null", "none") and name not in available_sweeps():
        raise UserError(f"unknown sweep {name!r}: choose one of {', '.join(available_sweeps())} (files in {SWEEPS_DIR})")


def register_configs() -> None:
    """Register resolvers and every sweeps/*.yaml as an option of the `sweep` config group (idempotent)."""
    from hydra.core.config_store import ConfigStore

    if not OmegaConf.has_resolver("bar_root"):
        OmegaConf.register_new_resolver("bar_root", lambda: str(PROJECT_ROOT))
    store = ConfigStore.instance()
    for path in sorted(SWEEPS_DIR.glob("*.yaml")):
        store.store(group="sweep", name=path.stem, node=OmegaConf.load(path), package="_global_")


def compose(overrides: list[str] | None = None) -> DictConfig:
    """Compose the project config as `run.py` would (for tests and notebooks)."""
    from hydra import compose as hydra_compose, initialize_config_dir

    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=list(overrides or []), return_hydra_config=False)


def signature(cfg_subtree, length: int = 12) -> str:
    """Stable hash of the config values that change results."""
    container = OmegaConf.to_container(cfg_subtree, resolve=True) if isinstance(cfg_subtree, DictConfig) else cfg_subtree
    if isinstance(container, dict):
        container = {k: v for k, v in container.items() if k not in NON_RESULT_KEYS}
    blob = json.dumps(container, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def tokenizer_signature(cfg: DictConfig) -> str:
    return signature({"data": data_identity(cfg), "tokenizer": OmegaConf.to_container(cfg.tokenizer, resolve=True),
                      "seed": cfg.seed})


def data_identity(cfg: DictConfig) -> dict:
    """The data config that defines a dataset split (not how it is loaded)."""
    data = OmegaConf.to_container(cfg.data, resolve=True)
    data.pop("num_workers", None)
    return data


def point_signature(cfg: DictConfig) -> str:
    return signature(cfg)


def flatten(cfg: DictConfig) -> dict[str, object]:
    """Resolved config as {"a.b.c": value}, for MLflow params."""
    out: dict[str, object] = {}

    def walk(node, prefix):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}{k}.")
        else:
            out[prefix[:-1]] = node

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return out


def point_name(cfg: DictConfig) -> str:
    """Human name of a sweep point, saying what varies: fsq-16b, ae-4c, mbm-16b, ... (the sweeper's label wins)."""
    if cfg.get("point_label"):
        return cfg.point_label
    tok = cfg.tokenizer
    latent = f"{tok.kind}-{tok.bits}b" if tok.kind == "fsq" else f"{tok.kind}-{tok.channels}c"
    if cfg.get("stage", "tokenizer") == "tokenizer" or "head" not in cfg:
        return latent
    return f"{cfg.head.name}-{latent.split('-', 1)[1]}" + (f"-p{cfg.model.patch_size}" if cfg.model.patch_size > 1 else "")


def _has_class_images(root: Path) -> bool:
    """Cheap check (stops at the first image) that `root/<class>/<image>` exists."""
    from bar.data import IMAGE_SUFFIXES

    return any(f.suffix.lower() in IMAGE_SUFFIXES for d in root.iterdir() if d.is_dir() for f in d.iterdir())


def validate_config(cfg: DictConfig) -> None:
    """Everything that can be checked before training: one-line UserErrors."""
    from bar.tokenizer import validate_tokenizer_config

    if cfg.data.name == "imagefolder" and cfg.stage != "sample":
        root = Path(str(cfg.data.root))
        if not root.is_dir():
            raise UserError(f"data folder {root} does not exist: set data.root to an ImageNet-style folder tree")
        if not _has_class_images(root):
            raise UserError(f"data folder {root} holds no images in class sub-folders (expected {root}/<class>/*.JPEG)")
    elif cfg.data.name != "digits":
        raise UserError(f"unknown data.name {cfg.data.name!r}: use digits or imagefolder")
    validate_tokenizer_config(cfg.tokenizer)
    if cfg.eval.extractor == "inception":
        weights = cfg.eval.inception_weights
        if not weights or not Path(os.path.expanduser(str(weights))).is_file():
            raise UserError(f"Inception weights not found at {weights!r}: download pt_inception-2015-12-05 "
                            "(torch-fidelity's inception-v3-compat weights) and pass eval.inception_weights=PATH")
    elif cfg.eval.extractor != "classifier":
        raise UserError(f"unknown eval.extractor {cfg.eval.extractor!r}: use classifier or inception")
    if cfg.stage not in ("tokenizer", "all", "sample"):
        raise UserError(f"unknown stage {cfg.stage!r}: use tokenizer, all or sample")
    if cfg.stage == "sample" and not (cfg.checkpoint and Path(str(cfg.checkpoint)).expanduser().is_file()):
        raise UserError(f"stage=sample needs checkpoint=PATH to a generator checkpoint; {cfg.checkpoint!r} is not a file")
    if cfg.stage in ("all", "sample"):
        from bar.generator_stage import check_generator_config

        check_generator_config(cfg)
