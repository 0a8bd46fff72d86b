"""Config plumbing: composing the project config as run.py does, the signatures that identify points and cached
artifacts, MLflow params and run names, and one-line messages for composition errors.

Sweep files live in `sweeps/`; Hydra finds them as the `sweep` group through bar/conf/sweep (a link to that folder)."""

from __future__ import annotations

import re

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.errors import HydraException, MissingConfigException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from bar import PROJECT_ROOT
from bar.core.hashing import stable_hash
from bar.orchestration import schema

SWEEPS_DIR = PROJECT_ROOT / "sweeps"
CONF_DIR = PROJECT_ROOT / "bar" / "conf"

# Config keys that never change a result: excluded from signatures.
NON_RESULT_KEYS = ("tracking", "paths", "launcher", "force", "dry_run", "experiment", "hydra", "point_label",
                   "num_threads")
# Keys that may differ between two attempts of the same point (a relaunch, a requeue): not logged as MLflow params,
# which cannot change once logged.
VOLATILE_PARAMS = ("tracking.", "launcher.", "paths.", "force", "dry_run", "point_label", "num_threads")


def available_sweeps() -> list[str]:
    return sorted(p.stem for p in SWEEPS_DIR.glob("*.yaml"))


def register() -> None:
    schema.register()


def compose(overrides: list[str] | None = None, hydra_node: bool = False) -> DictConfig:
    """Compose the project config as `run.py` would (for tests, benchmarks and notebooks)."""
    register()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=list(overrides or []), return_hydra_config=hydra_node)


# ----------------------------------------------------------------------------------------------------- identities
def signature(cfg_subtree, length: int = 12) -> str:
    """Stable hash of the config values that change results (top-level NON_RESULT_KEYS left out before resolving,
    so a sweeper's config, which still has its `hydra` node, hashes like the job's)."""
    container = cfg_subtree
    if isinstance(cfg_subtree, DictConfig):
        container = {k: _resolved(cfg_subtree, k) for k in cfg_subtree if k not in NON_RESULT_KEYS}
    elif isinstance(container, dict):
        container = {k: v for k, v in container.items() if k not in NON_RESULT_KEYS}
    return stable_hash(container, length)


def _resolved(cfg: DictConfig, key: str):
    value = cfg[key]
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def data_identity(cfg: DictConfig) -> dict:
    """The data config that defines a dataset split (not how it is loaded)."""
    data = OmegaConf.to_container(cfg.data, resolve=True)
    data.pop("num_workers", None)
    return data


def tokenizer_signature(cfg: DictConfig) -> str:
    identity = {"data": data_identity(cfg), "tokenizer": OmegaConf.to_container(cfg.tokenizer, resolve=True),
                "seed": cfg.seed}
    if cfg.eval.rfid_every:      # the cached tokenizer then carries its rFID history (same weights as without)
        identity["rfid_every"] = cfg.eval.rfid_every   # ... measured by this judge
        identity["rfid_judge"] = {"extractor": cfg.eval.extractor,
                                  "classifier": OmegaConf.to_container(cfg.eval.classifier, resolve=True)}
    return signature(identity)


def point_signature(cfg: DictConfig) -> str:
    return signature(cfg)


# ----------------------------------------------------------------------------------------------------- MLflow names
def flatten(cfg: DictConfig) -> dict[str, object]:
    """Resolved config as {"a.b.c": value}."""
    out: dict[str, object] = {}

    def walk(node, prefix):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}{k}.")
        else:
            out[prefix[:-1]] = node

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return out


def run_params(cfg: DictConfig) -> dict[str, object]:
    """The MLflow params of a point: its resolved config without the keys that may change between attempts."""
    return {k: v for k, v in flatten(cfg).items() if not k.startswith(VOLATILE_PARAMS) and not k.startswith("hydra.")}


def point_name(cfg: DictConfig) -> str:
    """Human name of a sweep point, saying what varies: fsq-16b, ae-4c, mbm-16b, ... (the sweeper's label wins)."""
    if cfg.get("point_label"):
        return cfg.point_label
    tok = cfg.tokenizer
    latent = f"{tok.kind}-{tok.bits}b" if tok.kind == "fsq" else f"{tok.kind}-{tok.channels}c"
    if cfg.stage == "tokenizer":
        return latent
    if cfg.stage == "sample":
        return f"{cfg.model.preset}-sample"
    return f"{cfg.head.name}-{latent.split('-', 1)[1]}" + (f"-p{cfg.model.patch_size}" if cfg.model.patch_size > 1 else "")


# ----------------------------------------------------------------------------------------------------- errors
def describe_config_error(err: BaseException) -> str:
    """One line for a Hydra / OmegaConf composition error: which key or option, and what is wrong with it."""
    if isinstance(err, MissingConfigException):
        return _missing_option(err)
    cause = err.__cause__ or err.__context__
    for candidate in (err, cause):
        if isinstance(candidate, OmegaConfBaseException) and getattr(candidate, "full_key", None):
            return _omegaconf_line(candidate)
    text = str(err).strip()
    if isinstance(cause, OmegaConfBaseException):
        text = f"{text} {str(cause).strip()}"
    return re.sub(r"\s+", " ", text)[:400]


def _missing_option(err: MissingConfigException) -> str:
    missing = err.missing_cfg_file or ""
    group, _, name = missing.rpartition("/")
    if group and err.options is not None:
        where = f" (files in {SWEEPS_DIR})" if group == "sweep" else ""
        return f"unknown {group} {name!r}: choose one of {', '.join(sorted(err.options))}{where}"
    return re.sub(r"\s+", " ", str(err).strip().splitlines()[0])[:400]


def _omegaconf_line(err: OmegaConfBaseException) -> str:
    key = err.full_key
    message = str(getattr(err, "msg", "") or err).strip().splitlines()[0]
    if "not in struct" in message or "not in '" in message or "is not in" in message:
        return f"unknown config key {key!r}: check its spelling (`python run.py --cfg job` lists every key)"
    if "Missing mandatory value" in message:
        return f"config key {key!r} must be set (e.g. {key}=VALUE on the command line)"
    return f"config key {key!r}: {message}"


def is_config_error(err: BaseException) -> bool:
    return isinstance(err, (HydraException, OmegaConfBaseException))
