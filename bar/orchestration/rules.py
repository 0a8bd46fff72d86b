"""What every setting may hold, and when it is read at all: two tables, checked before any work.

    RANGES      key -> Rule: the numbers, list lengths and choices a setting allows ("generator.train.betas: two
                numbers in [0, 1)"); null passes wherever the schema allows it (its meaning is documented there)
    USES        key -> Use: when a point reads the setting. Set where nothing reads it, it is an error where the user
                asked for something that will not happen, or a one-line warning where it is only ignored; a model
                preset's default that does not apply (e.g. its MBM schedule under head=softmax) says nothing
    check_ranges(cfg)              one-line UserError for the first value outside its rule
    check_value(key, value)        the same for a value held outside the point's config (hydra.sweeper.max_batch_size)
    check_uses(cfg) -> warnings    one-line UserError for an unused setting that asks for something; the ignored ones
    unused_defaults(cfg) -> {key: default}   what the signature hashes instead of a setting this point does not read
                                   (bar.orchestration.config.result_values): an ignored setting never changes it
Keys are dotted config keys; a key a config does not hold (another head's option) is skipped."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable

from omegaconf import DictConfig, ListConfig, OmegaConf

from bar import PROJECT_ROOT, UserError
from bar.core.bits import MAX_BITS_PER_TOKEN
from bar.model.heads import HEADS
from bar.tokenizers.losses.parts import LossWeights, needed_weight_keys   # light: no torchvision

PRESETS_DIR = PROJECT_ROOT / "bar" / "conf" / "model"


# ----------------------------------------------------------------------------------------------------- ranges
@dataclass(frozen=True)
class Rule:
    says: str                          # what is allowed, after "key=value ": "must be at least 1"
    test: Callable[[Any], bool]


def at_least(n: int) -> Rule:
    return Rule(f"must be at least {n}", lambda v: v >= n)


def one_of(*allowed) -> Rule:
    return Rule(f"is not one of {', '.join(str(a) for a in allowed)}", lambda v: v in allowed)


def _numbers(v, count: int | None, low: float, high: float) -> bool:
    return isinstance(v, (list, tuple)) and (count is None or len(v) == count) and all(low <= x < high for x in v)


POSITIVE = Rule("must be positive", lambda v: v > 0)
NOT_NEGATIVE = Rule("must not be negative", lambda v: v >= 0)
FRACTION = Rule("must be in [0, 1)", lambda v: 0 <= v < 1)
SHARE = Rule("must be in (0, 1]", lambda v: 0 < v <= 1)
COUNT = at_least(1)
BETAS = Rule("must be two numbers in [0, 1) (Adam's betas, e.g. [0.9, 0.999])", lambda v: _numbers(v, 2, 0, 1))
SCHEDULE = Rule("must be a non-empty list of positive integers (bits revealed per MBM unmasking step, e.g. "
                "[2, 2, 5, 7])", lambda v: _numbers(v, None, 1, float("inf")) and len(v) > 0
                and all(int(x) == x for x in v))
ANNEAL = Rule("must be two fractions of generator.train.steps, 0 <= start <= end <= 1 (e.g. [0.5, 0.75]: random "
              "order until half way, raster from 3/4)", lambda v: len(v) == 2 and 0 <= v[0] <= v[1] <= 1)
SWEEP_BATCH = Rule("must be at least 1 (points launched at once), or -1 or null (the whole sweep at once)",
                   lambda v: v >= 1 or v == -1)

RANGES: dict[str, Rule] = {
    "stage": one_of("tokenizer", "all", "sample"),
    "seed": NOT_NEGATIVE,
    "num_threads": COUNT,                                    # null: torch's default
    "data.resolution": COUNT, "data.in_channels": one_of(1, 3), "data.num_classes": COUNT, "data.val_size": COUNT,
    "data.split_seed": NOT_NEGATIVE, "data.train_size": COUNT, "data.crop_size": COUNT,
    "data.num_workers": NOT_NEGATIVE, "data.train_images": COUNT, "data.val_images": COUNT,
    "tokenizer.kind": one_of("fsq", "ae"), "tokenizer.arch": one_of("conv", "vit", "release"),
    "tokenizer.size": one_of("full", "tiny"),
    "tokenizer.bits": Rule(f"is out of range: binary FSQ supports 1 to {MAX_BITS_PER_TOKEN} bits per token",
                           lambda v: 1 <= v <= MAX_BITS_PER_TOKEN),
    "tokenizer.channels": COUNT, "tokenizer.width": COUNT, "tokenizer.num_down": NOT_NEGATIVE, "tokenizer.patch": COUNT,
    **{f"tokenizer.vit.{k}": COUNT for k in ("enc_width", "enc_depth", "enc_heads", "dec_width", "dec_depth",
                                             "dec_heads")},
    **{f"tokenizer.loss.{k}": NOT_NEGATIVE for k in ("l1", "l2", "kl", "perceptual", "lpips", "convnext",
                                                     "distillation", "gram", "gan", "gan_start")},
    "tokenizer.train.steps": COUNT, "tokenizer.train.batch_size": COUNT, "tokenizer.train.lr": POSITIVE,
    "tokenizer.train.min_lr": NOT_NEGATIVE, "tokenizer.train.warmup": NOT_NEGATIVE,
    "tokenizer.train.weight_decay": NOT_NEGATIVE, "tokenizer.train.betas": BETAS,
    "tokenizer.train.schedule_steps": COUNT,                 # null: tokenizer.train.steps
    "tokenizer.train.grad_clip": NOT_NEGATIVE,               # 0 or null: no clipping
    "tokenizer.train.encoder_lr_mult": NOT_NEGATIVE, "tokenizer.train.ema": FRACTION,
    "tokenizer.discriminator.lr": POSITIVE, "tokenizer.discriminator.min_lr": NOT_NEGATIVE,
    "tokenizer.discriminator.warmup": NOT_NEGATIVE, "tokenizer.discriminator.total": COUNT,
    "tokenizer.discriminator.betas": BETAS, "tokenizer.discriminator.weight_decay": NOT_NEGATIVE,
    "tokenizer.discriminator.grad_clip": NOT_NEGATIVE,
    "model.dim": COUNT, "model.depth": COUNT, "model.heads": COUNT, "model.mlp_ratio": POSITIVE,
    "model.dropout": FRACTION, "model.attn_dropout": FRACTION, "model.class_repeat": COUNT, "model.patch_size": COUNT,
    "model.head_width": COUNT, "model.head_depth": COUNT, "model.label_dropout": FRACTION,
    "model.rope_theta": POSITIVE,
    "head.width": COUNT, "head.depth": COUNT, "head.mlp_ratio": POSITIVE, "head.fourier_freqs": COUNT,
    "head.fourier_scale": POSITIVE, "head.t_std": POSITIVE, "head.masked_weight": NOT_NEGATIVE,
    "head.visible_weight": NOT_NEGATIVE, "head.num_timesteps": COUNT, "head.sampling_steps": COUNT,
    "head.sampler": one_of("ddpm", "ddim"), "head.batch_mul": COUNT, "head.freq_dim": COUNT,
    "generator.memory_budget_gb": POSITIVE,                  # null: the device's memory
    "generator.train.steps": COUNT, "generator.train.batch_size": COUNT, "generator.train.lr": POSITIVE,
    "generator.train.end_lr": NOT_NEGATIVE, "generator.train.warmup": NOT_NEGATIVE,
    "generator.train.weight_decay": NOT_NEGATIVE, "generator.train.betas": BETAS,
    "generator.train.grad_clip": NOT_NEGATIVE,               # 0: no clipping
    "generator.train.order_anneal": ANNEAL, "generator.train.micro_batch_size": COUNT,   # null: planned
    "generator.train.decay_rule": one_of("release", "all"),
    "generator.sample.num_samples": COUNT, "generator.sample.batch_size": COUNT,
    "generator.sample.cfg_scale": NOT_NEGATIVE, "generator.sample.temperature": NOT_NEGATIVE,   # 0: greedy
    "generator.sample.temperature_is": one_of("start", "mean"),
    "generator.sample.allocation_shape": SCHEDULE, "generator.sample.allocation": SCHEDULE,
    "generator.sample.seed": NOT_NEGATIVE, "generator.sample.precision": one_of("fp32", "tf32", "bf16"),
    "eval.protocol": one_of("fidelity", "adm"), "eval.extractor": one_of("classifier", "inception"),
    "eval.batch_size": COUNT, "eval.gfid_every": NOT_NEGATIVE, "eval.rfid_every": NOT_NEGATIVE,   # 0: at the end only
    "eval.classifier.width": COUNT, "eval.classifier.steps": COUNT, "eval.classifier.batch_size": COUNT,
    "eval.classifier.lr": POSITIVE, "eval.classifier.features": one_of("penultimate", "random_multiscale"),
    "eval.classifier.random_width": COUNT, "eval.classifier.random_seed": NOT_NEGATIVE,
    "launcher.checkpoint_every": NOT_NEGATIVE, "launcher.checkpoint_minutes": NOT_NEGATIVE,
    "launcher.keep_checkpoints": COUNT, "launcher.gpu_tflops": POSITIVE,
    "launcher.utilization": SHARE, "launcher.sample_utilization": SHARE, "launcher.gpu_mem_gb": POSITIVE,
    "launcher.disk_gb_per_s": POSITIVE, "launcher.start_minutes": NOT_NEGATIVE,
    "tracking.port": Rule("must be in [1, 65535]", lambda v: 1 <= v <= 65535),
    "hydra.sweeper.max_batch_size": SWEEP_BATCH,
}


def shown(value) -> str:
    """A value as the user would type it back: strings quoted, lists as lists."""
    if isinstance(value, (ListConfig, list, tuple)):
        return str(list(value))
    return repr(value) if isinstance(value, str) else str(value)


def check_value(key: str, value) -> None:
    """One-line UserError when `value` breaks the rule of `key` (None always passes: null has its own meaning)."""
    rule = RANGES[key]
    if value is None:
        return
    plain = list(value) if isinstance(value, ListConfig) else value
    try:
        ok = rule.test(plain)
    except TypeError:              # e.g. a list where a number belongs: the schema's types normally catch it
        ok = False
    if not ok:
        raise UserError(f"{key}={shown(value)} {rule.says}")


def check_ranges(cfg: DictConfig) -> None:
    """Every key of RANGES the config holds, in the table's order."""
    for key in RANGES:
        check_value(key, OmegaConf.select(cfg, key, throw_on_missing=False))


# ----------------------------------------------------------------------------------------------------- uses
def has_schedule(cfg: DictConfig) -> bool:
    """The head has an unmasking schedule (MBM's allocation)."""
    entry = HEADS.get(cfg.head.name)
    return entry is not None and "allocation" in entry[0].schedule_options


def trains_tokenizer(cfg: DictConfig) -> bool:
    return cfg.stage != "sample" and not cfg.tokenizer.checkpoint


def needs_inception(cfg: DictConfig) -> bool:
    """Inception weights are read by the ADM protocol and by the fidelity protocol's Inception extractor (stage=sample
    scores its samples only with the ADM protocol; stage=tokenizer scores no samples)."""
    return (cfg.eval.protocol == "adm" and cfg.stage != "tokenizer") or \
        (cfg.stage != "sample" and cfg.eval.extractor == "inception")


def _reads_weights(key: str) -> Callable[[DictConfig], bool]:
    return lambda cfg: trains_tokenizer(cfg) and key in needed_weight_keys(LossWeights.from_node(cfg.tokenizer.loss))


@dataclass(frozen=True)
class Use:
    read: Callable[[DictConfig], bool]   # the point reads the setting
    reads: str                           # after "key=value ": when it is read, and why not in this point
    fix: str = ""                        # what to do instead (errors)
    default: Any = None                  # the value that asks for nothing (a function of the config: the profile's)
    warn: bool | Callable[[DictConfig], bool] = False   # set but unread: a warning (an error otherwise)
    preset: bool = False                 # the default is the model preset's (bar/conf/model/<preset>.yaml)


IMAGE_FOLDER, EMBEDDED = ("imagefolder",), ("digits", "photo_crops")
DROP = "drop it"
USES: dict[str, Use] = {
    "checkpoint": Use(lambda c: c.stage == "sample", "is read by stage=sample only (stage={stage} trains its own "
                      "generator)", "add stage=sample, or drop checkpoint"),
    "generator.sample.allocation": Use(has_schedule, "is an MBM unmasking schedule and head={head} has none",
                                       "use head=mbm, or drop it"),
    "generator.sample.allocation_shape": Use(has_schedule, "is an MBM unmasking schedule and head={head} has none",
                                             warn=True, preset=True),
    "eval.reference": Use(lambda c: c.eval.protocol == "adm", "is read by eval.protocol=adm only (without it gFID is "
                          "scored against the training split)", "add eval.protocol=adm, or drop eval.reference"),
    "eval.protocol": Use(lambda c: c.stage != "tokenizer", "scores generated samples and stage=tokenizer generates "
                         "none (rFID uses the fidelity protocol)", "drop it, or use stage=all",
                         default=lambda c: "adm" if c.profile.name == "paper" else "fidelity"),
    "eval.gfid_every": Use(lambda c: c.stage == "all", "scores samples during generator training and stage={stage} "
                           "trains no generator", "drop it, or use stage=all", default=0),
    "eval.rfid_every": Use(trains_tokenizer, "scores the tokenizer during its training and this point trains none "
                           "(stage=sample or tokenizer.checkpoint)", DROP, default=0),
    "eval.inception_weights": Use(needs_inception, "is read by eval.extractor=inception or eval.protocol=adm, and "
                                  "this point scores with eval.extractor={extractor}, eval.protocol={protocol} "
                                  "(stage=sample scores with eval.protocol=adm only)", warn=True),
    "tokenizer.bits": Use(lambda c: c.tokenizer.kind == "fsq", "sizes binary FSQ and tokenizer=ae uses "
                          "tokenizer.channels", "drop it, or use tokenizer=fsq"),
    "tokenizer.channels": Use(lambda c: c.tokenizer.kind == "ae", "sizes the autoencoder and tokenizer=fsq uses "
                              "tokenizer.bits", "drop it, or use tokenizer=ae"),
    "tokenizer.kl": Use(lambda c: c.tokenizer.kind == "ae", "regularises the autoencoder's latent and tokenizer=fsq "
                        "has none", "drop it, or use tokenizer=ae", default=False),
    "tokenizer.size": Use(lambda c: c.tokenizer.arch == "release", "sizes the release's architecture and "
                          "tokenizer.arch={arch} is another", "drop it, or use tokenizer.arch=release", default="full"),
    "tokenizer.weights.siglip2": Use(lambda c: trains_tokenizer(c) and c.tokenizer.arch == "release",
                                     "is read when a tokenizer.arch=release tokenizer is trained, and this point "
                                     "trains {trained}", "use tokenizer.arch=release, or drop it",
                                     warn=lambda c: not trains_tokenizer(c)),
    **{f"tokenizer.weights.{key}": Use(_reads_weights(key), "is read by the tokenizer loss parts that use it, and "
                                       "this point trains with none of them", warn=True)
       for key in ("vgg16", "lpips", "convnext_s", "dino_vits")},
    "data.root": Use(lambda c: c.data.name in IMAGE_FOLDER, "is read by data=imagefolder only",
                     "drop it, or add data=imagefolder"),
    "data.val_root": Use(lambda c: c.data.name in IMAGE_FOLDER, "is read by data=imagefolder only",
                         "drop it, or add data=imagefolder"),
    "data.val_size": Use(lambda c: c.data.name in EMBEDDED, "sizes the validation split of digits and photo_crops "
                         "(data=imagefolder validates on data.val_root)", DROP),
    **{f"data.{key}": Use(lambda c: c.data.name in IMAGE_FOLDER, "sizes an image folder for a dry run without it "
                          "(data=imagefolder only)", DROP, warn=True) for key in ("train_images", "val_images")},
    "data.split_seed": Use(lambda c: c.data.name in EMBEDDED, "splits digits and photo_crops (data=imagefolder's "
                           "split is its folders)", DROP, default=0),
    **{f"data.{key}": Use(lambda c: c.data.name == "photo_crops", "is read by data=photo_crops only", DROP,
                          default=default) for key, default in (("train_size", None), ("crop_size", None),
                                                                ("hflip", False))},
}


@lru_cache(maxsize=None)
def preset_value(preset: str, key: str):
    """`key` as the model preset's file sets it (None for a preset without a file)."""
    path = PRESETS_DIR / f"{preset}.yaml"
    value = OmegaConf.select(OmegaConf.load(path), key) if path.is_file() else None
    return list(value) if isinstance(value, ListConfig) else value


def _default(cfg: DictConfig, key: str, use: Use):
    if use.preset:
        return preset_value(str(cfg.model.preset), key)
    return use.default(cfg) if callable(use.default) else use.default


def _value(cfg: DictConfig, key: str):
    value = OmegaConf.select(cfg, key, throw_on_missing=False)
    return list(value) if isinstance(value, ListConfig) else value


def _unread(cfg: DictConfig) -> list[tuple[str, Use]]:
    return [(key, use) for key, use in USES.items() if key.split(".")[0] in cfg and not use.read(cfg)]


def check_uses(cfg: DictConfig) -> list[str]:
    """One-line UserError for the first setting this point does not read that asks for something; returns one line
    per setting that is only ignored. A setting at its default (the model preset's for preset keys) is not reported."""
    context = {"stage": cfg.stage, "head": cfg.head.name, "arch": cfg.tokenizer.arch, "extractor": cfg.eval.extractor,
               "protocol": cfg.eval.protocol,
               "trained": f"a tokenizer.arch={cfg.tokenizer.arch} one" if trains_tokenizer(cfg) else "none"}
    ignored = []
    for key, use in _unread(cfg):
        value = _value(cfg, key)
        if value == _default(cfg, key, use):
            continue
        line = f"{key}={shown(value)} {use.reads.format(**context)}"
        if use.warn is True or (callable(use.warn) and use.warn(cfg)):
            ignored.append(f"{line}: it is ignored")
        else:
            raise UserError(f"{line}: {use.fix}")
    return ignored


def unused_defaults(cfg: DictConfig) -> dict[str, Any]:
    """{key: its default} for the settings of USES this point does not read: what a signature hashes in their place,
    so that an ignored setting never makes a point look new."""
    return {key: _default(cfg, key, use) for key, use in _unread(cfg)}
