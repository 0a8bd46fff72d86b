"""Load a generator checkpoint of the official BAR release (github.com/amazon-far/BAR) into BARGenerator.

    map_official_key(key) -> this project's key, or None for a buffer that is recomputed here (RoPE tables)
    convert_official_state_dict(state_dict, model) -> state dict for model.load_state_dict(strict=True)
    load_official(model, state_dict_or_path) -> model

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

# (release pattern, our replacement); applied to the first match only
_RULES: list[tuple[str, str]] = [
    (r"^cls_token$", "cls_token"),
    (r"^pos_embed$", "pos_embed"),
    (r"^target_aware_pos_embed$", "target_pos_embed"),
    (r"^timesteps_embeddings$", "ada_pos_embed"),
    (r"^embeddings\.weight$", "class_embed.weight"),
    (r"^input_embeddings\.weight$", "token_embed.embed.weight"),
    (r"^input_merge\.(weight|bias)$", r"token_embed.proj.\1"),
    (r"^norm\.weight$", "norm.weight"),
    (r"^latent_condition_proj\.(weight|bias)$", r"cond_proj.\1"),
    (r"^blocks\.(\d+)\.(norm1|norm2)\.weight$", r"blocks.\1.\2.weight"),
    (r"^blocks\.(\d+)\.attn\.(qkv|proj)\.(weight|bias)$", r"blocks.\1.attn.\2.\3"),
    (r"^blocks\.(\d+)\.attn\.(q_norm|k_norm)\.weight$", r"blocks.\1.attn.\2.weight"),
    (r"^blocks\.(\d+)\.mlp\.(w12|w3)\.(weight|bias)$", r"blocks.\1.mlp.\2.\3"),
    (r"^blocks\.(\d+)\.adaLN_modulation\.1\.(weight|bias)$", r"blocks.\1.ada.\2"),
    (r"^lm_head\.input_embed\.weight$", "head.bit_embed.weight"),
    (r"^lm_head\.input_proj\.(weight|bias)$", r"head.bit_proj.\1"),
    (r"^lm_head\.ln_pre\.weight$", "head.in_norm.weight"),
    (r"^lm_head\.transformer\.(\d+)\.in_ln\.weight$", r"head.blocks.\1.norm.weight"),
    (r"^lm_head\.transformer\.(\d+)\.mlp\.(w12|w3)\.(weight|bias)$", r"head.blocks.\1.mlp.\2.\3"),
    (r"^lm_head\.transformer\.(\d+)\.adaLN_modulation\.1\.(weight|bias)$", r"head.blocks.\1.ada.\2"),
    (r"^lm_head\.output_embed\.(weight|bias)$", r"head.out.\1"),
    (r"^lm_head\.t_embedder\.W$", "head.t_embed.freqs"),
    (r"^lm_head\.t_embedder\.mlp\.(0|2)\.(weight|bias)$", r"head.t_embed.mlp.\1.\2"),
    (r"^lm_head\.adaln_before_head\.norm_final\.weight$", "head.final.norm.weight"),
    (r"^lm_head\.adaln_before_head\.adaLN_modulation\.1\.(weight|bias)$", r"head.final.ada.\1"),
]
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
    for pattern, repl in _RULES:
        if re.match(pattern, key):
            return re.sub(pattern, repl, key)
    raise KeyError(key)


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


# (our pattern, release replacement), first match wins. The backbone and MBM-head rows are the inverse of
# bar.model.release_keys._RULES (tests/test_optim.py round-trips every BAR-B parameter through bar.model.release_keys.map_official_key).
_TO_RELEASE: list[tuple[str, str]] = [
    (r"^target_pos_embed$", "target_aware_pos_embed"),
    (r"^ada_pos_embed$", "timesteps_embeddings"),
    (r"^class_embed\.weight$", "embeddings.weight"),
    (r"^token_embed\.embed\.weight$", "input_embeddings.weight"),
    (r"^token_embed\.proj\.(weight|bias)$", r"input_merge.\1"),
    (r"^cond_proj\.(weight|bias)$", r"latent_condition_proj.\1"),
    (r"^blocks\.(\d+)\.ada\.(weight|bias)$", r"blocks.\1.adaLN_modulation.1.\2"),
    # MBM head (and, by role, the other heads)
    (r"^head\.bit_embed\.weight$", "lm_head.input_embed.weight"),
    (r"^head\.(bit_proj|in_proj)\.(weight|bias)$", r"lm_head.input_proj.\2"),
    (r"^head\.in_norm\.weight$", "lm_head.ln_pre.weight"),
    (r"^head\.blocks\.(\d+)\.norm\.(weight|bias)$", r"lm_head.transformer.\1.in_ln.\2"),
    (r"^head\.blocks\.(\d+)\.ada\.(weight|bias)$", r"lm_head.transformer.\1.adaLN_modulation.1.\2"),
    (r"^head\.blocks\.(\d+)\.mlp\.(.+)$", r"lm_head.transformer.\1.mlp.\2"),
    (r"^head\.out\.(weight|bias)$", r"lm_head.output_embed.\1"),
    (r"^head\.t_embed\.mlp\.(\d+)\.(weight|bias)$", r"lm_head.t_embedder.mlp.\1.\2"),
    (r"^head\.t_mlp\.(\d+)\.(weight|bias)$", r"lm_head.t_embedder.mlp.\1.\2"),
    (r"^head\.final\.norm\.weight$", "lm_head.adaln_before_head.norm_final.weight"),
    (r"^head\.(final\.ada|final_ada)\.(weight|bias)$", r"lm_head.adaln_before_head.adaLN_modulation.1.\2"),
    (r"^head\.(.+)$", r"lm_head.\1"),
]
_ADA = re.compile(r"(^|\.)(ada|final_ada)\.")        # any other AdaLN modulation Linear of ours


def release_name(name: str) -> str:
    """The release's name for our parameter `name` (unchanged where the names agree or the release has none)."""
    for pattern, repl in _TO_RELEASE:
        if re.match(pattern, name):
            name = re.sub(pattern, repl, name)
            break
    return _ADA.sub(r"\1adaLN_modulation.1.", name)


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
        elif name == "head.t_embed.freqs":
            key = "lm_head.t_embedder.W"
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
