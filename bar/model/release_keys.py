"""Load a generator checkpoint of the official BAR release (github.com/amazon-far/BAR) into BARGenerator.

    map_official_key(key) -> this project's key, or None for a buffer that is recomputed here (RoPE tables)
    release_name(name) -> the release's name for this project's parameter `name` (for its weight-decay rule)
    convert_official_state_dict(state_dict, model) -> state dict for model.load_state_dict(strict=True)
    to_release_state_dict(model) -> the model in the release's layout
    load_official(model, state_dict_or_path) -> model

The key names of both sides are one table, KEY_MAP, read in both directions; ROLE_NAMES adds release-style names for
the modules of heads the release does not have.

The release's checkpoint is a plain state dict (keys may carry torch.compile's `_orig_mod.` or DDP's `module.`
prefix; both are stripped). Its key layout differs from ours only in names and in three tables:
  - class embedding: the release indexes one table of (2 + 1 + num_classes + 1) rows at label + 3 and puts the null
    class last; rows 0..2 are never read. Ours holds rows 3.. (num_classes + 1 rows, null last).
  - absolute / target-aware / AdaLN position embeddings: the release allocates L + 128 (L + 100) rows and reads the
    first 1 + class_repeat + L; ours holds exactly those rows.
  - per-block RoPE tables (`attn.rope.freqs_cos/sin`): recomputed here; when present they are checked against ours.
Every key must map and every parameter of the model must be filled: anything else is an error naming the keys.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from bar import UserError
from bar.model.generator import rope_tables

# One row per parameter (or family of parameters) the release and this project both have: (our name, the release's
# name). A field `{name:regex}` is a part both names share, declared once in the row and written `{name}` elsewhere;
# `{i}` is a block index and `{p}` is "weight" or "bias". Both directions are read from these rows
# (`map_official_key`: release -> ours; `release_name`: ours -> release).
KEY_MAP: list[tuple[str, str]] = [
    ("cls_token", "cls_token"),
    ("pos_embed", "pos_embed"),
    ("target_pos_embed", "target_aware_pos_embed"),
    ("ada_pos_embed", "timesteps_embeddings"),
    ("class_embed.weight", "embeddings.weight"),
    ("token_embed.embed.weight", "input_embeddings.weight"),
    ("token_embed.proj.{p}", "input_merge.{p}"),
    ("norm.weight", "norm.weight"),
    ("cond_proj.{p}", "latent_condition_proj.{p}"),
    ("blocks.{i}.{n:norm1|norm2}.weight", "blocks.{i}.{n}.weight"),
    ("blocks.{i}.attn.{n:qkv|proj}.{p}", "blocks.{i}.attn.{n}.{p}"),
    ("blocks.{i}.attn.{n:q_norm|k_norm}.weight", "blocks.{i}.attn.{n}.weight"),
    ("blocks.{i}.mlp.{n:w12|w3}.{p}", "blocks.{i}.mlp.{n}.{p}"),
    ("blocks.{i}.ada.{p}", "blocks.{i}.adaLN_modulation.1.{p}"),
    # the MBM head
    ("head.bit_embed.weight", "lm_head.input_embed.weight"),
    ("head.bit_proj.{p}", "lm_head.input_proj.{p}"),
    ("head.in_norm.weight", "lm_head.ln_pre.weight"),
    ("head.blocks.{i}.norm.weight", "lm_head.transformer.{i}.in_ln.weight"),
    ("head.blocks.{i}.mlp.{n:w12|w3}.{p}", "lm_head.transformer.{i}.mlp.{n}.{p}"),
    ("head.blocks.{i}.ada.{p}", "lm_head.transformer.{i}.adaLN_modulation.1.{p}"),
    ("head.out.{p}", "lm_head.output_embed.{p}"),
    ("head.t_embed.freqs", "lm_head.t_embedder.W"),
    ("head.t_embed.mlp.{n:0|2}.{p}", "lm_head.t_embedder.mlp.{n}.{p}"),
    ("head.final.norm.weight", "lm_head.adaln_before_head.norm_final.weight"),
    ("head.final.ada.{p}", "lm_head.adaln_before_head.adaLN_modulation.1.{p}"),
]

# Ours -> release only, after KEY_MAP: the heads the release lacks (diffusion, softmax, bitwise) get the release's
# name for the role each module plays in the MBM head, so the release's weight-decay rule (bar.training.optim) treats
# every head's input layer, blocks, timestep MLP, final AdaLN and output layer alike; any other head module keeps its
# name under `lm_head.`. After these, every AdaLN Linear of ours anywhere (`ada`, `final_ada`) is named
# `adaLN_modulation.1`, as the release names its own.
ROLE_NAMES: list[tuple[str, str]] = [
    ("head.in_proj.{p}", "lm_head.input_proj.{p}"),
    ("head.blocks.{i}.norm.{p}", "lm_head.transformer.{i}.in_ln.{p}"),
    ("head.blocks.{i}.mlp.{rest:.+}", "lm_head.transformer.{i}.mlp.{rest}"),
    ("head.t_mlp.{n:0|2}.{p}", "lm_head.t_embedder.mlp.{n}.{p}"),
    ("head.final_ada.{p}", "lm_head.adaln_before_head.adaLN_modulation.1.{p}"),
    ("head.{rest:.+}", "lm_head.{rest}"),
]
_FIELD = re.compile(r"\{(\w+)(?::([^}]+))?\}")
_COMMON_FIELDS = {"i": r"\d+", "p": "weight|bias"}
_ADA = re.compile(r"(^|\.)(ada|final_ada)\.")


def _pattern(source: str, target: str) -> re.Pattern:
    """The regex of the names `source` stands for; each field a named group (its regex declared in either
    template of the row)."""
    fields = dict(_COMMON_FIELDS)
    for template in (source, target):
        fields.update({m[1]: m[2] for m in _FIELD.finditer(template) if m[2]})
    out, pos = [], 0
    for m in _FIELD.finditer(source):
        out += [re.escape(source[pos:m.start()]), f"(?P<{m[1]}>{fields[m[1]]})"]
        pos = m.end()
    return re.compile("".join(out) + re.escape(source[pos:]))


def _fill(template: str, fields: dict) -> str:
    return _FIELD.sub(lambda m: fields[m[1]], template)


def _rename(rows: list[tuple[re.Pattern, str]], name: str) -> str | None:
    """`name` renamed by the first row whose pattern matches all of it; None when none does."""
    for pattern, template in rows:
        m = pattern.fullmatch(name)
        if m:
            return _fill(template, m.groupdict())
    return None


_TO_OURS = [(_pattern(release, ours), ours) for ours, release in KEY_MAP]
_TO_RELEASE = [(_pattern(ours, release), release) for ours, release in KEY_MAP + ROLE_NAMES]
_ROPE = re.compile(r"^blocks\.(\d+)\.attn\.rope\.freqs_(cos|sin)$")
_CODE_ROWS = 3   # release class table starts with target_codebook_size + 1 = 3 unused rows


def _strip(key: str) -> str:
    for prefix in ("_orig_mod.", "module."):
        while key.startswith(prefix):
            key = key[len(prefix):]
    return key.replace("._orig_mod.", ".")


def map_official_key(key: str):
    """Release key -> our key; None for a recomputed RoPE buffer; raises KeyError if the key is unknown."""
    key = _strip(key)
    if _ROPE.match(key):
        return None
    ours = _rename(_TO_OURS, key)
    if ours is None:
        raise KeyError(key)
    return ours


def convert_official_state_dict(state_dict: dict, model) -> dict:
    """Release state dict -> ours (shapes adapted, RoPE tables checked). Raises UserError listing every problem."""
    cfg = model.cfg
    n_rows = cfg.prefix + cfg.steps
    # the RoPE tables to check the release's against (recomputed when the model lives on the meta device)
    tables = (model.rope_cos, model.rope_sin) if not model.rope_cos.is_meta else \
        rope_tables(cfg.step_grid, cfg.dim // cfg.heads, cfg.prefix, cfg.rope_theta)
    ours = model.state_dict()
    out, unknown, problems = {}, [], []
    for key, value in state_dict.items():
        try:
            new = map_official_key(key)
        except KeyError:
            unknown.append(key)
            continue
        if new is None:   # RoPE table of one block: must equal ours
            table = tables[0] if key.endswith("cos") else tables[1]
            if value.shape != table.shape or not torch.allclose(value.float().cpu(), table.float().cpu(), atol=1e-5):
                problems.append(f"{key}: RoPE table {tuple(value.shape)} differs from this model's "
                                f"{tuple(table.shape)} (grid or head dim mismatch)")
            continue
        if new in ("pos_embed", "target_pos_embed", "ada_pos_embed"):
            value = value.reshape(-1, value.shape[-1])
            if value.shape[0] < n_rows:
                problems.append(f"{key}: {value.shape[0]} rows, need at least {n_rows}")
                continue
            value = value[:n_rows]
        elif new == "class_embed.weight":
            if value.shape[0] != _CODE_ROWS + cfg.num_classes + 1:
                problems.append(f"{key}: {value.shape[0]} rows, expected {_CODE_ROWS} + num_classes + 1 = "
                                f"{_CODE_ROWS + cfg.num_classes + 1} (is num_classes right?)")
                continue
            value = value[_CODE_ROWS:]
        if new in out:
            problems.append(f"{key}: maps to {new}, which another key already filled")
        out[new] = value
    missing = sorted(set(ours) - set(out))
    for key in sorted(set(out) & set(ours)):
        if tuple(out[key].shape) != tuple(ours[key].shape):
            problems.append(f"{key}: checkpoint shape {tuple(out[key].shape)}, model shape {tuple(ours[key].shape)}")
    if unknown:
        problems.append(f"{len(unknown)} checkpoint key(s) do not map: {unknown[:8]}")
    if missing:
        problems.append(f"{len(missing)} model key(s) left unfilled: {missing[:8]}")
    if problems:
        raise UserError("official checkpoint does not fit this model: " + "; ".join(problems))
    return out


def release_name(name: str) -> str:
    """The release's name for our parameter `name`: KEY_MAP's, else the role name (ROLE_NAMES); any other name (a
    tokenizer's, say) is kept, but for its AdaLN Linears."""
    return _ADA.sub(r"\1adaLN_modulation.1.", _rename(_TO_RELEASE, name) or name)


def to_release_state_dict(model) -> dict:
    """This project's generator as a state dict in the release's layout (key names; position tables padded to the
    release's L + 128 / L + 100 rows, the class table with its 3 unused leading rows, every block's RoPE tables): what
    `convert_official_state_dict` reads back exactly. For exporting, and for testing the release's path."""
    cfg, out = model.cfg, {}
    L, D = cfg.steps, cfg.dim
    for name, value in model.state_dict().items():
        key = release_name(name)
        if name in ("pos_embed", "target_pos_embed", "ada_pos_embed"):
            rows = (L + 100) if name == "ada_pos_embed" else (L + 128)
            value = torch.cat([value, value.new_zeros(rows - value.shape[0], D)])[None]
        elif name == "cls_token":
            value = value.reshape(1, 1, D)
        elif name == "class_embed.weight":
            value = torch.cat([value.new_zeros(_CODE_ROWS, D), value])
        out[key] = value.clone()
    for i in range(cfg.depth):
        out[f"blocks.{i}.attn.rope.freqs_cos"] = model.rope_cos.clone()
        out[f"blocks.{i}.attn.rope.freqs_sin"] = model.rope_sin.clone()
    return out


def load_official(model, state_dict_or_path) -> object:
    """Load a release generator checkpoint (a state dict or a path to one) into `model` (strict)."""
    sd = state_dict_or_path
    if isinstance(sd, (str, Path)):
        sd = torch.load(sd, map_location="cpu", weights_only=True)
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    model.load_state_dict(convert_official_state_dict(sd, model), strict=True)
    return model
