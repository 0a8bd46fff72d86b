"""Every file a point reads, opened far enough to know it is the right kind, shape and size before any work: a
one-line UserError names the key, the file and what is wrong. What each check reads, and what it costs for a 4 GB file:

    checkpoint (this project's)   the checksum, streamed, then the pickle only: tensors come back on the meta
    tokenizer.checkpoint          device, their bytes never read. One sequential read: 3.1 s and +8 MB for 4 GB from
                                  the page cache (2 cores; disk speed otherwise). Loading it whole took 32 s, +12 GB
    checkpoint (the release's)    memory-mapped: the pickle, and the RoPE tables the key map compares (1 ms for 4 GB)
    tokenizer.checkpoint          memory-mapped: the pickle; keys and shapes against the release's layout at this
      (the release's BAR-FSQ)     run's bits, resolution and size (built on the meta device)
    tokenizer.weights.siglip2     memory-mapped: the pickle; the encoder.siglip.* keys and shapes
    tokenizer.weights.*           loaded (memory-mapped where the file is zip-format, bar.tokenizers.losses.weights)
                                  into the frozen networks built on the meta device, once per process: 0.75 s, +50 MB
                                  for VGG16 + ConvNeXt-S + DINO ViT-S/8 (800 MB of files)
    eval.inception_weights        memory-mapped: the pickle; every key and shape of torch-fidelity's inception-v3-compat
    eval.reference                the npz's directory, arr_0's header and the statistics (mu, sigma: ~32 MB)
The saved config of this project's checkpoints is compared field by field for a message that names the field, then
the state dict key for key and shape for shape against the model this run builds (on the meta device), so any field
that changes a shape is caught."""

from __future__ import annotations

import io
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch.serialization import skip_data
from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

from bar import UserError
from bar.core.files import checksum_of, checksum_path, payload_problem
from bar.eval import adm
from bar.model.release_keys import convert_official_state_dict
from bar.orchestration.build import build_tokenizer
from bar.orchestration.config import resolved_dict
from bar.tokenizers.losses.combined import build_tokenizer_loss
from bar.tokenizers.losses.weights import load_mapped
from bar.tokenizers.release import SIZES, check_release_state_dict, clean_state_dict, release_layout

GENERATOR_KEYS = ("blocks.",)                        # this project's and the release's generators
TOKENIZER_KEYS = ("encoder.", "decoder.", "quantize.")
# the release's frozen SigLIP modules carry two names each (bar.tokenizers.release); the second is dropped before the
# layout check, which would otherwise read both copies to compare them
FROZEN_TWINS = {"encoder.frozen_encoder.": "encoder.siglip.encoder.",
                "encoder.frozen_post_layernorm.": "encoder.siglip.post_layernorm."}


# ----------------------------------------------------------------------------------------------------- reading
class _Payload(io.RawIOBase):
    """The torch file after the earlier format's checksum line (offset 0 for files with the checksum beside them),
    seen as a file of its own (torch seeks within its zip)."""

    def __init__(self, handle, offset: int):
        super().__init__()
        self.handle, self.offset = handle, offset
        handle.seek(offset)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, position: int, whence: int = io.SEEK_SET) -> int:
        return self.handle.seek(position + (self.offset if whence == io.SEEK_SET else 0), whence) - self.offset

    def tell(self) -> int:
        return self.handle.tell() - self.offset

    def readinto(self, buffer) -> int:
        return self.handle.readinto(buffer)


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()[0][:120] if str(err).strip() else "truncated?"
    return f"{type(err).__name__}: {text}"


def is_bar_file(path: Path) -> bool:
    """Written by bar.core.files.save_atomic: its checksum beside it (or, earlier, a checksum line first)."""
    return checksum_of(path)[0] is not None


def load_bar_file(path: Path, key: str) -> Any:
    """This project's checksummed file: the checksum verified as a stream, then the pickle with every tensor on the
    meta device (shapes, no bytes)."""
    problem = payload_problem(path)
    if problem:
        raise UserError(f"{key}={problem}: copy it again")
    try:
        with open(path, "rb") as handle, skip_data():
            payload = io.BufferedReader(_Payload(handle, checksum_of(path)[1]))
            return torch.load(payload, map_location="meta", weights_only=True)
    except Exception as err:  # noqa: BLE001 - a file that passes its checksum but is no torch file was not ours
        raise UserError(f"{key}={path} is not a readable torch checkpoint ({_first_line(err)})") from None


def load_plain(path: Path, key: str) -> Any:
    """A plain torch file (e.g. the release's state dicts), memory-mapped."""
    try:
        return load_mapped(path)
    except Exception as err:  # noqa: BLE001 - pickle, zip and EOF errors of a file that is not a torch checkpoint
        raise UserError(f"{key}={path} is not a readable torch checkpoint ({_first_line(err)})") from None


def state_of(blob) -> Any:
    """The state dict inside a checkpoint (`state_dict` or `model` entry), or the blob itself."""
    if isinstance(blob, dict):
        for entry in ("state_dict", "model"):
            if isinstance(blob.get(entry), dict):
                return blob[entry]
    return blob


def _holds(state: dict, prefixes: tuple[str, ...]) -> bool:
    return any(str(k).startswith(prefixes) for k in clean_state_dict(state))


def layout_problem(state: dict, expected: dict[str, tuple]) -> str | None:
    """The first unexpected, missing and mis-shaped keys of `state` against `expected` (key -> shape), with counts;
    None when it fits key for key."""
    def first(keys: list[str], what: str) -> list[str]:
        return [f"{what} {keys[0]!r}" + (f" (+{len(keys) - 1} more)" if len(keys) > 1 else "")] if keys else []

    def shape(value) -> tuple:
        return tuple(getattr(value, "shape", ()))

    wrong = [k for k in expected if k in state and shape(state[k]) != tuple(expected[k])]
    problems = first([k for k in state if k not in expected], "unexpected key") + \
        first([k for k in expected if k not in state], "missing key")
    if wrong:
        problems += [f"key {wrong[0]!r} has shape {shape(state[wrong[0]])}, expected {tuple(expected[wrong[0]])}"
                     + (f" (+{len(wrong) - 1} more mis-shaped)" if len(wrong) > 1 else "")]
    return "; ".join(problems) or None


def _layout(module: torch.nn.Module) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def _existing(value, missing: str) -> Path:
    """The file `value` names, or the one-line `missing` error."""
    path = Path(str(value)).expanduser() if value else None
    if path is None or not path.is_file():
        raise UserError(missing)
    return path


# ----------------------------------------------------------------------------------------------------- generator
GROUP_CHOICES = {("model", "preset"): "model", ("head", "name"): "head", ("tokenizer", "kind"): "tokenizer"}


def _override(group: str, key: str, value) -> str:
    """The override that sets `group.key` to `value` (a config group's choice where it is one: model=bar_b)."""
    choice = GROUP_CHOICES.get((group, key))
    return f"{choice}={value}" if choice else f"{group}.{key}={value}"


SAVED_CONFIG_KEYS = [("model", k) for k in ("preset", "dim", "depth", "heads", "mlp_ratio", "class_repeat",
                                            "patch_size", "head_width", "head_depth")] + \
    [("head", "name")] + [("head", k) for k in ("width", "depth", "mlp_ratio", "fourier_freqs", "num_timesteps",
                                                "freq_dim")] + \
    [("tokenizer", "kind"), ("data", "num_classes"), ("data", "resolution")]


def check_generator_checkpoint(cfg: DictConfig, model: torch.nn.Module) -> None:
    """stage=sample's `checkpoint` fits `model` (this run's generator on the meta device): this project's (checksum,
    saved config, keys and shapes) or the release's state dict (every key mapped, every shape right)."""
    path = _existing(cfg.checkpoint, "stage=sample needs checkpoint=PATH to a generator checkpoint; "
                     f"{cfg.checkpoint!r} is not a file")
    blob = load_bar_file(path, "checkpoint") if is_bar_file(path) else load_plain(path, "checkpoint")
    state = state_of(blob)
    if not isinstance(state, dict):
        raise UserError(f"checkpoint {path} holds a {type(state).__name__}, not a state dict of a generator")
    if _holds(state, TOKENIZER_KEYS):
        raise UserError(f"checkpoint {path} is a tokenizer checkpoint, not a generator: pass the generator's "
                        "checkpoint as checkpoint=PATH (and a tokenizer as tokenizer.checkpoint=PATH)")
    if not (isinstance(blob, dict) and "config" in blob and "state_dict" in blob):
        convert_official_state_dict(state, model)   # a UserError naming the keys or shapes that do not fit
        return
    check_saved_config(path, blob["config"], cfg)
    problem = layout_problem(state, _layout(model))
    if problem:
        raise UserError(f"checkpoint {path} does not fit this run's generator: {problem}")


def check_saved_config(path: Path, saved: dict, cfg: DictConfig) -> None:
    """The fields of the checkpoint's saved config that shape its state dict equal this run's (a field the saved
    config does not hold is left to the key-for-key check)."""
    current = resolved_dict(cfg)
    size = "bits" if saved.get("tokenizer", {}).get("kind") == "fsq" else "channels"   # the other one is unused
    for group, key in SAVED_CONFIG_KEYS[:1] + [("tokenizer", size)] + SAVED_CONFIG_KEYS[1:]:
        if key not in saved.get(group, {}):
            continue
        was, now = saved[group][key], current.get(group, {}).get(key)
        if was != now:
            raise UserError(f"checkpoint {path} was trained with {group}.{key}={was}, this run has {now}: pass "
                            f"{_override(group, key, was)} (or the checkpoint that matches)")


# ----------------------------------------------------------------------------------------------------- tokenizers
ARCH_FIELDS = {"conv": ("width", "num_down"), "vit": ("patch", "vit")}   # what shapes each architecture


def check_tokenizer_checkpoint(cfg: DictConfig) -> None:
    """`tokenizer.checkpoint`: with tokenizer.arch=release the release's BAR-FSQ file at this run's bits, resolution
    and size; otherwise a tokenizer this project wrote, with this run's settings, key for key."""
    key = "tokenizer.checkpoint"
    path = _existing(cfg.tokenizer.checkpoint, f"{key}={cfg.tokenizer.checkpoint} is not a file (the release's "
                     "BAR-FSQ tokenizer file, or one this project trained)")
    if cfg.tokenizer.arch == "release":
        _check_release_tokenizer(path, cfg)
        return
    if not is_bar_file(path):
        state = state_of(load_plain(path, key))
        if isinstance(state, dict) and "quantize.in_proj.weight" in clean_state_dict(state):
            raise UserError(f"{key}={path} is the release's BAR-FSQ tokenizer: add tokenizer.arch=release (profile="
                            "paper sets it) and tokenizer.size=full")
        raise UserError(f"{key}={path} is neither a tokenizer this project wrote (no {checksum_path(path).name} "
                        "beside it: copy it along) nor the release's BAR-FSQ file")
    blob = load_bar_file(path, key)
    state = state_of(blob)
    if not isinstance(state, dict) or _holds(state, GENERATOR_KEYS):
        raise UserError(f"{key}={path} is a generator checkpoint, not a tokenizer: pass it as checkpoint=PATH with "
                        "stage=sample")
    _check_saved_tokenizer(path, blob.get("config") or {}, cfg)
    with torch.device("meta"):
        problem = layout_problem(state, _layout(build_tokenizer(cfg)))
    if problem:
        raise UserError(f"{key}={path} does not fit this run's tokenizer: {problem}")


def _check_saved_tokenizer(path: Path, saved: dict, cfg: DictConfig) -> None:
    """The fields of the tokenizer's saved config that shape it (for its kind and architecture) equal this run's."""
    current = resolved_dict(cfg.tokenizer)
    kind = saved.get("kind", current["kind"])
    fields = ("kind", "bits" if kind == "fsq" else "channels", "arch", *(("kl",) if kind == "ae" else ()),
              *ARCH_FIELDS.get(saved.get("arch", ""), ()))
    for field in fields:
        if field in saved and saved[field] != current.get(field):
            raise UserError(f"tokenizer.checkpoint={path} was trained with tokenizer.{field}={saved[field]}, this "
                            f"run has {current.get(field)}: pass {_override('tokenizer', field, saved[field])} (or "
                            "the tokenizer that matches)")


def _release_state(path: Path, key: str) -> dict:
    state = state_of(load_plain(path, key))
    if not isinstance(state, dict):
        raise UserError(f"{key}={path} holds a {type(state).__name__}, not a state dict")
    if _holds(state, GENERATOR_KEYS):
        raise UserError(f"{key}={path} is a generator checkpoint, not the release's BAR-FSQ tokenizer")
    return clean_state_dict(state)


def _check_release_tokenizer(path: Path, cfg: DictConfig) -> None:
    key, tok = "tokenizer.checkpoint", cfg.tokenizer
    if tok.kind != "fsq":
        raise UserError(f"{key}={path} with tokenizer.arch=release loads the release's BAR-FSQ (bits per token); "
                        "tokenizer=ae, its continuous twin, has no released checkpoint: use tokenizer=fsq")
    if is_bar_file(path):
        raise UserError(f"{key}={path} is a tokenizer this project trained, not the release's BAR-FSQ file: set "
                        "tokenizer.arch to the architecture it was trained with")
    state = _release_state(path, key)
    twins = [k for k in state for a, b in FROZEN_TWINS.items() if k.startswith(a) and b + k[len(a):] in state]
    for twin in twins:
        del state[twin]
    check_release_state_dict(state, tok.bits, cfg.data.resolution, SIZES[tok.size], name=f"{key}={path}")


def check_siglip2(cfg: DictConfig) -> None:
    """`tokenizer.weights.siglip2`: a release tokenizer file whose encoder.siglip.* weights fit this run's size."""
    key = "tokenizer.weights.siglip2"
    path = _existing(cfg.tokenizer.weights.siglip2, f"{key}={cfg.tokenizer.weights.siglip2} is not a file (a "
                     "release tokenizer checkpoint whose frozen SigLIP2 initialises the encoder)")
    tower = {k: v for k, v in _release_state(path, key).items() if k.startswith("encoder.siglip.")}
    if not tower:
        raise UserError(f"{key}={path} has no encoder.siglip.* weights: pass a release BAR-FSQ tokenizer file "
                        "(e.g. bar_fsq_16bits.bin)")
    expected = {k: s for k, s in release_layout(16, cfg.data.resolution, SIZES[cfg.tokenizer.size]).items()
                if k.startswith("encoder.siglip.")}
    problem = layout_problem(tower, expected)
    if problem:
        raise UserError(f"{key}={path} does not fit tokenizer.size={cfg.tokenizer.size}: {problem}")


@lru_cache(maxsize=16)
def _frozen_networks(loss: tuple, weights: tuple, stamps: tuple) -> None:
    """Build the tokenizer loss's frozen networks from their files (meta device, tensors assigned): once per process
    for the same settings and the same files (`stamps`: their sizes and times)."""
    build_tokenizer_loss(dict(loss), dict(weights))


def _stamp(value) -> tuple | None:
    path = Path(str(value)).expanduser() if value else None
    if path is None or not path.is_file():
        return None
    status = path.stat()
    return status.st_size, status.st_mtime_ns


def check_frozen_networks(cfg: DictConfig) -> None:
    """The weight files of the frozen networks the tokenizer loss uses load into them, key for key."""
    weights = tuple(sorted(resolved_dict(cfg.tokenizer.weights).items()))
    _frozen_networks(tuple(sorted(resolved_dict(cfg.tokenizer.loss).items())), weights,
                     tuple(_stamp(v) for _, v in weights))


# ----------------------------------------------------------------------------------------------------- evaluation
@lru_cache(maxsize=1)
def inception_layout() -> dict[str, tuple]:
    """Key -> shape of torch-fidelity's inception-v3-compat (built on the meta device, no weights read)."""
    class Layout(FeatureExtractorInceptionV3):
        def load_state_dict(self, state_dict, *args, **kwargs):   # the layout only: its constructor loads a file
            return None

    with tempfile.TemporaryDirectory() as tmp:
        empty = Path(tmp) / "empty.pt"
        torch.save({}, empty)
        with torch.device("meta"):
            return _layout(Layout("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(empty)))


INCEPTION_SOURCE = "download pt_inception-2015-12-05 (torch-fidelity's inception-v3-compat weights)"


def check_inception_weights(cfg: DictConfig) -> None:
    """`eval.inception_weights`: torch-fidelity's inception-v3-compat weights, every key and shape."""
    weights = cfg.eval.inception_weights
    path = Path(str(weights)).expanduser() if weights else None
    if path is None or not path.is_file():
        raise UserError(f"Inception weights not found at {weights!r}: {INCEPTION_SOURCE} and pass "
                        "eval.inception_weights=PATH")
    try:
        state = state_of(load_mapped(path))
    except Exception as err:  # noqa: BLE001 - any file torch cannot read
        raise UserError(f"eval.inception_weights={path} is not a weights file ({_first_line(err)})") from None
    problem = layout_problem(state, inception_layout()) if isinstance(state, dict) else "not a state dict"
    if problem:
        raise UserError(f"eval.inception_weights={path} is not torch-fidelity's inception-v3-compat weights "
                        f"({problem}): {INCEPTION_SOURCE}")


def check_reference(cfg: DictConfig) -> None:
    """`eval.reference`: an ADM reference batch (uint8 NHWC images, and the statistics if any) at this run's
    resolution."""
    reference = cfg.eval.reference
    if not reference or not Path(str(reference)).expanduser().is_file():
        raise UserError(f"eval.protocol=adm needs eval.reference=PATH to the ADM reference batch "
                        f"(VIRTUAL_imagenet256_labeled.npz); {reference!r} is not a file")
    path = Path(str(reference)).expanduser()
    try:
        batch = adm.read_reference(path)
    except UserError as err:
        raise UserError(f"eval.reference: {err}") from None
    except Exception as err:  # noqa: BLE001 - a damaged member of the npz
        raise UserError(f"eval.reference={path} is not an ADM reference batch ({_first_line(err)})") from None
    height, width, _ = batch.image_shape
    side = cfg.data.resolution
    if (height, width) != (side, side):
        raise UserError(f"eval.reference={path} holds {height}x{width} images and this run's are {side}x{side}: use "
                        f"the reference batch of its resolution (VIRTUAL_imagenet{side}.npz)")
