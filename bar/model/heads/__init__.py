"""Token heads: turn the backbone's per-position condition z into a token, with a loss for training and one sampler
for generation (`TokenHead`, base.py): mbm (BAR's masked bit modeling, mbm.py), softmax and bitwise (the discrete
baselines, discrete.py), diffusion (MAR's continuous baseline, diffusion.py). `HEADS` maps each name to its class and
its options dataclass, the one place of each option's default; `build_head(name, token_dim, **options)` builds one."""

from __future__ import annotations

from dataclasses import fields

from bar import UserError
from bar.model.heads.base import TokenHead, guide
from bar.model.heads.diffusion import SAMPLERS, DiffusionConfig, DiffusionHead
from bar.model.heads.discrete import BitwiseConfig, BitwiseHead, LinearHead, SoftmaxConfig, SoftmaxHead
from bar.model.heads.mbm import MASK, MBMConfig, MBMHead, even_allocation

HEADS: dict[str, tuple[type[TokenHead], type]] = {
    "mbm": (MBMHead, MBMConfig),
    "softmax": (SoftmaxHead, SoftmaxConfig),
    "bitwise": (BitwiseHead, BitwiseConfig),
    "diffusion": (DiffusionHead, DiffusionConfig),
}


def build_head(name: str, token_dim: int, **config) -> TokenHead:
    """Build head `name` for tokens of `token_dim` (bits per AR step, or channels); `config` overrides its defaults."""
    if name not in HEADS:
        raise UserError(f"unknown head {name!r}; choose one of {sorted(HEADS)}")
    cls, cfg_cls = HEADS[name]
    known = {f.name for f in fields(cfg_cls)}
    unknown = sorted(set(config) - known)
    if unknown:
        raise UserError(f"head {name!r} has no option(s) {unknown}; it takes {sorted(known)}")
    return cls(token_dim, cfg_cls(**config))


__all__ = ["HEADS", "MASK", "SAMPLERS", "BitwiseConfig", "BitwiseHead", "DiffusionConfig", "DiffusionHead",
           "LinearHead", "MBMConfig", "MBMHead", "SoftmaxConfig", "SoftmaxHead", "TokenHead", "build_head",
           "even_allocation", "guide"]
