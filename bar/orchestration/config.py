"""Config plumbing: composing the project config as run.py does, the signatures that identify points and cached
artifacts, MLflow params and run names, and one-line messages for composition errors.

Sweep files live in `sweeps/`; Hydra finds them as the `sweep` group through bar/conf/sweep (a link to that folder)."""

from __future__ import annotations

import re
from typing import Any

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.errors import HydraException, MissingConfigException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from bar import PROJECT_ROOT
from bar.core.files import file_identity
from bar.core.hashing import stable_hash
from bar.orchestration import schema
from bar.orchestration.rules import unused_defaults

SWEEPS_DIR = PROJECT_ROOT / "sweeps"
CONF_DIR = PROJECT_ROOT / "bar" / "conf"

# The one spec of what is not a result: config keys (dotted; a key covers everything under it) that never change a
# result and may differ between two attempts of one point (a relaunch, a requeue, another machine). They are left
# out of the point signature, the tokenizer signature and data identity, and the MLflow params (a param cannot change
# once logged). `experiment` names the MLflow experiment and the point's folder (outputs/points/<experiment>/<sig>),
# and finished points are looked up within it: it scopes a point, it does not change what the point computes.
NON_RESULT_KEYS = ("hydra", "tracking", "launcher", "paths", "experiment", "force", "dry_run", "point_label",
                   "num_threads", "data.num_workers", "data.train_images", "data.val_images")


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
def is_result_key(key: str) -> bool:
    """Whether the dotted config key can change a result: it is not, and is not under, one of NON_RESULT_KEYS."""
    return not any(key == other or key.startswith(f"{other}.") for other in NON_RESULT_KEYS)


def result_values(cfg: DictConfig, at: str = "") -> dict:
    """The resolved values of the config node at dotted key `at` ("": the whole config) without NON_RESULT_KEYS.
    Those directly under the node are left out before resolving, so a sweeper's config, which still has its `hydra`
    node, gives the job's values. Of the whole config, a setting the point does not read (bar.orchestration.rules.USES)
    counts as its default: ignored, it changes no signature and no param."""
    node = OmegaConf.select(cfg, at) if at else cfg
    prefix = f"{at}." if at else ""
    keys = [str(k) for k in node]        # the project's config keys are all strings (YAML and dataclass fields)
    values = _results_only({k: _resolved(node, k) for k in keys if is_result_key(prefix + k)}, prefix)
    for key, default in (unused_defaults(cfg).items() if not at else ()):
        _replace(values, key, default)
    return values


def _replace(values: dict, key: str, value) -> None:
    """Set the dotted `key` of nested `values` to `value`, where it is held."""
    *groups, name = key.split(".")
    parent: Any = values
    for group in groups:
        parent = parent.get(group) if isinstance(parent, dict) else None
    if isinstance(parent, dict) and name in parent:
        parent[name] = value


def _results_only(values: dict, prefix: str) -> dict:
    return {k: _results_only(v, f"{prefix}{k}.") if isinstance(v, dict) else v
            for k, v in values.items() if is_result_key(prefix + k)}


def _resolved(node: DictConfig, key: str):
    if OmegaConf.is_missing(node, key):
        return "???"                     # as OmegaConf.to_container gives a missing value
    value = node[key]
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def resolved_dict(node: DictConfig) -> dict:
    """`node` resolved to plain values (OmegaConf.to_container of a DictConfig is always a dict)."""
    values = OmegaConf.to_container(node, resolve=True)
    assert isinstance(values, dict)
    return values


def signature(identity, length: int = 12) -> str:
    """Stable hash of plain values (an identity built from result_values; a config node is resolved whole)."""
    if OmegaConf.is_config(identity):
        identity = OmegaConf.to_container(identity, resolve=True)
    return stable_hash(identity, length)


def data_identity(cfg: DictConfig) -> dict:
    """The data config that defines a dataset split (not how it is loaded)."""
    return result_values(cfg, "data")


def tokenizer_signature(cfg: DictConfig) -> str:
    """Hash of what a trained tokenizer depends on: its data, its config and the seed (and its rFID judge when it
    carries an rFID history)."""
    identity = {"data": data_identity(cfg), "tokenizer": result_values(cfg, "tokenizer"), "seed": cfg.seed}
    if cfg.tokenizer.train.get("augment"):   # the release's resize + random crop (bar.data.views), not flips alone
        identity["augment_view"] = "resize-random-crop-flip"
    if cfg.eval.rfid_every:      # the cached tokenizer then carries its rFID history (same weights as without)
        identity["rfid_every"] = cfg.eval.rfid_every   # ... measured by this judge
        identity["rfid_judge"] = {"extractor": cfg.eval.extractor, "classifier": result_values(cfg, "eval.classifier")}
    return signature(identity)


def point_signature(cfg: DictConfig) -> str:
    """Hash of every config value that can change the point's results; for stage=sample also of the checkpoint
    file's size and mtime: weights replaced at the same path are another point (own run, own sample batches)."""
    identity = result_values(cfg)
    if cfg.stage == "sample" and cfg.checkpoint:
        identity["checkpoint_file"] = file_identity(str(cfg.checkpoint))
    return signature(identity)


# ----------------------------------------------------------------------------------------------------- MLflow names
def flatten(values: dict) -> dict[str, object]:
    """Nested plain values as {"a.b.c": value}."""
    out: dict[str, object] = {}

    def walk(node, prefix):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}{k}.")
        else:
            out[prefix[:-1]] = node

    walk(values, "")
    return out


def run_params(cfg: DictConfig) -> dict[str, object]:
    """The MLflow params of a point: the values its signature hashes, flattened with dots."""
    return flatten(result_values(cfg))


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
    patch = f"-p{cfg.model.patch_size}" if cfg.model.patch_size > 1 else ""
    return f"{cfg.head.name}-{latent.split('-', 1)[1]}{patch}"


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
