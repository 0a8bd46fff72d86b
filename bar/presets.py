"""Size presets of the BAR generator (as DiT's `DiT_models`), with the release's training and sampling settings.

    PRESETS[name] -> Preset          bar_b, bar_b2, bar_b4, bar_l, bar_l_512 (release sizes) + tiny, smoke (CPU)
    build_generator(preset, bits_per_token=None, grid=None, patch_size=None, head="mbm", num_classes=None,
                    **overrides) -> BARGenerator
    allocation_for(preset, bits_per_step) -> list[int]

`bits_per_token`, `grid`, `patch_size`, `num_classes` default to the preset's own. `overrides` may set any
GeneratorConfig field (e.g. dropout, class_repeat) or, prefixed `head_`, any head option (e.g. head_width=512,
head_depth=3). Values marked (release) were read from the official configs/README.

`head` is any name in bar.heads.HEADS (mbm, softmax, bitwise, diffusion). The head decides the token kind: with
head="diffusion" the backbone takes continuous tokens and `bits_per_token` means channels per token; a contradicting
token_kind override is a UserError. The preset's head_width sizes every head (it is also the condition width);
head_depth sizes heads that have a depth (mbm, diffusion; the linear softmax / bitwise heads have none).
MAR's diffusion-head sizes are in `MAR_HEADS` / `mar_head(name)`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

from bar import UserError
from bar.generator import BARGenerator, GeneratorConfig
from bar.heads import HEADS, build_head


@dataclass(frozen=True)
class Preset:
    # model
    dim: int
    depth: int
    heads: int
    dropout: float = 0.0
    attn_dropout: float = 0.0
    patch_size: int = 1
    class_repeat: int = 32
    head_width: int = 2048
    head_depth: int = 3
    # the tokenizer the preset was made for
    bits_per_token: int = 16
    grid: tuple[int, int] = (16, 16)
    num_classes: int = 1000
    # training
    lr: float = 4e-4
    betas: tuple[float, float] = (0.9, 0.96)
    weight_decay: float = 0.03
    warmup_steps: int = 62_500
    train_steps: int = 250_000
    end_lr: float = 1e-5
    grad_clip: float = 1.0
    batch_size: int = 2048
    order_anneal: tuple[int, int] = (125_000, 187_500)
    label_dropout: float = 0.1
    # sampling
    cfg_scale: float = 5.0
    temperature: float = 1.0
    allocation: tuple[int, ...] = (4, 4, 4, 4)
    params_reported: str | None = None

    @property
    def bits_per_step(self) -> int:
        return self.bits_per_token * self.patch_size ** 2


_B = dict(dim=768, depth=24, heads=12)
# The release's BAR-L config sets attn_drop 0.2, but its attention never applies it: 0.0 reproduces its behaviour.
_L = dict(dim=1280, depth=32, heads=16, dropout=0.2, attn_dropout=0.0)

PRESETS: dict[str, Preset] = {
    "bar_b": Preset(**_B, cfg_scale=5.0, temperature=2.5, allocation=(2, 2, 5, 7), params_reported="415M"),
    "bar_b2": Preset(**_B, patch_size=2, cfg_scale=5.5, temperature=2.0, allocation=(16, 16, 16, 16),
                     params_reported="415M"),
    "bar_b4": Preset(**_B, patch_size=4, cfg_scale=9.6, temperature=1.4, allocation=(64, 64, 64, 64),
                     params_reported="416M"),
    "bar_l": Preset(**_L, cfg_scale=5.3, temperature=3.0, allocation=(2, 2, 5, 7), params_reported="1.1B"),
    # batch_size 2048 for bar_l_512 is assumed (the release gives a per-GPU batch of 32, not the GPU count)
    "bar_l_512": Preset(**_L, bits_per_token=10, grid=(32, 32), warmup_steps=31_250, train_steps=125_000,
                        order_anneal=(62_500, 93_750), cfg_scale=4.2, temperature=2.8, allocation=(2, 2, 2, 4),
                        params_reported="1.1B"),
    # CPU presets (this project's, not the release's): a 4x4 grid of tokens, a minute or two on 2 cores.
    "tiny": Preset(dim=128, depth=2, heads=4, head_width=256, head_depth=2, class_repeat=8, bits_per_token=16,
                   grid=(4, 4), num_classes=10, lr=1e-3, betas=(0.9, 0.96), weight_decay=0.03, warmup_steps=40,
                   train_steps=400, end_lr=1e-5, batch_size=32, order_anneal=(200, 300), cfg_scale=3.0,
                   temperature=1.0, allocation=(4, 4, 4, 4)),
    "smoke": Preset(dim=32, depth=1, heads=2, head_width=32, head_depth=1, class_repeat=2, bits_per_token=8,
                    grid=(4, 4), num_classes=4, lr=1e-3, warmup_steps=2, train_steps=10, end_lr=1e-4,
                    batch_size=8, order_anneal=(5, 8), cfg_scale=2.0, temperature=1.0, allocation=(4, 4)),
}


# MAR's diffusion-head sizes (paper baselines: MAR-B / -L / -H), for the continuous-token comparison at paper scale:
# build_generator("bar_b", head="diffusion", **mar_head("mar_b")).
MAR_HEADS: dict[str, dict[str, int]] = {
    "mar_b": dict(depth=6, width=1024),
    "mar_l": dict(depth=8, width=1280),
    "mar_h": dict(depth=12, width=1536),
}


def mar_head(name: str) -> dict[str, int]:
    """build_generator overrides (head_width, head_depth) for one of MAR's diffusion-head sizes."""
    if name not in MAR_HEADS:
        raise UserError(f"unknown MAR head size {name!r}; choose one of {sorted(MAR_HEADS)}")
    return {f"head_{key}": value for key, value in MAR_HEADS[name].items()}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise UserError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]


def allocation_for(preset: str | Preset, bits_per_step: int) -> list[int]:
    """The preset's unmasking allocation if it fits `bits_per_step`; otherwise the same shape scaled to sum to
    bits_per_step (floors, remainder added to the last steps, kept non-decreasing and positive)."""
    pre = get_preset(preset) if isinstance(preset, str) else preset
    alloc = list(pre.allocation)
    total = sum(alloc)
    if total == bits_per_step:
        return alloc
    steps = min(len(alloc), bits_per_step)
    alloc = alloc[len(alloc) - steps:]
    total = sum(alloc)
    out = [max(1, math.floor(a * bits_per_step / total)) for a in alloc]
    while sum(out) > bits_per_step:          # can only happen through the max(1, .) floor
        i = max(range(steps), key=lambda j: (out[j], j))
        out[i] -= 1
    i = steps - 1
    while sum(out) < bits_per_step:
        out[i] += 1
        i = i - 1 if i > 0 else steps - 1
    return sorted(out)


def build_generator(preset: str, bits_per_token: int | None = None, grid: tuple[int, int] | None = None,
                    patch_size: int | None = None, head: str = "mbm", num_classes: int | None = None,
                    **overrides) -> BARGenerator:
    pre = get_preset(preset)
    k = pre.bits_per_token if bits_per_token is None else int(bits_per_token)
    p = pre.patch_size if patch_size is None else int(patch_size)
    cfg = GeneratorConfig(
        dim=pre.dim, depth=pre.depth, heads=pre.heads, dropout=pre.dropout, attn_dropout=pre.attn_dropout,
        num_classes=pre.num_classes if num_classes is None else int(num_classes), class_repeat=pre.class_repeat,
        grid=tuple(pre.grid if grid is None else grid), patch_size=p, token_dim=k, cond_width=pre.head_width,
        label_dropout=pre.label_dropout, order_anneal=tuple(pre.order_anneal),
    )
    head_opts = {"width": pre.head_width, "depth": pre.head_depth}
    explicit_head = set()
    gen_fields = {f.name for f in fields(GeneratorConfig)}
    for key, value in overrides.items():
        if key.startswith("head_"):
            head_opts[key[len("head_"):]] = value
            explicit_head.add(key[len("head_"):])
        elif key in gen_fields:
            cfg = replace(cfg, **{key: value})
        else:
            raise UserError(f"unknown generator option {key!r}; use a GeneratorConfig field or head_<option>")
    if head not in HEADS:
        raise UserError(f"unknown head {head!r}; choose one of {sorted(HEADS)}")
    head_cls, head_cfg_cls = HEADS[head]
    if "depth" not in {f.name for f in fields(head_cfg_cls)} and "depth" not in explicit_head:
        head_opts.pop("depth")           # the preset's depth sizes heads that have one (linear heads have none)
    # the head decides what a token is; a contradicting token_kind (e.g. an AE tokenizer with a bit head) is an error
    fitting = sorted(n for n, (c, _) in HEADS.items() if c.token_kind == cfg.token_kind)
    if "token_kind" in overrides and fitting and cfg.token_kind != head_cls.token_kind:
        raise UserError(f"head {head!r} predicts {head_cls.token_kind} tokens but the tokens are "
                        f"{cfg.token_kind}; use one of the heads {fitting}")
    if fitting:
        cfg = replace(cfg, token_kind=head_cls.token_kind)
    cfg = replace(cfg, cond_width=head_opts["width"])
    cfg.validate()
    h = build_head(head, cfg.step_dim, **head_opts)
    if p > 1:
        unit = "bits_per_token" if head_cls.token_kind == "bits" else "channels"
        what = "bits" if head_cls.token_kind == "bits" else "channels"
        h.token_dim_name = f"{what} per AR step ({cfg.token_dim} {unit} x {p}x{p} tokens)"
    return BARGenerator(cfg, h)


def count_params(model) -> int:
    return sum(p.numel() for p in model.parameters())
